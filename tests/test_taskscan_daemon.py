"""The daemon with [procfs] source: the task iterator chosen by "auto" and by "bpf", /proc by "proc", and a
"bpf" that cannot work refused at start with one line. The history the iterator-fed daemon stores equals
what /proc shows.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.bpf_support import memcg
from tests.helpers import bpf_possible, ctl_json, start_daemon, stop_daemon, wait_for, write_config

STATUS = "import time\nb = b'x' * (24 << 20)\nwhile True:\n    time.sleep(1)\n"


def _start_on(tmp_path: Path, source: str) -> tuple[subprocess.Popen[bytes], Path]:
    """The daemon with BPF and [procfs] source = `source` (skips where BPF cannot load), and its database."""
    reason = bpf_possible()
    if reason:
        pytest.skip(reason)
    cfg = write_config(tmp_path, bpf=True, interval=0.5, extra=f'[procfs]\nsource = "{source}"\n')
    return start_daemon(cfg), tmp_path / "db" / "memwatchd.db"


def _proc_sizes(pid: int) -> tuple[int, int, str]:
    """(VmRSS, VmSize, comm) from /proc/PID/status."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmSize"].split()[0]), fields["Name"].strip()


@pytest.mark.bpf
@pytest.mark.parametrize("source", ["auto", "bpf"])
def test_daemon_on_the_task_iterator_stores_what_proc_shows(tmp_path: Path, source: str) -> None:
    d, db = _start_on(tmp_path, source)
    w = subprocess.Popen([sys.executable, "-c", STATUS])
    try:
        wait_for(lambda: "memwatchd started" in (tmp_path / "daemon.log").read_text(), what="daemon start")
        assert "scan bpf," in (tmp_path / "daemon.log").read_text()
        time.sleep(0.5)
        rss, vm, comm = _proc_sizes(w.pid)

        def stored() -> dict | None:
            rows = ctl_json(db, "history", "--pid", str(w.pid), "--since", "5m")
            last = rows[-1] if rows else None
            return last if last and last["rss_kb"] == rss else None

        last = wait_for(stored, timeout=20, what="the workload's row with /proc's rss")
        assert (last["vm_kb"], last["comm"]) == (vm, comm)
        st = ctl_json(db, "status")
        assert st["scan_source"] == "bpf"
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
        assert stop_daemon(d) == 0
    assert "Traceback" not in (tmp_path / "daemon.log").read_text()


def test_source_bpf_without_bpf_refuses_to_start_with_one_line(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, bpf=False, interval=0.5, extra='[procfs]\nsource = "bpf"\n')
    d = start_daemon(cfg)
    try:
        assert d.wait(timeout=30) != 0
    finally:
        if d.poll() is None:
            stop_daemon(d)
    log = (tmp_path / "daemon.log").read_text()
    assert "Traceback" not in log
    failed = [ln for ln in log.splitlines() if "startup failed" in ln]
    assert len(failed) == 1 and '[procfs] source = "bpf" but BPF is not loaded' in failed[0], log


def test_source_auto_without_bpf_scans_proc_and_says_so(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, bpf=False, interval=0.3)
    db = tmp_path / "db" / "memwatchd.db"
    d = start_daemon(cfg)
    try:
        st = wait_for(lambda: ctl_json(db, "status"), what="status")
        wait_for(lambda: (ctl_json(db, "status") or {}).get("snapshot_processes"), what="a snapshot")
        assert ctl_json(db, "status")["scan_source"] == "proc"
        assert st is not None
    finally:
        assert stop_daemon(d) == 0
    assert "scan proc (BPF is not loaded (disabled in config))" in (tmp_path / "daemon.log").read_text()


# A parent that moves itself into a memory cgroup, runs a child that lives ~2 s there, and reaps it only
# ~3 s after it exited: the child is a zombie for several cycles.
DYING = (
    "import os, subprocess, sys, time\n"
    "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
    "c = subprocess.Popen([sys.executable, '-c', 'import time; b = bytearray(8 << 20); time.sleep(2)'])\n"
    "print(c.pid, flush=True)\n"
    "time.sleep(5)\n"
    "c.wait()\n"
    "time.sleep(60)\n"
)


@pytest.mark.bpf
@pytest.mark.parametrize("source", ["bpf", "proc"])
def test_an_exited_process_keeps_the_cgroup_it_ran_in(tmp_path: Path, source: str) -> None:
    """The stored cgroup of a process that exited is the one it ran in. Failed before with the task
    iterator: cgroup v1's /proc/PID/cgroup shows "/" for a zombie, the scan re-read it when the process
    turned zombie, and the history relabelled every exited process "/" (one metadata write per exit too)."""
    d, db = _start_on(tmp_path, source)
    with memcg(f"exitcg{source}", 256 << 20) as cg:
        parent = None
        try:
            wait_for(
                lambda: "memwatchd started" in (tmp_path / "daemon.log").read_text(), what="daemon start"
            )
            parent = subprocess.Popen(
                [sys.executable, "-c", DYING, str(cg / "cgroup.procs")], stdout=subprocess.PIPE
            )
            assert parent.stdout is not None
            child = int(parent.stdout.readline())
            time.sleep(7)  # lived, turned zombie, was reaped; the daemon saw each state

            def ended() -> dict | None:
                rows = ctl_json(db, "processes", "--pid", str(child), "--since", "5m")
                row = rows[-1] if rows else None
                return (
                    row if row and row.get("last_seen") != "live" and row.get("exited") is not False else None
                )

            row = wait_for(ended, timeout=20, what="the exited child's row")
            assert row["cgroup"] == f"/{cg.name}", row
        finally:
            if parent is not None:
                parent.kill()
                parent.wait()
            assert stop_daemon(d) == 0
    assert "Traceback" not in (tmp_path / "daemon.log").read_text()
