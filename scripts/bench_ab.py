"""memwatchd variants side by side: the same idle population, at the same time, so a shared host's churn
weighs on every variant alike (bench_daemon.py runs tools one after another, where another engineer's
population appearing mid-run moves one row and not the others).

Starts N idle processes (bench_daemon's sleepers), then the daemon of this checkout with [procfs] source
"auto" (the BPF task iterator where it works) and "proc", plus, with --base, another checkout's daemon
(its own .venv); all with the shipped configuration at a 3 s interval. After a warm-up it reports per
daemon: CPU seconds (utime+stime of the daemon and its descendants) over the measured period, µs per
process per cycle (processes on the host, averaged between start and end) and anonymous memory at the end.

Usage: .venv/bin/python scripts/bench_ab.py [--processes 10000] [--measure 45] [--base CHECKOUT]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import bench_daemon as bd  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, default=10000, help="idle processes to start")
    ap.add_argument("--measure", type=float, default=45.0, help="seconds measured")
    ap.add_argument(
        "--warm", type=float, default=25.0, help="seconds before measuring (BPF compile, first scans)"
    )
    ap.add_argument("--base", default=None, help="another checkout with its own .venv, run beside as 'base'")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pop = bd.spawn(bd.build_sleepers(tmp), args.processes)
        tools = {
            "auto": bd._memwatchd(tmp, REPO, "auto"),
            "proc": bd._memwatchd(tmp, REPO, "proc", source="proc"),
        }
        if args.base:
            tools["base"] = bd._memwatchd(tmp, Path(args.base).resolve(), "base")
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for name, t in tools.items():
                with open(tmp / f"{name}.log", "wb") as log:
                    procs[name] = subprocess.Popen(
                        t.argv, env={**os.environ, **t.env}, stdout=subprocess.DEVNULL, stderr=log
                    )
            time.sleep(args.warm)
            c0 = {k: bd.cpu_seconds(p.pid) for k, p in procs.items()}
            h0, t0 = bd.host_processes(), time.monotonic()
            time.sleep(args.measure)
            c1 = {k: bd.cpu_seconds(p.pid) for k, p in procs.items()}
            h1, elapsed = bd.host_processes(), time.monotonic() - t0
            cycles = elapsed / bd.INTERVAL_S
            print(
                f"{args.processes} idle processes started; host processes {h0} -> {h1};"
                f" {elapsed:.0f} s measured"
            )
            print("| daemon | CPU s | µs / process / cycle | % of a core | anon MB |")
            print("|---|---|---|---|---|")
            for k, p in procs.items():
                cpu = c1[k] - c0[k]
                us = cpu * 1e6 / ((h0 + h1) / 2) / cycles
                anon = bd.anon_kb([p.pid, *bd.descendants(p.pid)]) / 1024
                print(f"| {k} | {cpu:.2f} | {us:.2f} | {100 * cpu / elapsed:.2f} | {anon:.1f} |")
        finally:
            for p in procs.values():
                p.terminate()
            for p in procs.values():
                p.wait(30)
            pop.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
