"""The real daemon end to end: collectors -> merge -> store, read back with memwatchctl."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import bpf_possible, ctl, ctl_json, start_daemon, stop_daemon, wait_for, write_config

CHUNK = 4 * 1024 * 1024
N_CHUNKS = 16

WORKLOAD = textwrap.dedent(
    f"""
    import mmap, sys, time
    chunks = []
    sys.stdin.readline()                      # wait until the test says go
    for _ in range({N_CHUNKS}):
        m = mmap.mmap(-1, {CHUNK}, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        for off in range(0, {CHUNK}, 4096):   # touch every page so it is resident
            m[off] = 1
        chunks.append(m)
    print("done", flush=True)
    while True:
        rss = [l for l in open("/proc/self/status") if l.startswith("VmRSS:")][0].split()[1]
        with open(sys.argv[1], "w") as f:
            f.write(rss)
        time.sleep(0.1)
    """
)


@pytest.mark.bpf
def test_workload_counters_and_rss_reach_history(tmp_path: Path) -> None:
    reason = bpf_possible()
    if reason:
        pytest.skip(reason)
    cfg = write_config(tmp_path, bpf=True, interval=0.5)
    db = tmp_path / "db" / "memwatchd.db"
    d = start_daemon(cfg)
    rss_file = tmp_path / "rss"
    w = subprocess.Popen(
        [sys.executable, "-c", WORKLOAD, str(rss_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: (tmp_path / "daemon.log").read_text().count("memwatchd started"), what="daemon start"
        )
        assert "BPF probes attached" in (tmp_path / "daemon.log").read_text()
        assert w.stdin and w.stdout
        w.stdin.write("go\n")
        w.stdin.flush()
        assert w.stdout.readline().strip() == "done"
        wait_for(lambda: rss_file.exists() and rss_file.read_text(), what="workload rss")

        def settled() -> dict | None:
            rows = ctl_json(db, "history", "--pid", str(w.pid), "--since", "5m")
            if not rows:
                return None
            last = rows[-1]
            if (last.get("mmap_bytes") or 0) < N_CHUNKS * CHUNK or (
                last.get("rss_kb") or 0
            ) < N_CHUNKS * CHUNK // 1024:
                return None
            return last

        last = wait_for(settled, timeout=30, what="snapshot with all chunks")
        own_rss = int(rss_file.read_text())
        assert last["pid"] == w.pid and last["comm"].startswith("python")
        assert last["mmap_count"] >= N_CHUNKS
        # all chunks counted; the interpreter's own mappings (loader, arenas) come on top
        assert N_CHUNKS * CHUNK <= last["mmap_bytes"] <= N_CHUNKS * CHUNK + 64 * 1024 * 1024
        assert abs(last["rss_kb"] - own_rss) <= 0.05 * own_rss
        for key in (
            "ts",
            "start_time",
            "unit",
            "anon_kb",
            "swap_kb",
            "vm_kb",
            "hwm_kb",
            "munmap_count",
            "munmap_bytes",
            "brk_count",
            "brk_bytes",
        ):
            assert key in last
        assert last["hwm_kb"] >= last["rss_kb"] - 1024
    finally:
        w.kill()
        w.wait()
        assert stop_daemon(d) == 0
    log = (tmp_path / "daemon.log").read_text()
    assert "Traceback" not in log


def test_proc_only_daemon_runs_and_stops_cleanly(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, bpf=False, interval=0.3)
    db = tmp_path / "db" / "memwatchd.db"
    d = start_daemon(cfg)
    try:
        wait_for(
            lambda: (ctl_json(db, "history", "--pid", str(os.getpid()), "--since", "5m") or [None])[-1],
            what="own history",
        )
        st = ctl_json(db, "status")
        assert st is not None and "disabled" in str(st.get("bpf_state"))
    finally:
        assert stop_daemon(d) == 0
    log = (tmp_path / "daemon.log").read_text()
    assert "BPF disabled in config" in log and log.count("BPF disabled") == 1
    assert "Traceback" not in log
    # the database and its companions are not world-readable
    for f in db.parent.iterdir():
        assert not stat.S_IMODE(f.stat().st_mode) & 0o007, f


def test_bad_reload_keeps_old_config_running(tmp_path: Path) -> None:
    import signal

    cfg = write_config(tmp_path, bpf=False, interval=0.3)
    db = tmp_path / "db" / "memwatchd.db"
    d = start_daemon(cfg)
    try:
        wait_for(lambda: ctl_json(db, "status"), what="status")
        good = cfg.read_text()
        cfg.write_text(good + "\n[daemon2]\nx = 1\n")
        d.send_signal(signal.SIGHUP)
        wait_for(
            lambda: "reload failed" in (tmp_path / "daemon.log").read_text(), what="reload failure logged"
        )
        n0 = (ctl_json(db, "status") or {}).get("committed_snapshots", 0)
        wait_for(
            lambda: (ctl_json(db, "status") or {}).get("committed_snapshots", 0) > n0 + 2,
            what="sampling continues",
        )
        assert d.poll() is None
        cfg.write_text(good.replace("interval = 0.3", "interval = 0.2"))
        d.send_signal(signal.SIGHUP)
        wait_for(
            lambda: "configuration reloaded" in (tmp_path / "daemon.log").read_text(), what="good reload"
        )
    finally:
        assert stop_daemon(d) == 0
    log = (tmp_path / "daemon.log").read_text()
    assert "daemon2: unknown key" in log


def test_unwritable_database_is_a_clear_startup_failure(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = write_config(tmp_path, bpf=False)
    cfg.write_text(
        cfg.read_text().replace(str(tmp_path / "db" / "memwatchd.db"), str(blocker / "sub" / "m.db"))
    )
    r = subprocess.run(
        [sys.executable, "-m", "memwatchd.daemon.app", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1
    assert "startup failed" in r.stderr and "Traceback" not in r.stderr


def test_memwatchctl_without_database_is_one_line_error(tmp_path: Path) -> None:
    r = ctl(tmp_path / "none.db", "status")
    assert r.returncode == 1
    assert r.stderr.startswith("Error: ") and "Traceback" not in r.stderr
