"""The whole daemon's anonymous memory and CPU at N idle processes, quickly (one daemon, no peers).

N idle processes (one C parent forking N children that pause()), then `memwatchd --config` of CHECKOUT
with its shipped rules (3 s interval, BPF on, database in a temp dir; PYTHONPATH=CHECKOUT, so a worktree's
code runs on this .venv). RssAnon is sampled every 10 s; CPU (utime+stime) is taken over the second half and
given as µs per process per cycle (processes on the host). Run it in the initial PID namespace for the
task-iterator scan the daemon uses by default. scripts/bench_daemon.py is the headline benchmark (peers,
rounds); this is the quick check between changes.

Usage: .venv/bin/python scripts/bench_memory_10k.py [--checkout .] [--processes 10000] [--seconds 150]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory_ab import SLEEPERS_C, anon_kb  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def processes() -> int:
    return sum(1 for d in os.listdir("/proc") if d.isdigit())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkout", default=str(REPO), help="the memwatchd checkout to run (default: this one)")
    ap.add_argument("--processes", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=150.0)
    args = ap.parse_args()
    repo = Path(args.checkout).resolve()
    with tempfile.TemporaryDirectory(prefix="mw-mem10k-") as td:
        tmp = Path(td)
        (tmp / "s.c").write_text(SLEEPERS_C)
        subprocess.run(["cc", "-O2", "-o", str(tmp / "s"), str(tmp / "s.c")], check=True)
        pop = subprocess.Popen(
            [str(tmp / "s"), str(args.processes)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        assert pop.stdout is not None
        pop.stdout.readline()
        text = (repo / "etc" / "memwatchd.toml").read_text()
        (tmp / "cfg.toml").write_text(
            text.replace('path = "/var/lib/memwatchd/memwatchd.db"', f'path = "{tmp}/m.db"')
        )
        d = subprocess.Popen(
            [str(Path(sys.executable).parent / "memwatchd"), "--config", str(tmp / "cfg.toml")],
            env=dict(os.environ, PYTHONPATH=str(repo)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        points: list[float] = []
        try:
            t0 = time.monotonic()
            c0: tuple[float, float] | None = None
            while time.monotonic() - t0 < args.seconds:
                time.sleep(10)
                points.append(anon_kb(d.pid) / 1024)
                if c0 is None and time.monotonic() - t0 > args.seconds / 2:
                    c0 = (cpu_s(d.pid), time.monotonic())
            assert c0 is not None
            c1, n = (cpu_s(d.pid), time.monotonic()), processes()
            us = (c1[0] - c0[0]) * 1e6 / n / ((c1[1] - c0[1]) / 3)
        finally:
            d.send_signal(signal.SIGTERM)
            d.wait(timeout=30)
            os.killpg(pop.pid, signal.SIGKILL)
            pop.wait()
    half = points[len(points) // 2 :]
    print(f"processes {n}, anon MB median of the second half {statistics.median(half):.1f}")
    print("anon MB every 10 s", [round(p, 1) for p in points])
    print(f"CPU {us:.2f} µs per process per cycle (second half)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
