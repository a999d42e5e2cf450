"""Per-cycle CPU cost of groups and host accounting (issue 16).

1. The real daemon, [groups] enabled = true vs false, interleaved rounds on this host's real processes and
   cgroups: CPU time (utime + stime of the daemon, /proc/PID/stat) per cycle over a measured span after a
   warm-up. BPF off in both, so only the difference the groups make remains.
2. In process, on this host's live /proc and cgroupfs: the two steps one cycle adds (reading the charges;
   the per-cgroup/per-unit sums and the host breakdown, one pass), median of many repetitions.

Usage: .venv/bin/python scripts/bench_groups.py [--quick]
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from memwatchd.collectors.cgroupfs import ChargeReader  # noqa: E402 - after the path setup
from memwatchd.collectors.procfs import ProcfsCollector  # noqa: E402
from memwatchd.groups import charge_paths, summarize  # noqa: E402
from memwatchd.merge import merge  # noqa: E402
from memwatchd.models import BpfHealth  # noqa: E402

INTERVAL = 1.0
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def daemon_round(tmp: str, groups: bool, warm_s: float, span_s: float) -> tuple[float | None, int]:
    """(CPU ms per cycle, processes) of one daemon run; None when the daemon did not run the whole span."""
    cfg = Path(tmp) / f"g{int(groups)}.toml"
    db = Path(tmp) / f"g{int(groups)}-{time.monotonic_ns()}.db"
    cfg.write_text(
        f'[daemon]\ninterval = {INTERVAL}\n[bpf]\nenabled = false\n[storage]\npath = "{db}"\n'
        f"[groups]\nenabled = {'true' if groups else 'false'}\n"
    )
    log = Path(tmp) / "daemon.log"
    with open(log, "ab") as out:
        p = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "memwatchd"), "--config", str(cfg)], stdout=out, stderr=out
        )
    try:
        time.sleep(warm_s)
        c0, t0 = _cpu_s(p.pid), time.monotonic()
        time.sleep(span_s)
        c1, t1 = _cpu_s(p.pid), time.monotonic()
        alive = p.poll() is None
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
    nproc = sum(1 for d in os.listdir("/proc") if d.isdigit())
    if not alive or c1 <= c0:
        return None, nproc
    return (c1 - c0) * 1000 / ((t1 - t0) / INTERVAL), nproc


def in_process(reps: int) -> dict[str, float]:
    """Median µs per cycle of each step on the live host, beside the steady /proc scan of the same host
    (the load on a shared machine moves all of them alike; the ratio is what to read)."""
    pc = ProcfsCollector()
    scan = pc.scan(time.monotonic())
    snap = merge(scan, None, None, ts=time.time(), mono=time.monotonic(), bpf_health=BpfHealth("off"))
    reader = ChargeReader()
    out: dict[str, list[float]] = {"charges": [], "sums": [], "scan": []}
    paths = charge_paths({(s.cgroup, s.unit) for s in scan.samples})
    charges = reader.read(paths)
    for _ in range(reps):
        t = time.perf_counter()
        pc.scan(time.monotonic())
        out["scan"].append(time.perf_counter() - t)
        t = time.perf_counter()
        reader.read(charge_paths({(s.cgroup, s.unit) for s in scan.samples}))
        out["charges"].append(time.perf_counter() - t)
        t = time.perf_counter()
        groups, _host = summarize(snap.processes, charges, snap.meminfo)
        out["sums"].append(time.perf_counter() - t)
    pc.close()
    res = {k: statistics.median(v) * 1e6 for k, v in out.items()}
    res["processes"] = len(snap.processes)
    res["cgroups_read"] = len(paths)
    res["groups"] = len(groups)
    return res


def run(quick: bool) -> list[dict]:
    rounds, warm, span = (2, 8.0, 30.0) if quick else (3, 10.0, 60.0)
    on: list[float] = []
    off: list[float] = []
    nproc = 0
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for g in (False, True):
                ms, nproc = daemon_round(tmp, g, warm, span)
                if ms is not None:
                    (on if g else off).append(ms)
    ip = in_process(50 if quick else 200)
    rows = [
        {
            "benchmark": "groups",
            "config": f"daemon CPU per cycle, groups off / on ({nproc} processes, interval {INTERVAL:g} s)",
            "value": f"{statistics.median(off):.1f} / {statistics.median(on):.1f}",
            "unit": "ms/cycle",
            "note": f"rounds off {[round(x, 1) for x in off]}, on {[round(x, 1) for x in on]}",
        },
        {
            "benchmark": "groups",
            "config": f"in process: charges of {ip['cgroups_read']:.0f} cgroups / sums into"
            f" {ip['groups']:.0f} groups plus the host breakdown ({ip['processes']:.0f} processes)",
            "value": f"{ip['charges']:.0f} / {ip['sums']:.0f}",
            "unit": "µs/cycle",
            "note": f"per process {(ip['charges'] + ip['sums']) / ip['processes']:.2f} µs; the steady /proc"
            f" scan of the same host in the same loop: {ip['scan'] / ip['processes']:.2f} µs per process",
        },
    ]
    return rows


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=1, ensure_ascii=False))
