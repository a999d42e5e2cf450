"""Where one daemon cycle's CPU goes, stage by stage, with the daemon's real parts on this host's /proc.

Spawns N idle processes, then runs the cycle the daemon runs (procfs scan, cgroup charges, merge, group
aggregation, rules with the shipped configuration, the store write on a real SQLite file, the Prometheus
aggregation) for a number of cycles after a warm-up, and reports thread CPU time per stage in µs per
process per cycle. BPF is left out unless --bpf: then the probes are loaded as the daemon loads them (root),
their poll is a stage and the scan source follows [procfs] source (the task iterator by default). Without
--bpf, run it in a PID namespace of its own (`unshare -p -f --mount-proc ...`) to keep the other processes
of a shared host out of the population (the task iterator needs the initial PID namespace).

Usage: .venv/bin/python scripts/profile_stages.py [--processes 2000] [--cycles 20] [--bpf]
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
from memwatchd.collectors.bpf import BpfCollector  # noqa: E402
from memwatchd.collectors.cgroupfs import ChargeReader  # noqa: E402
from memwatchd.collectors.procfs import ProcfsCollector  # noqa: E402
from memwatchd.collectors.source import open_scanner  # noqa: E402
from memwatchd.config import PrometheusConfig, load_config  # noqa: E402
from memwatchd.daemon.metrics import MetricsServer  # noqa: E402
from memwatchd.daemon.status import DaemonStatus  # noqa: E402
from memwatchd.group_tracker import GroupTracker  # noqa: E402
from memwatchd.groups import charge_paths  # noqa: E402
from memwatchd.merge import Merger  # noqa: E402
from memwatchd.store.writer import StoreWriter  # noqa: E402

STAGES = ("scan", "bpf poll", "charges", "merge", "groups", "rules", "store (loop side)", "metrics+status")


async def cycles(
    n_cycles: int, warm: int, interval: float, tmp: Path, use_bpf: bool
) -> tuple[dict[str, float], int, str]:
    cfg = load_config(str(REPO / "etc" / "memwatchd.toml"))
    store = await StoreWriter.open(
        str(tmp / "p.db"), dataclasses.replace(cfg.storage, path=str(tmp / "p.db"))
    )
    bpf: BpfCollector | None = None
    if use_bpf:  # as the daemon: the probes' counters, and the scan source [procfs] source picks
        bpf = BpfCollector.load(cfg.bpf)
        procfs, source, why = open_scanner(cfg.procfs, bpf, "active")
        source = source if why is None else f"{source} ({why})"
    else:
        procfs, source = ProcfsCollector(full_rescan_s=cfg.procfs.full_rescan_s), "proc (BPF left out)"
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
            poll = bpf.poll() if bpf is not None else None
            t.append(clock())
            ch = {}
            if charges is not None:  # as the daemon: last cycle's groups plus the places of changed processes
                changed = scan.changed if scan.changed is not None else scan.samples
                ch = charges.read(tracker.paths() | charge_paths({(s.cgroup, s.unit) for s in changed}))
            t.append(clock())
            snap = merger.merge(scan, poll, ts=ts, mono=mono)
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
                    STAGES,
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
    return spent, nprocs, source


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, default=2000)
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument(
        "--bpf",
        action="store_true",
        help="load the BPF probes as the daemon does (needs root; the scan source follows [procfs] source)",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        pop = spawn(build_sleepers(tmp), args.processes)
        try:
            p0 = time.process_time()
            spent, nprocs, source = asyncio.run(cycles(args.cycles, 3, args.interval, tmp, args.bpf))
            total = time.process_time() - p0
        finally:
            pop.stop()
    per = nprocs / args.cycles
    print(f"{per:.0f} processes on average, {args.cycles} cycles measured, scan source {source}")
    for name, s in spent.items():
        print(f"  {name:18s} {s * 1e6 / nprocs:7.2f} µs/process/cycle")
    print(
        f"  {'whole process':18s} {total * 1e6 / nprocs:7.2f} µs/process/cycle"
        " (includes warm-up and SQLite thread)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
