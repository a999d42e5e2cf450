"""Two daemons side by side in a PID namespace of their own: anonymous memory at N idle processes, or before
and after a churn of short-lived ones.

The shared build machine's other populations come and go by the ten thousand and move a daemon's memory
more than anything measured here; in a namespace of its own (unshare --pid --fork --mount-proc) the daemon's
/proc holds only this run's processes. BPF still sees the whole machine under kernel pids that do not match
the namespace's, so per-process BPF counters are not meaningful here; the memory of the rest of the daemon
is. Both daemons run the shipped rules (etc/memwatchd.toml of their own checkout) at the same time, on the
same processes: A is this checkout, B the checkout given with --base.

  idle:  N idle processes (one C parent forking N children that pause()), 3 s interval, RssAnon sampled
         every 10 s for --seconds.
  churn: 1,000 idle processes, then 20,000 short-lived ones in waves of 2,000 living 1.5 s
         (tests/workloads/churn.c), 1 s interval, windows 20 s (as tests/test_churn_memory.py); RssAnon
         before (median of 5 s) and every 10 s for 60 s after.

Usage: .venv/bin/python scripts/bench_memory_ab.py --base CHECKOUT [--mode idle|churn] [--processes 10000]
       [--seconds 150]
"""

from __future__ import annotations

import argparse
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
SLEEPERS_C = r"""
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    for (int i = 0; i < n; i++) {
        pid_t p = fork();
        if (p == 0) { for (;;) pause(); }
        if (p < 0) { perror("fork"); return 1; }
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
"""


def anon_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def start(repo: Path, tmp: Path, name: str, interval: int, window: str | None) -> subprocess.Popen[bytes]:
    d = tmp / name
    d.mkdir()
    text = (repo / "etc" / "memwatchd.toml").read_text()
    text = text.replace('path = "/var/lib/memwatchd/memwatchd.db"', f'path = "{d}/m.db"')
    text = text.replace("interval = 3 ", f"interval = {interval} ")
    if window:
        text = text.replace('window = "30m"', f'window = "{window}"')
    (d / "cfg.toml").write_text(text)
    return subprocess.Popen(
        [str(repo / ".venv" / "bin" / "memwatchd"), "--config", str(d / "cfg.toml")],
        stdout=subprocess.DEVNULL,
        stderr=open(d / "log", "wb"),  # noqa: SIM115 - the child keeps it
    )


def inside(args: argparse.Namespace) -> dict[str, object]:
    base = Path(args.base).resolve()
    with tempfile.TemporaryDirectory(prefix="mw-memab-") as td:
        tmp = Path(td)
        churn = args.mode == "churn"
        if churn:
            src, exe = REPO / "tests" / "workloads" / "churn.c", tmp / "churn"
        else:
            src, exe = tmp / "s.c", tmp / "s"
        if not churn:
            src.write_text(SLEEPERS_C)
        subprocess.run(["cc", "-O2", "-o", str(exe), str(src)], check=True)
        argv = [str(exe), "1000", "20000", "2000", "1500"] if churn else [str(exe), str(args.processes)]
        pop = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert pop.stdin is not None and pop.stdout is not None
        pop.stdout.readline()
        a = start(REPO, tmp, "a", 1 if churn else 3, "20s" if churn else None)
        b = start(base, tmp, "b", 1 if churn else 3, "20s" if churn else None)
        out: dict[str, object] = {"mode": args.mode, "a": str(REPO), "b": str(base)}
        try:
            if churn:
                time.sleep(40)
                before = []
                for _ in range(5):
                    time.sleep(1)
                    before.append((anon_kb(a.pid), anon_kb(b.pid)))
                pop.stdin.write("go\n")
                pop.stdin.flush()
                pop.stdout.readline()  # "churn done"
                after = []
                for _ in range(6):
                    time.sleep(10)
                    after.append((anon_kb(a.pid), anon_kb(b.pid)))
                for k, i in (("a", 0), ("b", 1)):
                    b0 = statistics.median(x[i] for x in before)
                    out[k + "_before_kb"], out[k + "_after_kb"] = b0, [x[i] for x in after]
                    out[k + "_growth_kb"] = after[-1][i] - b0
            else:
                pts = []
                for _ in range(int(args.seconds / 10)):
                    time.sleep(10)
                    pts.append((anon_kb(a.pid), anon_kb(b.pid)))
                half = pts[len(pts) // 2 :]
                out["a_anon_kb"] = statistics.median(x[0] for x in half)
                out["b_anon_kb"] = statistics.median(x[1] for x in half)
                out["points"] = pts
            out["processes"] = sum(1 for d in os.listdir("/proc") if d.isdigit())
        finally:
            for d in (a, b):
                d.send_signal(signal.SIGTERM)
                d.wait(timeout=30)
            pop.stdin.close()
            if not churn:
                pop.kill()
            pop.wait(timeout=60)
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="checkout of the other memwatchd (with its .venv)")
    ap.add_argument("--mode", choices=("idle", "churn"), default="idle")
    ap.add_argument("--processes", type=int, default=10000, help="idle processes (mode idle)")
    ap.add_argument("--seconds", type=float, default=150.0, help="measured (mode idle)")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.inside:
        argv = [sys.executable, str(Path(__file__).resolve()), "--inside", *sys.argv[1:]]
        return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", *argv], check=False).returncode
    print(json.dumps(inside(args), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
