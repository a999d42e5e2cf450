"""memwatchctl against hostile input and hostile output channels (issue 14, CLI).

Each case runs the installed `memwatchctl` as a subprocess (real argv, real pipes, a real FIFO), so what is
asserted is what a user sees: one line `Error: ...`, the exit status, no traceback, no hang.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest

from memwatchd.config import StorageConfig
from memwatchd.models import AlertRecord
from memwatchd.store.writer import StoreWriter
from tests.helpers import BIN
from tests.receivers import WebhookReceiver
from tests.test_cli import T0, make_db

CTL = str(BIN / "memwatchctl")
ENV = {**os.environ, "TZ": "UTC", "MEMWATCHCTL_NOW": str(T0 + 40)}


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CLI test database plus one alert whose values are wider than any terminal."""
    path = make_db(tmp_path_factory.mktemp("inputs"))
    long = AlertRecord(
        rule="a-rule-with-a-rather-long-name-for-testing",
        kind="threshold",
        pid=3_999_999,
        start_ticks=1,
        comm="averyveryverylon",
        unit="some-very-long-systemd-unit-name-that-goes-on-and-on@instance-with-parameters.service",
        state="firing",
        since=T0 + 3,
        fired_at=T0 + 9,
        value=15e9,
        rate=None,
        summary="S" * 150 + " END-OF-SUMMARY",
    )

    async def go() -> None:
        w = await StoreWriter.open(str(path), StorageConfig())
        await w.save_alerts([long])
        await w.close()

    asyncio.run(go())
    return path


def ctl(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CTL, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or ENV,
        stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode != 0, r
    assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    for n in needles:
        assert n in r.stderr, (n, r.stderr)


# ---- hostile values --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["processes", "--since", "0001-01-01"], "--since"),
        (["processes", "--since", "0001-01-01T00:00+00:00"], "--since"),
        (["processes", "--since", "9999-12-31T23:59"], "--since"),
        (["processes", "--since", "@nan"], "--since"),
        (["processes", "--since", "@inf"], "--since"),
        (["processes", "--since", "@-1e300"], "--since"),
        (["processes", "--since", "999999999999w"], "--since"),
        (["history", "--comm", "x", "--until", "@1e400"], "--until"),
        (["alerts", "--since", "0001-01-01"], "--since"),
        (["processes", "--pid", "99999999999999999999999"], "--pid"),
        (["history", "--pid", "99999999999999999999999"], "--pid"),
        (["plot", "--pid", "-99999999999999999999999"], "--pid"),
        (["top", "--once", "--window", "99999999999999999999w"], "--window"),
        (["top", "--once", "--refresh", "99999999999999999999w"], "--refresh"),
        (["notify-test", "--url", "json://127.0.0.1:9/", "--timeout", "nan"], "--timeout"),
        (["notify-test", "--url", "json://127.0.0.1:9/", "--timeout", "inf"], "--timeout"),
        (["notify-test", "--url", "json://127.0.0.1:9/", "--timeout", "1e9"], "--timeout"),
        (["notify-test", "--url", "json://127.0.0.1:9/", "--timeout", "-1"], "--timeout"),
    ],
)
def test_hostile_values_are_one_line_errors(db: Path, args: list[str], needle: str) -> None:
    t0 = time.monotonic()
    r = ctl("--db", str(db), *args)
    assert time.monotonic() - t0 < 10
    assert_one_line_error(r, needle)


def test_usage_errors_are_one_line_too(db: Path) -> None:
    r = ctl("--db", str(db), "history", "--pid", "1", "--since", "yesterday")
    assert r.returncode == 2
    assert r.stderr == (
        "Error: Invalid value for '--since': expected a duration like '2h' or an ISO time like"
        " '2024-05-01T13:00', got 'yesterday' (see: memwatchctl history --help)\n"
    )


def test_a_fifo_as_database_is_refused_before_it_is_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "db.fifo"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    r = ctl("--db", str(fifo), "status", timeout=10)
    assert time.monotonic() - t0 < 5
    assert r.returncode == 1 and r.stderr == f"Error: database {fifo}: not a regular file (a FIFO)\n"
    cfg = tmp_path / "m.toml"
    cfg.write_text(f'[storage]\npath = "{fifo}"\n')
    r = ctl("--config", str(cfg), "top", "--once", timeout=10)
    assert r.returncode == 1 and r.stderr == f"Error: database {fifo}: not a regular file (a FIFO)\n"
    r = ctl("--db", "/dev/zero", "status", timeout=10)
    assert (
        r.returncode == 1
        and r.stderr == "Error: database /dev/zero: not a regular file (a character device)\n"
    )


def test_a_file_that_is_not_sqlite_is_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(8192))
    for cmd in (["status"], ["top", "--once"], ["alerts"], ["processes"]):
        assert_one_line_error(ctl("--db", str(junk), *cmd), str(junk))


# ---- notify-test --config ---------------------------------------------------------------------------------


def test_notify_test_uses_the_config_given_to_memwatchctl(tmp_path: Path) -> None:
    with WebhookReceiver() as hook:
        cfg = tmp_path / "m.toml"
        cfg.write_text(f'[notify]\nurls = ["{hook.url()}"]\n')
        r = ctl("--config", str(cfg), "notify-test", "--timeout", "5")
        assert r.returncode == 0, r.stderr
        assert r.stdout == "ok      json://127.0.0.1:{}/***\n".format(
            hook.url().rsplit(":", 1)[1].split("/")[0]
        )
        assert len(hook.wait_for(1)) == 1
        # the subcommand's own --config still wins when both are given
        other = tmp_path / "other.toml"
        other.write_text("")
        r = ctl("--config", str(cfg), "notify-test", "--config", str(other))
        assert r.returncode == 1 and "no notification URLs configured" in r.stderr


# ---- closed pipes ---------------------------------------------------------------------------------------

PIPE_COMMANDS = [
    ["top", "--once"],
    ["top", "--json"],
    ["history", "--pid", "11", "--since", "@1700000000"],
    ["history", "--pid", "11", "--since", "@1700000000", "--csv"],
    ["history", "--pid", "11", "--since", "@1700000000", "--json"],
    ["processes", "--since", "@1700000000"],
    ["processes", "--since", "@1700000000", "--json"],
    ["plot", "--pid", "11", "--since", "@1700000000"],
    ["status"],
    ["status", "--json"],
    ["alerts"],
    ["alerts", "--json"],
    ["groups"],
    ["groups", "--json"],
    ["completion", "bash"],
    ["--help"],
    ["top", "--help"],
    ["--version"],
]


@pytest.mark.parametrize("args", PIPE_COMMANDS, ids=" ".join)
def test_writing_to_a_closed_pipe_exits_quietly_with_status_0(db: Path, args: list[str]) -> None:
    r_fd, w_fd = os.pipe()
    os.close(r_fd)  # like `| head -1` once head has exited: every write gets EPIPE
    try:
        p = subprocess.run(
            [CTL, "--db", str(db), *args],
            stdout=w_fd,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=ENV,
            timeout=30,
            check=False,
        )
    finally:
        os.close(w_fd)
    assert (p.returncode, p.stderr.decode()) == (0, "")


def test_notify_test_to_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    with WebhookReceiver() as hook:
        r_fd, w_fd = os.pipe()
        os.close(r_fd)
        try:
            p = subprocess.run(
                [CTL, "notify-test", "--url", hook.url(), "--timeout", "5"],
                stdout=w_fd,
                stderr=subprocess.PIPE,
                env=ENV,
                timeout=60,
                check=False,
            )
        finally:
            os.close(w_fd)
        assert (p.returncode, p.stderr.decode()) == (0, "")


def test_head_1_on_a_real_shell_pipeline(db: Path) -> None:
    """The same through `| head -1` with a table longer than a pipe buffer."""
    for cmd in ("top --once --limit 0", "history --pid 11 --since @1700000000 --csv", "alerts"):
        r = subprocess.run(
            ["bash", "-o", "pipefail", "-c", f"{CTL} --db {db} {cmd} | head -1"],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=30,
            check=False,
        )
        assert r.returncode == 0 and r.stderr == "" and r.stdout.count("\n") == 1, (cmd, r)


# ---- tables in pipes and files are not truncated -----------------------------------------------------------


def test_tables_written_to_a_pipe_are_not_truncated(db: Path, tmp_path: Path) -> None:
    env = {**ENV, "COLUMNS": "80"}  # even a narrow COLUMNS does not cut values when output is not a terminal
    r = ctl("--db", str(db), "alerts", env=env)
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout
    row = next(ln for ln in r.stdout.splitlines() if "a-rule-with" in ln)
    for value in (
        "3999999",
        "a-rule-with-a-rather-long-name-for-testing",
        "averyveryverylon",
        "S" * 150 + " END-OF-SUMMARY",
    ):
        assert value in row, (value, row)
    out = tmp_path / "alerts.txt"
    with open(out, "w") as f:
        subprocess.run([CTL, "--db", str(db), "alerts"], stdout=f, env=env, timeout=30, check=True)
    assert out.read_text() == r.stdout
