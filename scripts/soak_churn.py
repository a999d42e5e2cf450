"""Churn soak: the real daemon (shipped rules, 3 s interval) under steady process churn, its memory over time.

A C churner (tests/workloads/churn.c) keeps forking short-lived processes (each maps and touches 64 KiB,
lives LIFE_MS) in waves; RssAnon of the daemon is sampled every 10 s. The result says whether memory
plateaus: the least-squares slope over the second half of the run (MB/h), and the first/last values.

With --own-pid-namespace the run happens in a PID namespace of its own (unshare --pid --fork --mount-proc):
the daemon's /proc then holds only this run's processes, not the other populations of a shared machine
(whose coming and going otherwise moves the daemon's memory more than the churn does). BPF still sees the
whole machine under its kernel pids, which do not match the namespace's: its per-process counters are not
meaningful there, the memory of the rest of the daemon is. Each point also records the processes the
daemon's /proc showed.

Usage: .venv/bin/python scripts/soak_churn.py [--minutes 40] [--rate 20] [--own-pid-namespace]
       [--out bench/soak-churn.json]      (--rate: short-lived processes per second)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def anon_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def processes() -> int:
    return sum(1 for d in os.listdir("/proc") if d.isdigit())


def slope_per_h(points: list[tuple[float, float]]) -> float:
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    return 3600 * sum((p[0] - mx) * (p[1] - my) for p in points) / sxx if sxx else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=40.0)
    ap.add_argument("--rate", type=int, default=20, help="short-lived processes per second")
    ap.add_argument("--out", default=str(REPO / "bench" / "soak-churn.json"))
    ap.add_argument("--own-pid-namespace", action="store_true", help="run in a PID namespace of its own")
    ap.add_argument(
        "--no-bpf",
        action="store_true",
        help="[bpf] enabled = false (in a namespace: keeps the machine's other exits out of the daemon)",
    )
    args = ap.parse_args()
    if args.own_pid_namespace and os.environ.get("MEMWATCHD_SOAK_INSIDE") != "1":
        os.environ["MEMWATCHD_SOAK_INSIDE"] = "1"
        argv = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]]
        return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", *argv], check=False).returncode
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    life_ms, wave_s = 2000, 5
    wave = args.rate * wave_s
    with tempfile.TemporaryDirectory(prefix="memwatchd-soak-") as tmp_s:
        tmp = Path(tmp_s)
        exe = tmp / "churn"
        src = REPO / "tests" / "workloads" / "churn.c"
        subprocess.run(["cc", "-O2", "-o", str(exe), str(src)], check=True)
        text = (REPO / "etc" / "memwatchd.toml").read_text()
        text = text.replace('path = "/var/lib/memwatchd/memwatchd.db"', f'path = "{tmp}/m.db"')
        if args.no_bpf:
            text = text.replace("[bpf]\nenabled = true", "[bpf]\nenabled = false", 1)
        cfg = tmp / "memwatchd.toml"
        cfg.write_text(text)
        d = subprocess.Popen(
            [str(BIN / "memwatchd"), "--config", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp / "daemon.log", "wb"),  # noqa: SIM115 - the child keeps it
        )
        churners: list[subprocess.Popen[str]] = []
        points: list[tuple[float, float]] = []
        hosts: list[int] = []
        t0 = time.monotonic()
        try:
            time.sleep(20)
            end = t0 + args.minutes * 60
            next_wave = time.monotonic()
            while time.monotonic() < end:
                now = time.monotonic()
                if now >= next_wave:
                    # one wave of `wave` processes every wave_s seconds, each living life_ms
                    c = subprocess.Popen(
                        [str(exe), "0", str(wave), str(wave), str(life_ms)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.DEVNULL,
                        text=True,
                    )
                    assert c.stdin is not None
                    c.stdin.write("go\n")
                    c.stdin.close()
                    churners.append(c)
                    next_wave += wave_s
                churners = [c for c in churners if c.poll() is None]
                if not points or now - t0 - points[-1][0] >= 10:
                    points.append((now - t0, anon_kb(d.pid) / 1024))
                    hosts.append(processes())
                if d.poll() is not None:
                    print("Error: the daemon exited", file=sys.stderr)
                    return 1
                time.sleep(0.5)
        finally:
            for c in churners:
                c.wait()
            d.send_signal(signal.SIGTERM)
            d.wait(timeout=30)
    half = [p for p in points if p[0] >= points[-1][0] / 2]
    doc = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "scripts/soak_churn.py " + " ".join(sys.argv[1:]),
        "own_pid_namespace": args.own_pid_namespace,
        "bpf": not args.no_bpf,
        "minutes": args.minutes,
        "churn_per_s": args.rate,
        "short_lived_processes": int(args.rate * (points[-1][0] - 20)) if points else 0,
        "anon_mb_first": round(points[0][1], 1) if points else None,
        "anon_mb_max": round(max(p[1] for p in points), 1) if points else None,
        "anon_mb_last": round(points[-1][1], 1) if points else None,
        "slope_second_half_mb_per_h": round(slope_per_h(half), 2),
        "processes_min_max": [min(hosts), max(hosts)] if hosts else None,
        "points": [(round(t), round(v, 2), h) for (t, v), h in zip(points, hosts, strict=True)],
    }
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({k: v for k, v in doc.items() if k != "points"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
