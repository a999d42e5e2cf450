"""Where one daemon cycle's CPU goes, stage by stage, with the daemon's real parts on this host's /proc.

Spawns N idle processes, then runs the cycle the daemon runs (procfs scan, cgroup charges, merge, group
aggregation, rules with the shipped configuration, the store write on a real SQLite file, the Prometheus
aggregation) for a number of cycles after a warm-up, and reports thread CPU time per stage in µs per
process per cycle. BPF is left out (it needs the loader; its poll is reported by py-spy on the real daemon
instead), except that --source bpf scans with the kernel's task iterator (collectors/taskscan.py, loaded
through the loader child) instead of /proc; the scan stage then includes the kernel's walk (system time of
this thread). Run it in a PID namespace of its own (`unshare -p -f --mount-proc ...`) to keep other
processes of a shared host out of the population (--source proc only: the iterator needs the initial
namespace).

Usage: .venv/bin/python scripts/profile_stages.py [--processes 2000] [--cycles 20] [--source proc|bpf]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_daemon import build_sleepers, spawn  # noqa: E402

from memwatchd.alerts.engine import AlertEngine  # noqa: E402
from memwatchd.collectors.cgroupfs import ChargeReader  # noqa: E402
from memwatchd.collectors.procfs import ProcfsCollector  # noqa: E402
from memwatchd.collectors.source import ProcScanner  # noqa: E402
from memwatchd.config import PrometheusConfig, load_config  # noqa: E402
from memwatchd.daemon.metrics import MetricsServer  # noqa: E402
from memwatchd.daemon.status import DaemonStatus  # noqa: E402
from memwatchd.group_tracker import GroupTracker  # noqa: E402
from memwatchd.groups import charge_paths  # noqa: E402
from memwatchd.merge import Merger  # noqa: E402
from memwatchd.store.writer import StoreWriter  # noqa: E402


async def cycles(
    n_cycles: int, warm: int, interval: float, tmp: Path, source: str = "proc"
) -> tuple[dict[str, float], int]:
    cfg = load_config(str(REPO / "etc" / "memwatchd.toml"))
    store = await StoreWriter.open(
        str(tmp / "p.db"), dataclasses.replace(cfg.storage, path=str(tmp / "p.db"))
    )
    bpf = None
    procfs: ProcScanner
    if source == "bpf":
        from memwatchd.collectors.bpf import BpfCollector
        from memwatchd.collectors.taskscan import TaskScanCollector

        bpf = BpfCollector.load(cfg.bpf)
        assert bpf.task_iter is not None, bpf.iter_error
        procfs = TaskScanCollector(bpf.task_iter, full_rescan_s=cfg.procfs.full_rescan_s)
    else:
        procfs = ProcfsCollector(full_rescan_s=cfg.procfs.full_rescan_s)
    charges = ChargeReader(cfg.groups.cgroup_root) if cfg.groups.enabled else None
    merger = Merger()
    tracker = GroupTracker()
    # the Prometheus aggregation as the daemon runs it with [prometheus] listen set (never started here)
    metrics = MetricsServer(PrometheusConfig(listen="127.0.0.1:0"))
    engine = AlertEngine(cfg.rules, [], cfg.notify.repeat_interval_s)
    spent: dict[str, float] = defaultdict(float)
    nprocs = 0
    clock = time.thread_time
    try:
        for i in range(warm + n_cycles):
            mono, ts = time.monotonic(), time.time()
            t = [clock()]
            scan = procfs.scan(mono)
            t.append(clock())
            ch = {}
            if charges is not None:  # as the daemon: last cycle's groups plus the places of changed processes
                changed = scan.changed if scan.changed is not None else scan.samples
                ch = charges.read(tracker.paths() | charge_paths({(s.cgroup, s.unit) for s in changed}))
            t.append(clock())
            snap = merger.merge(scan, None, ts=ts, mono=mono)
            t.append(clock())
            if charges is not None:
                groups, host = tracker.update(snap, ch)
                snap = dataclasses.replace(snap, groups=groups, host=host)
                merger.prev = snap
            t.append(clock())
            engine.observe(snap)
            t.append(clock())
            await store.write(snap)  # the SQLite work runs in aiosqlite's thread: measured by process time
            t.append(clock())
            metrics.update(snap, DaemonStatus(processes=len(snap.processes), groups=len(snap.groups)))
            t.append(clock())
            if i == 0:
                gc.collect()
                gc.freeze()
                gc.set_threshold(20_000, 20, 10)
            if i >= warm:
                nprocs += len(snap.processes)
                for name, a, b in zip(
                    ("scan", "charges", "merge", "groups", "rules", "store (loop side)", "metrics+status"),
                    t,
                    t[1:],
                    strict=False,
                ):
                    spent[name] += b - a
            await asyncio.sleep(interval)
    finally:
        procfs.close()
        if bpf is not None:
            bpf.close()
        await store.close()
    return spent, nprocs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, default=2000)
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--source", choices=("proc", "bpf"), default="proc", help="/proc or the task iterator")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        pop = spawn(build_sleepers(tmp), args.processes)
        try:
            p0 = time.process_time()
            spent, nprocs = asyncio.run(cycles(args.cycles, 3, args.interval, tmp, args.source))
            total = time.process_time() - p0
        finally:
            pop.stop()
    per = nprocs / args.cycles
    print(f"{per:.0f} processes on average, {args.cycles} cycles measured")
    for name, s in spent.items():
        print(f"  {name:18s} {s * 1e6 / nprocs:7.2f} µs/process/cycle")
    print(
        f"  {'whole process':18s} {total * 1e6 / nprocs:7.2f} µs/process/cycle"
        " (includes warm-up and SQLite thread)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
