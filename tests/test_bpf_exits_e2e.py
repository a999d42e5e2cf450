"""The real daemon stores what the kernel says about each exit: status, signal, OOM kill, exact identity.

Before issue 12 the store showed exit code 0 for every process (also an OOM-killed one) and identities
of processes seen only at exit had start_ticks 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.bpf_support import build, memcg, proc_start_ticks
from tests.helpers import bpf_possible, ctl, ctl_json, start_daemon, stop_daemon, wait_for, write_config

pytestmark = pytest.mark.bpf

MIB = 1 << 20


def test_the_daemon_stores_exit_status_signal_oom_kill_and_identity(tmp_path: Path) -> None:
    reason = bpf_possible()
    if reason:
        pytest.skip(reason)
    alloc = build("alloc", tmp_path)
    daemon = start_daemon(write_config(tmp_path, bpf=True, interval=0.5))
    try:
        wait_for(lambda: "memwatchd started" in (tmp_path / "daemon.log").read_text(), 120, what="start")
        if "BPF probes attached" not in (tmp_path / "daemon.log").read_text():
            pytest.skip("BPF did not attach here")
        coded = subprocess.Popen(["sh", "-c", "sleep 1.5; exit 3"])
        termed = subprocess.Popen(["sleep", "30"])
        ticks = {p.pid: proc_start_ticks(p.pid) for p in (coded, termed)}
        time.sleep(1.2)  # scanned a few times
        termed.send_signal(signal.SIGTERM)
        with memcg("e2eexit", 32 * MIB) as cg:
            procs = str(cg / "cgroup.procs")

            def enter_cgroup() -> None:
                with open(procs, "w") as f:
                    f.write(str(os.getpid()))

            # lives well under one interval: the daemon sees it only through its exit record
            hog = subprocess.Popen([str(alloc), "hog", "512"], preexec_fn=enter_cgroup)  # noqa: PLW1509
            assert hog.wait(timeout=30) == -signal.SIGKILL
        assert coded.wait() == 3 and termed.wait() == -signal.SIGTERM
        ours = (coded.pid, termed.pid, hog.pid)

        def stored() -> dict[int, dict[str, object]] | None:
            rows = ctl_json(tmp_path / "db" / "memwatchd.db", "processes", "--since", "10m") or []
            found = {r["pid"]: r for r in rows if r["pid"] in ours and r["exit_code"] is not None}
            return found if len(found) == len(ours) else None

        by_pid = wait_for(stored, 60, every=0.5, what="the three exits in the store")
    finally:
        assert stop_daemon(daemon) == 0
    got = {pid: (r["exit_code"], r["exit_signal"], r["oom_killed"]) for pid, r in by_pid.items()}
    assert got == {coded.pid: (3, 0, False), termed.pid: (-15, 15, False), hog.pid: (-9, 9, True)}
    assert {pid: by_pid[pid]["start_ticks"] for pid in ticks} == ticks
    assert by_pid[hog.pid]["start_ticks"] > 0
    table = ctl(tmp_path / "db" / "memwatchd.db", "processes", "--since", "10m", "--pid", str(hog.pid)).stdout
    assert table.rstrip().endswith("-9 OOM"), table
