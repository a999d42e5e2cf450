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

from tests.helpers import bpf_possible, ctl_json, start_daemon, stop_daemon, wait_for, write_config

STATUS = "import time\nb = b'x' * (24 << 20)\nwhile True:\n    time.sleep(1)\n"


def _proc_sizes(pid: int) -> tuple[int, int, str]:
    """(VmRSS, VmSize, comm) from /proc/PID/status."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmSize"].split()[0]), fields["Name"].strip()


@pytest.mark.bpf
@pytest.mark.parametrize("source", ["auto", "bpf"])
def test_daemon_on_the_task_iterator_stores_what_proc_shows(tmp_path: Path, source: str) -> None:
    reason = bpf_possible()
    if reason:
        pytest.skip(reason)
    cfg = write_config(tmp_path, bpf=True, interval=0.5, extra=f'[procfs]\nsource = "{source}"\n')
    db = tmp_path / "db" / "memwatchd.db"
    d = start_daemon(cfg)
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
