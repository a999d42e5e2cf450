"""Per-identity state of exited processes is dropped: 20,000 short-lived processes through the real daemon.

The daemon runs with the shipped rules (windows shortened so they fill during the warm-up: what is measured
is the state of exited processes, not windows of live ones filling) beside 1,000 idle processes. Its
anonymous memory after the churn must come back to within CHURN_GROWTH_KB of its level before, on the
allocator it runs on by default ([daemon] allocator = "auto": jemalloc, installed by scripts/setup).

Failed before (xfail until 2026-12-01): +17 to +19 MB here on pymalloc, whose arenas the burst's survivors
kept; on jemalloc +8 to +10 MB with the tables still sized for the burst; +3.6 to +4.4 MB with them shrunk.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from memwatchd.alerts.engine import OOM_GRACE_S
from tests.helpers import REPO, bpf_possible, start_daemon, stop_daemon, wait_for

CHURN_SRC = REPO / "tests" / "workloads" / "churn.c"
CHURN_GROWTH_KB = 5 * 1024  # the bound
IDLE = 1000
TOTAL = 20_000
WAVE = 2000
LIFE_MS = 1500  # each short-lived process is seen by at least one scan at a 1 s interval


def _anon_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon")


def _steady_anon(pid: int, n: int = 5, every: float = 1.0) -> int:
    xs = []
    for _ in range(n):
        xs.append(_anon_kb(pid))
        time.sleep(every)
    return int(statistics.median(xs))


def _shipped_config(tmp: Path) -> Path:
    text = (REPO / "etc" / "memwatchd.toml").read_text()
    text = text.replace('path = "/var/lib/memwatchd/memwatchd.db"', f'path = "{tmp}/db/m.db"')
    text = text.replace("interval = 3 ", "interval = 1 ")
    text = text.replace('window = "30m"', 'window = "20s"')
    cfg = tmp / "memwatchd.toml"
    cfg.write_text(text)
    return cfg


@pytest.mark.bpf
@pytest.mark.timeout(600)
def test_20000_short_lived_processes_leave_no_state_behind(tmp_path: Path) -> None:
    if reason := bpf_possible():
        pytest.skip(reason)
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the workload")
    exe = tmp_path / "churn"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(CHURN_SRC)], check=True)
    churn = subprocess.Popen(
        [str(exe), str(IDLE), str(TOTAL), str(WAVE), str(LIFE_MS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert churn.stdin is not None and churn.stdout is not None
    log = tmp_path / "daemon.log"
    d = None
    try:
        assert churn.stdout.readline().strip() == "idle ready"
        d = start_daemon(_shipped_config(tmp_path), log=log)
        wait_for(lambda: "memwatchd started" in log.read_text(), 120, what="daemon start")
        if "BPF probes attached" not in log.read_text():
            pytest.skip(f"BPF did not attach here: {log.read_text()[-300:]}")
        time.sleep(30)  # windows fill (20 s), the first full rescans pass, allocator pools settle
        before = _steady_anon(d.pid)
        churn.stdin.write("go\n")
        churn.stdin.flush()
        peak = before
        t0 = time.monotonic()
        while True:
            line = churn.stdout.readline()
            if line.strip() == "churn done" or not line:
                break
        churn_s = time.monotonic() - t0
        peak = max(peak, _anon_kb(d.pid))
        # exits are seen; the rss histories kept for OOM messages leave OOM_GRACE_S after their exit, the
        # burst's tables shrink once it is over (daemon/heap.py TrimPolicy)
        time.sleep(OOM_GRACE_S + 15)
        after = _steady_anon(d.pid)
        assert d.poll() is None, "daemon died during the churn"
        growth = after - before
        print(f"anon before {before} kB, after {after} kB (growth {growth} kB), churn took {churn_s:.0f} s")
        assert growth <= CHURN_GROWTH_KB, (
            f"anon memory {before} kB -> {after} kB after {TOTAL} short-lived processes"
            f" (+{growth} kB, bound {CHURN_GROWTH_KB} kB)"
        )
    finally:
        if d is not None:
            assert stop_daemon(d) == 0
        churn.stdin.close()
        churn.wait(timeout=60)
    assert "Traceback" not in log.read_text()
