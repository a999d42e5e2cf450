"""[daemon] allocator: the daemon runs on jemalloc when it is installed (memory that comes back after process
churn, README "Memory at 10,000 processes and under churn"), on the system allocator when told or when
jemalloc is missing, and refuses to start when jemalloc is required and missing.

Real daemon, real exec, real libjemalloc2 (scripts/setup installs it); the pure choice is tested alone.
These failed before: there was no allocator choice (ImportError, unknown config key).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from memwatchd.config import ConfigError, load_config
from memwatchd.daemon import allocator
from tests.helpers import ctl_json, start_daemon, stop_daemon, wait_for, write_config

LIB = "libjemalloc.so.2"


def test_plan_auto_with_jemalloc_execs_with_it_and_remembers_the_variables() -> None:
    env = allocator.plan("auto", {"PATH": "/bin", "LD_PRELOAD": "libfoo.so"}, LIB)
    assert env is not None
    assert env["LD_PRELOAD"] == f"{LIB} libfoo.so"
    assert env["PYTHONMALLOC"] == "malloc"
    assert env["MALLOC_CONF"] == allocator.MALLOC_CONF
    assert env["PATH"] == "/bin"
    saved = json.loads(env[allocator.SAVED])
    assert saved == {"LD_PRELOAD": "libfoo.so", "PYTHONMALLOC": None, "MALLOC_CONF": None}


def test_plan_stays_when_told_when_missing_or_already_done() -> None:
    assert allocator.plan("system", {}, LIB) is None
    assert allocator.plan("auto", {}, None) is None
    assert allocator.plan("auto", {allocator.SAVED: "{}"}, LIB) is None  # the exec happened: never twice
    with pytest.raises(allocator.AllocatorError, match="libjemalloc2"):
        allocator.plan("jemalloc", {}, None)


def test_restore_puts_the_variables_back() -> None:
    env = allocator.plan("auto", {"PATH": "/bin", "MALLOC_CONF": "x"}, LIB)
    assert env is not None
    assert allocator.restore(env) is True
    assert env == {"PATH": "/bin", "MALLOC_CONF": "x"}
    assert allocator.restore(env) is False


def test_config_rejects_an_unknown_allocator(tmp_path: Path) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text('[daemon]\nallocator = "tcmalloc"\n')
    with pytest.raises(ConfigError, match="allocator"):
        load_config(str(cfg))


def _config(tmp_path: Path, choice: str | None) -> Path:
    cfg = write_config(tmp_path, bpf=False, interval=0.5)
    if choice is not None:
        cfg.write_text(cfg.read_text().replace("[daemon]\n", f'[daemon]\nallocator = "{choice}"\n', 1))
    return cfg


def _status(tmp_path: Path) -> dict[str, object]:
    st = ctl_json(tmp_path / "db" / "memwatchd.db", "status")
    assert isinstance(st, dict)
    return st


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.parametrize("choice", [None, "jemalloc"])
def test_daemon_runs_on_jemalloc(tmp_path: Path, choice: str | None) -> None:
    assert allocator.find_jemalloc(os.environ) is not None, "scripts/setup installs libjemalloc2"
    d = start_daemon(_config(tmp_path, choice))
    log = tmp_path / "daemon.log"
    try:
        wait_for(lambda: "memwatchd started" in log.read_text(), what="daemon start")
        assert "/libjemalloc" in _maps(d.pid)
        assert "allocator jemalloc" in log.read_text()
        assert wait_for(lambda: _status(tmp_path).get("allocator"), what="status") == "jemalloc"
    finally:
        assert stop_daemon(d) == 0
    assert "Traceback" not in log.read_text()


def test_daemon_on_the_system_allocator_when_told(tmp_path: Path) -> None:
    d = start_daemon(_config(tmp_path, "system"))
    log = tmp_path / "daemon.log"
    try:
        wait_for(lambda: "memwatchd started" in log.read_text(), what="daemon start")
        assert "/libjemalloc" not in _maps(d.pid)
        assert "allocator system" in log.read_text()
        assert wait_for(lambda: _status(tmp_path).get("allocator"), what="status") == "system"
    finally:
        assert stop_daemon(d) == 0


def test_auto_without_jemalloc_runs_on_the_system_allocator_and_says_so(tmp_path: Path) -> None:
    d = start_daemon(_config(tmp_path, None), env={"MEMWATCHD_JEMALLOC": str(tmp_path / "missing.so")})
    log = tmp_path / "daemon.log"
    try:
        wait_for(lambda: "memwatchd started" in log.read_text(), what="daemon start")
        assert "/libjemalloc" not in _maps(d.pid)
        assert "allocator system (libjemalloc2 not found)" in log.read_text()
    finally:
        assert stop_daemon(d) == 0


def test_required_jemalloc_missing_refuses_to_start_with_one_line(tmp_path: Path) -> None:
    d = start_daemon(_config(tmp_path, "jemalloc"), env={"MEMWATCHD_JEMALLOC": str(tmp_path / "missing.so")})
    try:
        assert d.wait(timeout=30) == 2
    finally:
        if d.poll() is None:
            stop_daemon(d)
    out = (tmp_path / "daemon.log").read_text()
    assert "Traceback" not in out
    assert out.strip().count("\n") == 0 and "libjemalloc2" in out, out
