"""systemd integration: the unit (verify, security exposure), install/uninstall on a staging root, and
journald-style logging."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "memwatchd.service"
PREFIX = "/opt/memwatchd"
MAX_EXPOSURE = 2.0

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (apt-get install systemd)"
)


def run(
    *cmd: str | Path, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=240)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{cmd} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def unit_settings(text: str) -> dict[str, list[str]]:
    """Directive -> values in order (comments and sections dropped)."""
    out: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def install_config(tmp: Path) -> Path:
    """The shipped config, or a minimal stand-in while the repository has none."""
    shipped = REPO / "etc" / "memwatchd.toml"
    if shipped.exists():
        return shipped
    cfg = tmp / "placeholder.toml"
    cfg.write_text('[storage]\npath = "/var/lib/memwatchd/memwatchd.db"\n')
    return cfg


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # a root that does not exist yet: install creates it, as DESTDIR and `pip --root` do (issue 14)
    root = tmp_path_factory.mktemp("root") / "stage" / "image"
    run(REPO / "scripts" / "install", "--root", root, "--config", install_config(root.parent.parent))
    return root


def verify(unit_file: Path) -> subprocess.CompletedProcess[str]:
    return run("systemd-analyze", "verify", unit_file, check=False)


# --- The unit --------------------------------------------------------------------------------------------


def test_unit_settings() -> None:
    s = unit_settings(UNIT.read_text())
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["WatchdogSec"] == ["30s"]
    assert s["Restart"] == ["on-failure"]
    assert "StartLimitIntervalSec" in s and "StartLimitBurst" in s
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["ExecStart"] == [f"{PREFIX}/bin/memwatchd --config /etc/memwatchd/memwatchd.toml"]
    assert s["StateDirectory"] == ["memwatchd"] and s["StateDirectoryMode"] == ["0750"]
    assert s["Group"] == ["memwatch"]
    caps = {"CAP_BPF", "CAP_PERFMON", "CAP_DAC_READ_SEARCH"}
    assert set(s["CapabilityBoundingSet"][0].split()) == caps
    assert set(s["AmbientCapabilities"][0].split()) == caps
    allow = s["SystemCallFilter"][0].split()
    assert {"@system-service", "bpf", "perf_event_open"} <= set(allow)
    for key in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables"):
        assert s[key] == ["yes"], key
    assert s["MemoryDenyWriteExecute"] == ["yes"]
    assert s["ProtectSystem"] == ["strict"]
    assert "MemoryMax" in s and "CPUQuota" in s


@needs_analyze
def test_unit_verifies(staged: Path, tmp_path: Path) -> None:
    """systemd-analyze verify on the installed unit; it checks that ExecStart= exists, so the copy under test
    points at the staged executable instead of the final path."""
    installed = (staged / "etc/systemd/system/memwatchd.service").read_text()
    exe = staged / PREFIX.lstrip("/") / "bin" / "memwatchd"
    assert exe.exists()
    probe = tmp_path / "memwatchd.service"
    probe.write_text(installed.replace(f"ExecStart={PREFIX}/bin/memwatchd", f"ExecStart={exe}"))
    proc = verify(probe)
    assert proc.returncode == 0, proc.stderr
    # Unknown or malformed directives are only warnings: there must be none.
    assert str(probe) not in proc.stderr, proc.stderr
    assert "memwatchd.service" not in proc.stderr, proc.stderr


@needs_analyze
def test_verify_rejects_missing_executable() -> None:
    """The check above means something: verify fails when ExecStart= names nothing (the repo unit, here)."""
    if Path(PREFIX, "bin", "memwatchd").exists():
        pytest.skip(f"{PREFIX} is really installed on this host")
    proc = verify(UNIT)
    assert proc.returncode != 0
    assert "not executable" in proc.stderr


@needs_analyze
def test_security_exposure() -> None:
    proc = run("systemd-analyze", "security", "--offline=yes", UNIT)
    m = re.search(r"Overall exposure level for memwatchd\.service: (\d+\.\d+)", proc.stdout)
    assert m, proc.stdout[-2000:]
    assert float(m.group(1)) <= MAX_EXPOSURE, proc.stdout


@needs_analyze
def test_security_checks_that_must_pass() -> None:
    proc = run("systemd-analyze", "security", "--offline=yes", "--json=short", UNIT)
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    must = [
        "NoNewPrivileges=",
        "User=/DynamicUser=",
        "ProtectSystem=",
        "ProtectHome=",
        "PrivateTmp=",
        "PrivateDevices=",
        "ProtectKernelTunables=",
        "ProtectControlGroups=",
        "MemoryDenyWriteExecute=",
        "RestrictAddressFamilies=~AF_NETLINK",
        "RestrictAddressFamilies=~AF_PACKET",
        "CapabilityBoundingSet=~CAP_SYS_ADMIN",
        "CapabilityBoundingSet=~CAP_SYS_MODULE",
        "CapabilityBoundingSet=~CAP_SYS_PTRACE",
        "SystemCallArchitectures=",
        "UMask=",
    ]
    failing = [n for n in must if not checks[n]["set"] and checks[n]["exposure"]]
    assert not failing, failing


# --- install / uninstall ---------------------------------------------------------------------------------


def test_install_creates_a_missing_root(tmp_path: Path) -> None:
    """--root DIR that does not exist is created (the staged fixture also installs into a fresh one);
    a --root that exists and is not a directory is still refused."""
    root = tmp_path / "a" / "b"
    r = run(REPO / "scripts" / "install", "--root", root, "--config", tmp_path / "none.toml", check=False)
    assert root.is_dir() and "is not a directory" not in r.stderr, r.stderr
    afile = tmp_path / "file"
    afile.write_text("")
    r = run(REPO / "scripts" / "install", "--root", afile, "--config", tmp_path / "none.toml", check=False)
    assert r.returncode == 1 and r.stderr == f"install: error: --root {afile} is not a directory\n"


def test_install_tree(staged: Path) -> None:
    venv = staged / PREFIX.lstrip("/")
    for rel in (
        "etc/systemd/system/memwatchd.service",
        "etc/memwatchd/memwatchd.toml",
        "usr/lib/sysusers.d/memwatchd.conf",
        "usr/lib/tmpfiles.d/memwatchd.conf",
    ):
        assert (staged / rel).is_file(), rel
    assert (venv / "pyvenv.cfg").is_file()
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    for exe in ("memwatchd", "memwatchctl"):
        assert os.access(venv / "bin" / exe, os.X_OK), exe
    # Modes: the unit is public, the config only for root and the memwatch group.
    assert (staged / "etc/systemd/system/memwatchd.service").stat().st_mode & 0o777 == 0o644
    assert (staged / "etc/memwatchd/memwatchd.toml").stat().st_mode & 0o777 == 0o640
    link = staged / "usr/local/bin/memwatchctl"
    assert link.is_symlink() and os.readlink(link) == f"{PREFIX}/bin/memwatchctl"


def test_installed_files_name_final_paths(staged: Path) -> None:
    unit = (staged / "etc/systemd/system/memwatchd.service").read_text()
    exec_start = f"{PREFIX}/bin/memwatchd --config /etc/memwatchd/memwatchd.toml"
    assert unit_settings(unit)["ExecStart"] == [exec_start]
    assert str(staged) not in unit
    venv = staged / PREFIX.lstrip("/")
    for exe in ("memwatchd", "memwatchctl"):
        assert (venv / "bin" / exe).read_text().splitlines()[0] == f"#!{PREFIX}/bin/python"
    assert str(staged) not in (venv / "pyvenv.cfg").read_text()


def test_staged_virtualenv_imports(staged: Path) -> None:
    py = staged / PREFIX.lstrip("/") / "bin" / "python"
    proc = run(
        py,
        "-c",
        "import sys, memwatchd.daemon.service, memwatchd.daemon.logsetup, sdnotify; print(sys.prefix)",
    )
    assert proc.stdout.strip() == str(staged / PREFIX.lstrip("/"))


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers not installed")
def test_sysusers_and_tmpfiles_apply(staged: Path, tmp_path: Path) -> None:
    """The staged sysusers.d and tmpfiles.d files do what the target's first boot will do with them."""
    target = tmp_path / "target"
    (target / "etc").mkdir(parents=True)
    for f in ("passwd", "group", "shadow", "gshadow"):
        (target / "etc" / f).write_text("root:x:0:0:root:/root:/bin/sh\n" if f == "passwd" else "root:x:0:\n")
    shutil.copytree(staged / "usr", target / "usr", symlinks=True)
    shutil.copytree(staged / "etc/memwatchd", target / "etc/memwatchd")
    run("systemd-sysusers", f"--root={target}", "memwatchd.conf")
    passwd = (target / "etc/passwd").read_text()
    group = (target / "etc/group").read_text()
    gid = re.search(r"^memwatch:x:(\d+):", group, re.M)
    assert gid, group
    user = re.search(r"^memwatchd:x:\d+:(\d+):[^:]*:/var/lib/memwatchd:/usr/sbin/nologin$", passwd, re.M)
    assert user and user.group(1) == gid.group(1), passwd
    run("systemd-tmpfiles", f"--root={target}", "--create", "memwatchd.conf")
    st = (target / "etc/memwatchd/memwatchd.toml").stat()
    assert st.st_gid == int(gid.group(1)) and st.st_mode & 0o777 == 0o640


def test_install_again_keeps_config_then_uninstall(staged: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(staged, root, symlinks=True)  # a second fresh install would only cost time
    install = REPO / "scripts" / "install"
    uninstall = REPO / "scripts" / "uninstall"
    cfg_src = install_config(tmp_path)
    cfg = root / "etc/memwatchd/memwatchd.toml"
    cfg.write_text(cfg.read_text() + "\n# edited by the operator\n")
    state = root / "var/lib/memwatchd"
    state.mkdir(parents=True)
    (state / "memwatchd.db").write_bytes(b"x")
    again = run(install, "--root", root, "--config", cfg_src)
    assert "keeping existing configuration" in again.stdout
    assert cfg.read_text().endswith("# edited by the operator\n")

    out = run(uninstall, "--root", root).stdout
    for gone in ("etc/systemd/system/memwatchd.service", "usr/local/bin/memwatchctl", PREFIX.lstrip("/")):
        assert not (root / gone).exists() and not (root / gone).is_symlink(), gone
    assert cfg.exists() and (state / "memwatchd.db").exists(), "config and database are kept without --purge"
    assert "kept" in out
    # Idempotent: a second run finds nothing and still succeeds.
    assert "not present" in run(uninstall, "--root", root).stdout

    run(uninstall, "--root", root, "--purge")
    assert not (root / "etc/memwatchd").exists()
    assert not state.exists()
    assert not (root / "usr/lib/sysusers.d/memwatchd.conf").exists()


def test_uninstall_refuses_foreign_prefix(tmp_path: Path) -> None:
    (tmp_path / "opt/other/bin").mkdir(parents=True)
    proc = run(REPO / "scripts" / "uninstall", "--root", tmp_path, "--prefix", "/opt/other", check=False)
    assert proc.returncode != 0
    assert "not a memwatchd virtualenv" in proc.stderr
    assert (tmp_path / "opt/other/bin").is_dir()


@pytest.mark.parametrize("script", ["install", "uninstall"])
def test_scripts_help_and_bad_arguments(script: str, tmp_path: Path) -> None:
    path = REPO / "scripts" / script
    helped = run(path, "--help")
    assert helped.stdout.startswith(f"Usage: scripts/{script} [--root DIR]")
    bad = run(path, "--bogus", check=False)
    assert bad.returncode != 0
    assert "unknown argument: --bogus" in bad.stderr
    afile = tmp_path / "a-file"  # (install creates a missing --root, so a file is what it refuses)
    afile.write_text("")
    rel = run(path, "--root", afile, check=False)
    assert rel.returncode != 0 and "not a directory" in rel.stderr
    if script == "uninstall":  # nothing to uninstall in a tree that does not exist
        missing = run(path, "--root", tmp_path / "missing", check=False)
        assert missing.returncode != 0 and "not a directory" in missing.stderr


def test_install_rejects_relative_or_shared_prefix(tmp_path: Path) -> None:
    for prefix, msg in (("opt/memwatchd", "absolute"), ("/usr", "directory of its own")):
        proc = run(REPO / "scripts" / "install", "--root", tmp_path, "--prefix", prefix, check=False)
        assert proc.returncode != 0 and msg in proc.stderr, proc.stderr
    assert not any(tmp_path.iterdir())


# --- logging for journald -------------------------------------------------------------------------------

LOG_SNIPPET = r"""
import logging, os, sys
if os.environ.get("AS_JOURNAL"):
    st = os.fstat(2)
    os.environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
from memwatchd.daemon.logsetup import setup_logging
setup_logging(sys.argv[1])
log = logging.getLogger("memwatchd.test")
log.debug("debug line")
log.info("info %s", "line")
log.warning("two\nlines")
log.error("sending to %s failed", "tgram://123456789:AAHsecretTOKEN/987654")
log.critical("mysql --password hunter2 and password=swordfish")
try:
    raise ValueError("token=abc123 in exception")
except ValueError:
    log.exception("boom")
"""


def log_lines(level: str, **env: str) -> list[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    proc = run(sys.executable, "-c", LOG_SNIPPET, level, env={**base, **env})
    return proc.stderr.splitlines()


def test_journal_format() -> None:
    lines = log_lines("debug", AS_JOURNAL="1")
    assert lines[:5] == [
        "<7>memwatchd.test: debug line",
        "<6>memwatchd.test: info line",
        "<4>memwatchd.test: two \u23ce lines",
        "<3>memwatchd.test: sending to tgram://*** failed",
        "<2>memwatchd.test: mysql --password *** and password=***",
    ]
    assert len(lines) == 6, "a traceback stays on one line"
    assert lines[5].startswith("<3>memwatchd.test: boom \u23ce Traceback")
    assert "abc123" not in lines[5] and "token=***" in lines[5]


def test_journal_stream_of_another_fd_is_not_the_journal() -> None:
    # A child whose stderr was redirected inherits JOURNAL_STREAM: it must not write <N> prefixes.
    lines = log_lines("info", JOURNAL_STREAM="1:1")
    assert not lines[0].startswith("<")


def test_invocation_id_means_systemd() -> None:
    assert log_lines("info", INVOCATION_ID="0123456789abcdef")[0] == "<6>memwatchd.test: info line"


def test_terminal_format_and_level() -> None:
    lines = log_lines("warning")
    assert len(lines) == 4  # debug and info filtered out
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WARNING memwatchd\.test: two \u23ce lines", lines[0])
    assert "AHsecretTOKEN" not in "\n".join(lines)


def test_setup_logging_twice_keeps_one_handler() -> None:
    code = (
        "import logging; from memwatchd.daemon.logsetup import setup_logging\n"
        "setup_logging('info'); setup_logging('debug')\n"
        "logging.getLogger('x').debug('once')"
    )
    base = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    err = run(sys.executable, "-c", code, env=base).stderr.splitlines()
    assert len(err) == 1 and err[0].endswith("x: once")


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("mailto://user:pw@mail.example.com?to=a", "mailto://mail.example.com/***"),
        ("discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js", "discord://***"),
        ("slack://TokenA/TokenB/TokenC/#chan", "slack://***"),
        ("https://hooks.slack.com/services/T0/B0/XX", "https://hooks.slack.com/***"),
        ("json://localhost:8080/path?token=abc", "json://localhost:8080/***"),
        ("https://example.com", "https://example.com"),
        ("PGPASSWORD=s3cr3t psql", "PGPASSWORD=*** psql"),
        ("api_key: abcd, next", "api_key: ***, next"),
        ("Authorization: Bearer abcdefghijkl", "Authorization: *** ***"),
        ("check passed: 5 processes", "check passed: 5 processes"),
    ],
)
def test_mask_secrets(text: str, masked: str) -> None:
    from memwatchd.daemon.logsetup import mask_secrets

    assert mask_secrets(text) == masked


def test_secret_filter_merges_arguments() -> None:
    import logging

    from memwatchd.daemon.logsetup import SecretFilter

    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "url %s and %d%%", ("tgram://1:AB/2", 5), None)
    assert SecretFilter().filter(rec)
    assert rec.getMessage() == "url tgram://*** and 5%"
