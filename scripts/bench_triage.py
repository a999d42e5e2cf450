"""Leak triage cost: throughput kept by a malloc-heavy process before, during and after a triage, beside
bcc's memleak-bpfcc on the same PID, in one run; plus the daemon's own memory while it traces.

Usage (root): .venv/bin/python scripts/bench_triage.py [--quick] [--json FILE]

One workload process (tests/workloads/leaky.c "rate": malloc(64..1088)+free pairs, reporting every 0.5 s
the pairs made and the CPU time they took) lives through all phases, so every phase measures the same PID:
  untraced       before anything is attached
  triage         during `memwatchctl triage --pid P --duration D` through the real daemon (default
                 [triage] settings: sampling every 64 KiB), intervals inside the window the result reports
  after triage   once the tracer child has exited (nothing may stay attached: target 1.00)
  memleak-bpfcc  during bcc's memleak-bpfcc -p P (its defaults: every allocation, stacks for all)
  after memleak  once memleak exited
Throughput is per CPU second of the workload (robust on a shared machine; uprobe traps are charged to the
traced process as system time) and per wall second; "kept" is a phase's figure over the untraced one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SRC = ROOT / "tests" / "workloads" / "leaky.c"
INTERVAL_S = 0.5


def _rss_kb(pid: int) -> tuple[int, int]:
    """(RssAnon, VmRSS) in KiB, (0, 0) when gone."""
    anon = rss = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                anon = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return anon, rss


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{d}/stat").read_bytes()
                if int(stat[stat.rindex(b")") + 2 :].split()[1]) == pid:
                    out.append(int(d))
    return out


class Intervals:
    """Reads the workload's "END_MS PAIRS CPU_US" lines in a thread."""

    def __init__(self, p: subprocess.Popen[bytes]) -> None:
        self.rows: list[tuple[float, int, int]] = []
        self._p = p
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self._p.stdout is not None
        vals: list[int] = []
        for line in self._p.stdout:
            vals.append(int(line))
            if len(vals) == 3:
                self.rows.append((vals[0] / 1000.0, vals[1], vals[2]))
                vals = []

    def within(self, t0: float, t1: float) -> tuple[float, float, int]:
        """(pairs per CPU second, pairs per wall second, intervals) of the intervals inside [t0, t1]."""
        sel = [r for r in self.rows if r[0] - INTERVAL_S >= t0 and r[0] <= t1]
        if not sel:
            return 0.0, 0.0, 0
        pairs = sum(r[1] for r in sel)
        cpu = sum(r[2] for r in sel) / 1e6
        return pairs / cpu if cpu else 0.0, pairs / (INTERVAL_S * len(sel)), len(sel)


def _daemon(tmp: Path) -> tuple[subprocess.Popen[bytes], Path]:
    db = tmp / "memwatchd.db"
    cfg = tmp / "memwatchd.toml"
    cfg.write_text(f'[daemon]\ninterval = 3\n[bpf]\nenabled = false\n[storage]\npath = "{db}"\n')
    log = open(tmp / "daemon.log", "wb")  # noqa: SIM115 - the child keeps its own descriptor
    p = subprocess.Popen([str(BIN / "memwatchd"), "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not Path(str(db) + ".sock").exists():
        if time.monotonic() > deadline or p.poll() is not None:
            raise RuntimeError(f"daemon did not start: {(tmp / 'daemon.log').read_text()[-500:]}")
        time.sleep(0.2)
    return p, db


def run(quick: bool) -> list[dict]:
    """One row per phase; needs root, gcc, the daemon installed in this venv, and memleak-bpfcc."""
    phase_s, trace_s, warmup_s = (4.0, 10.0, 15.0) if quick else (10.0, 30.0, 30.0)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        binary = tmp / "leaky"
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(SRC)], check=True)
        daemon, db = _daemon(tmp)
        total = 3 * phase_s + 2 * trace_s + 120
        w = subprocess.Popen([str(binary), "rate", str(total)], stdout=subprocess.PIPE)
        iv = Intervals(w)
        windows: dict[str, tuple[float, float]] = {}
        mem: dict[str, float] = {}
        # the daemon's memory (and its children's: the tracer) all along, to compare like with like
        samples: list[tuple[float, int, int, int]] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                a, rss = _rss_kb(daemon.pid)
                kids = sum(_rss_kb(c)[1] for c in _children(daemon.pid))
                samples.append((time.time(), a, rss, kids))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        def peak(col: int, t0: float, t1: float) -> int:
            return max((s[col] for s in samples if t0 <= s[0] <= t1), default=0)

        try:
            time.sleep(warmup_s)  # the daemon's first cycles (full scans, caches) settle
            t = time.time()
            time.sleep(phase_s)
            windows["untraced"] = (t, time.time())
            r = subprocess.run(
                [
                    str(BIN / "memwatchctl"),
                    "--db",
                    str(db),
                    "triage",
                    "--pid",
                    str(w.pid),
                    "--duration",
                    f"{trace_s:g}s",
                    "--json",
                ],
                capture_output=True,
                text=True,
                timeout=trace_s + 200,
            )
            if r.returncode != 0:
                raise RuntimeError(f"triage failed: {r.stderr.strip()}")
            res = json.loads(r.stdout)
            windows["triage"] = (res["started_at"] + INTERVAL_S, res["ended_at"] - INTERVAL_S)
            u0, u1 = windows["untraced"]
            mem["daemon anon KiB, peak while untraced"] = peak(1, u0, u1)
            mem["daemon anon KiB, peak from request to result"] = peak(1, u1, time.time())
            mem["daemon rss KiB, peak while untraced"] = peak(2, u0, u1)
            mem["daemon rss KiB, peak from request to result"] = peak(2, u1, time.time())
            mem["tracer child rss KiB, peak"] = peak(3, u1, time.time())
            calls_per_s = res["calls"] / max(res["duration_s"], 1e-9)

            time.sleep(1.0)
            t = time.time()
            time.sleep(phase_s)
            windows["after triage"] = (t, time.time())

            memleak = shutil.which("memleak-bpfcc")
            if memleak:
                m = subprocess.Popen(
                    [memleak, "-p", str(w.pid)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
                )
                assert m.stdout is not None
                for line in m.stdout:
                    if b"Attaching" in line:
                        break
                time.sleep(1.0)
                t = time.time()
                time.sleep(min(trace_s, 2 * phase_s))
                windows["memleak-bpfcc"] = (t, time.time())
                m.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    m.communicate(timeout=30)
                if m.poll() is None:
                    m.kill()
                    m.wait()
                time.sleep(1.0)
                t = time.time()
                time.sleep(phase_s)
                windows["after memleak"] = (t, time.time())
        finally:
            done.set()
            w.kill()
            w.wait()
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)

    base_cpu, base_wall, _ = iv.within(*windows["untraced"])
    for name, (t0, t1) in windows.items():
        cpu, wall, n = iv.within(t0, t1)
        kept = cpu / base_cpu if base_cpu else 0.0
        target = {"after triage": "1.00", "after memleak": "1.00", "triage": ">= memleak-bpfcc"}.get(name, "")
        rows.append(
            {
                "benchmark": "triage throughput",
                "config": name,
                "value": round(kept, 4),
                "unit": "kept (per CPU s)",
                "target": target,
                "note": f"{cpu:,.0f} pairs/CPU s, {wall:,.0f} pairs/wall s, {n} intervals",
            }
        )
    tri_cpu = iv.within(*windows["triage"])[0]
    us_per_pair = (1e6 / tri_cpu - 1e6 / base_cpu) if tri_cpu and base_cpu else 0.0
    rows.append(
        {
            "benchmark": "triage cost",
            "config": "CPU added per malloc+free pair while traced",
            "value": round(us_per_pair, 3),
            "unit": "us",
            "target": "",
            "note": f"3 traps a pair (malloc, its return, free); {calls_per_s:,.0f} calls/s traced",
        }
    )
    for k, v in mem.items():
        rows.append(
            {"benchmark": "triage memory", "config": k, "value": v, "unit": "KiB", "target": "", "note": ""}
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short phases (about a minute in all)")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args()
    rows = run(args.quick)
    for r in rows:
        head = f"{r['benchmark']:<18} {r['config']:<46} {r['value']!s:>10} {r['unit']:<17}"
        print(f"{head} {r['target']:<16} {r['note']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
