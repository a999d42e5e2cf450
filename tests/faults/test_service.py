"""RELIABILITY.md 19-20: SIGTERM in the middle of writes; startup failures: clear, non-zero, STATUS=."""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.common import (
    Daemons,
    FakeChurn,
    config,
    integrity,
    log_text,
    short_tmpdir,
    snapshot_ids,
    status,
    stop,
)
from tests.helpers import BIN, bpf_possible, wait_for
from tests.test_sdnotify import NotifyReceiver

# ---- 19. SIGTERM during writes -------------------------------------------------------------------------


def _sigterm_rounds(tmp_path: Path, daemons: Daemons, rounds: int) -> list[float]:
    """2,000 fake processes whose sizes change every cycle: each snapshot write is a big transaction."""
    rng = random.Random(11)
    churn = FakeChurn(tmp_path / "proc", 2000)
    churn.run(0.2)
    db = tmp_path / "db" / "memwatchd.db"
    wal = Path(str(db) + "-wal")
    log = tmp_path / "daemon.log"
    cfg = config(tmp_path, interval=0.2, procfs_root=tmp_path / "proc")
    took = []
    try:
        for i in range(rounds):
            p = daemons.start(cfg, log, append=True)
            wait_for(
                lambda: status(db).get("pid") == p.pid and status(db).get("committed_snapshots", 0) >= 2,  # noqa: B023
                30,
                what="writes",
            )
            time.sleep(rng.uniform(0, 0.4))
            committed_before = len(snapshot_ids(db))
            rc, secs = stop(p, timeout=30)
            took.append(secs)
            assert rc == 0, f"round {i}: exit {rc}\n{log_text(log)[-1500:]}"
            assert secs < 5, f"round {i}: took {secs:.1f}s to stop"
            # closed cleanly: the WAL was checkpointed into the database and removed (or left empty)
            assert not wal.exists() or wal.stat().st_size == 0, (
                f"round {i}: WAL of {wal.stat().st_size} bytes left"
            )
            assert integrity(db) == "ok"
            assert len(snapshot_ids(db)) >= committed_before
    finally:
        churn.stop()
    text = log_text(log)
    assert text.count("stopped") == rounds and "Traceback" not in text
    assert "could not be written before exit" not in text
    return took


def test_sigterm_during_writes_exits_0_quickly_with_the_database_closed(
    tmp_path: Path, daemons: Daemons
) -> None:
    took = _sigterm_rounds(tmp_path, daemons, 5)
    print(f"SIGTERM to exit: max {max(took):.2f}s")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_sigterm_during_writes_long(tmp_path: Path, daemons: Daemons) -> None:
    took = _sigterm_rounds(tmp_path, daemons, 50)
    print(f"SIGTERM to exit over 50 rounds: max {max(took):.2f}s")


def _bpf_holders() -> set[str]:
    """PIDs holding a BPF program, map or link fd (what keeps probes attached)."""
    out = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue  # closed meanwhile
            if target.startswith(("anon_inode:bpf", "anon_inode:[perf_event]")):
                out.add(pid)
                break
    return out


@pytest.mark.bpf
def test_sigterm_detaches_probes(tmp_path: Path, daemons: Daemons) -> None:
    reason = bpf_possible()
    if reason:
        pytest.skip(reason)
    pinned = set(os.listdir("/sys/fs/bpf")) if os.path.isdir("/sys/fs/bpf") else set()
    db = tmp_path / "db" / "memwatchd.db"
    log = tmp_path / "daemon.log"
    cfg = config(tmp_path, bpf=True, interval=0.2)
    for round_ in range(2):  # the second start proves the first left nothing attached that gets in the way
        p = daemons.start(cfg, log, append=True)
        wait_for(lambda: log_text(log).count("memwatchd started") == round_ + 1, 120, what="start")  # noqa: B023
        if "BPF probes attached" not in log_text(log):
            pytest.skip(f"BPF did not attach here: {log_text(log)[-500:]}")
        wait_for(
            lambda: status(db).get("pid") == p.pid and status(db).get("committed_snapshots", 0) >= 3,  # noqa: B023
            30,
            what="writes",
        )
        assert str(p.pid) in _bpf_holders()
        rc, secs = stop(p)
        assert rc == 0 and secs < 5, (rc, secs)
        assert str(p.pid) not in _bpf_holders()
        assert integrity(db) == "ok"
    assert (set(os.listdir("/sys/fs/bpf")) if os.path.isdir("/sys/fs/bpf") else set()) == pinned
    assert log_text(log).count("BPF probes attached") == 2 and "BPF detach" not in log_text(log)


# ---- 20. startup failures ------------------------------------------------------------------------------


def _run_as_nobody(cfg: Path, notify: NotifyReceiver) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_USEC", "WATCHDOG_PID")}
    env["NOTIFY_SOCKET"] = notify.path
    return subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            str(BIN / "memwatchd"),
            "--config",
            str(cfg),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd="/",
    )


@pytest.fixture
def world_dir() -> Iterator[Path]:
    with short_tmpdir("mwstart-", 0o755) as d:
        yield d


def _notify(d: Path) -> NotifyReceiver:
    n = NotifyReceiver(str(d / "notify"))
    os.chmod(n.path, 0o777)  # the unprivileged daemon must be able to send to it
    return n


def test_unreadable_config_is_a_clear_failure_with_status(world_dir: Path) -> None:
    cfg = config(world_dir, db=world_dir / "db" / "m.db")
    cfg.chmod(0o600)  # root's file; the daemon runs as nobody
    n = _notify(world_dir)
    try:
        r = _run_as_nobody(cfg, n)
        assert r.returncode == 2, r.stderr
        assert r.stderr == f"memwatchd: {cfg}: cannot read: permission denied\n"
        i = n.wait_for(lambda m: m.startswith("STATUS="), 5)
        assert "permission denied" in n.messages[i][1] and str(cfg) in n.messages[i][1]
        assert not any("READY=1" in m for m in n.texts())
    finally:
        n.close()


def test_unwritable_database_folder_is_a_clear_failure_with_status(world_dir: Path) -> None:
    dbdir = world_dir / "db"
    dbdir.mkdir(mode=0o755)  # root's folder: nobody cannot create the database in it
    cfg = config(world_dir, db=dbdir / "m.db")
    n = _notify(world_dir)
    try:
        r = _run_as_nobody(cfg, n)
        assert r.returncode == 1, r.stderr
        assert "startup failed: cannot open database" in r.stderr and "ermission denied" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and r.stderr.count("\n") <= 3, r.stderr
        i = n.wait_for(lambda m: m.startswith("STATUS="), 5)
        assert "startup failed" in n.messages[i][1] and str(dbdir / "m.db") in n.messages[i][1]
        assert not any("READY=1" in m for m in n.texts())
    finally:
        n.close()


def test_config_that_is_a_directory_is_a_clear_failure(world_dir: Path) -> None:
    r = subprocess.run(
        [str(BIN / "memwatchd"), "--config", str(world_dir)], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 2 and r.stderr == f"memwatchd: {world_dir}: cannot read: is a directory\n"
