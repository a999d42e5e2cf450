"""Daemon memory: steady-state RSS split into anonymous and file-backed, and growth over a soak.

Runs the real daemon (BPF on when possible) on a temporary database, samples /proc/PID/status.
quick: 60 s soak; full: 30 min. Growth is the least-squares slope of RssAnon after warm-up, per hour.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        lines = f.readlines()
    for line in lines:
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
            out[k] = int(v.split()[0])
    return out


def _slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / sxx if sxx else 0.0


SLEEPERS = 1000  # the daemon watches a host of this many extra processes


def run(quick: bool) -> list[dict]:
    soak = 60.0 if quick else 1800.0
    # Rule windows hold up to ~60 points per process whatever their length, so they are shortened here
    # to fill within the warm-up: what is measured after it is the steady state, not the windows filling.
    window = "30s" if quick else "5m"
    warm = 60.0 if quick else 420.0
    rows = []
    sleepers = [subprocess.Popen(["sleep", "7200"]) for _ in range(SLEEPERS)]
    try:
        return _measure(soak, warm, window, rows)
    finally:
        for s in sleepers:
            s.kill()
        for s in sleepers:
            s.wait()


def _measure(soak: float, warm: float, window: str, rows: list[dict]) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "m.toml"
        # the shipped configuration (its four default rules), with a throwaway database and one webhook URL
        shipped = (REPO / "etc" / "memwatchd.toml").read_text()
        text = shipped.replace('path = "/var/lib/memwatchd/memwatchd.db"', f'path = "{tmp}/m.db"')
        text = text.replace("urls = []", 'urls = ["json://127.0.0.1:9/"]')
        text = text.replace('window = "30m"', f'window = "{window}"')
        if os.geteuid() != 0:
            text = text.replace("enabled = true", "enabled = false")
        cfg.write_text(text)
        p = subprocess.Popen(
            [str(BIN / "memwatchd"), "--config", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(warm)
            t0 = time.monotonic()
            pts: list[tuple[float, float]] = []
            first = _status(p.pid)
            while time.monotonic() - t0 < soak:
                s = _status(p.pid)
                pts.append((time.monotonic() - t0, s["RssAnon"]))
                time.sleep(2.0)
            last = _status(p.pid)
            growth_kb_h = _slope(pts) * 3600
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=30)
    mode = f"{soak / 60:.0f} min soak after {warm:.0f} s warm-up, {SLEEPERS} extra processes"
    mode += f", windows {window}"
    rows.append(
        {
            "benchmark": "daemon memory",
            "config": f"anonymous RSS (steady, {SLEEPERS} extra processes)",
            "value": round(last["RssAnon"] / 1024, 1),
            "unit": "MB",
            "target": "<= 40",
        }
    )
    rows.append(
        {
            "benchmark": "daemon memory",
            "config": "file-backed RSS (steady)",
            "value": round(last["RssFile"] / 1024, 1),
            "unit": "MB",
            "target": "-",
        }
    )
    rows.append(
        {
            "benchmark": "daemon memory",
            "config": f"anon growth ({mode})",
            "value": round(growth_kb_h / 1024, 2),
            "unit": "MB/h",
            "target": "<= 1",
            "first_anon_kb": first["RssAnon"],
            "last_anon_kb": last["RssAnon"],
        }
    )
    rows.append(
        {
            "benchmark": "daemon memory",
            "config": "peak RSS (VmHWM)",
            "value": round(last["VmHWM"] / 1024, 1),
            "unit": "MB",
            "target": "-",
        }
    )
    return rows


if __name__ == "__main__":
    import json

    r = run("--full" not in sys.argv)
    print(json.dumps(r, indent=1))
    if "--full" in sys.argv:
        (REPO / "bench" / "memory-soak.json").write_text(json.dumps(r, indent=1) + "\n")
