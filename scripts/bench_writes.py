"""Bytes the daemon writes per day (issue 18), beside atop's raw-file growth in the same run.

A host of N real extra processes (forked by a small C program: idle ones wait in pause(), "changing" ones
map and unmap 512 KiB alternately every interval, so their RSS changes each cycle; before 2026-12-01 they
used malloc/free, whose memory stayed resident after the first round: that host was in fact idle) is
watched by the real daemon at a 3 s interval with its database on the root file system (ext4: write_bytes
counts what reaches the page cache for the disk), all in a PID namespace of their own (unshare --pid
--mount-proc) so the host's other processes are not part of the measurement. Two phases per host:

- steady: write_bytes and wchar of the daemon and its children (/proc/PID/io) over the run, between the
  hourly keyframes (atop -w FILE 3 runs beside it; its file growth is scaled to a day the same way);
- periodic: the hourly keyframe + compaction, measured with a 40 s period (tests/hooked_daemon.py
  --store-period-s 40) over two periods; its extra bytes per period count 24 times a day.

per day = steady rate x 86,400 s + 24 x (bytes of one period's keyframe and compaction).

A 40 s period holds 90 times fewer changes than an hour, so for a host that changes that figure is a lower
bound of the hourly compaction. The real hour is measured too, on the real writer with the same kind of host
simulated (the processes of scripts/bench_store.py with their 20 cgroups, 20 units and the host series;
snapshots every 3 s, committed 10 at a time, WAL checkpointing off): the bytes the compaction of the second
hour appends to the WAL (`compaction_hour` rows; the WAL's own bytes, not write_bytes: the page cache
rounding and the -shm pages come on top).

    .venv/bin/python scripts/bench_writes.py [--quick] [--src DIR]   (--src: the daemon of another checkout)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent
INTERVAL = 3.0

PROCS_C = r"""
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
/* procs N CHANGING PERIOD_MS: forks N children; the first CHANGING map and touch 512 KiB, then unmap it,
   alternately every PERIOD_MS (mmap/munmap, not malloc/free: glibc's dynamic mmap threshold keeps a freed
   512 KiB block in the heap after the first round, so RSS would stop changing) */
int main(int argc, char **argv) {
    int n = atoi(argv[1]), changing = atoi(argv[2]), period = atoi(argv[3]);
    for (int i = 0; i < n; i++) {
        pid_t p = fork();
        if (p == 0) {
            if (i >= changing) for (;;) pause();
            usleep((useconds_t)(rand() % period) * 1000u + (useconds_t)i * 7919u % 1000000u);
            char *m = 0;
            for (;;) {
                if (m) {
                    munmap(m, 512 << 10);
                    m = 0;
                } else {
                    m = mmap(0, 512 << 10, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                    if (m == MAP_FAILED) return 1;
                    memset(m, 1, 512 << 10);
                }
                usleep((useconds_t)period * 1000u);
            }
        }
        if (p < 0) return 1;
    }
    for (;;) pause();
}
"""


def _io(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            k, v = line.split(":")
            out[k] = int(v)
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    """pid and its live descendants."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def _written(pid: int) -> tuple[int, int]:
    wb = wc = 0
    for p in _tree(pid):
        io = _io(p)
        wb += io.get("write_bytes", 0) - io.get("cancelled_write_bytes", 0)
        wc += io.get("wchar", 0)
    return wb, wc


def _meta(db: Path, key: str) -> int:
    try:
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            r = c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        finally:
            c.close()
    except sqlite3.Error:
        return 0
    return int(r[0]) if r and r[0] is not None else 0


def _start(tmp: Path, src: str | None, period_s: float | None) -> tuple[subprocess.Popen[bytes], Path]:
    db = tmp / "m.db"
    for f in tmp.glob("m.db*"):
        f.unlink()
    cfg = tmp / "m.toml"
    cfg.write_text(f'[daemon]\ninterval = {INTERVAL}\n[bpf]\nenabled = false\n[storage]\npath = "{db}"\n')
    env = dict(os.environ)
    root = src or str(REPO)
    env["PYTHONPATH"] = root
    argv = [str(BIN / "python"), "-c", "from memwatchd.daemon.app import main; main()", "--config", str(cfg)]
    if period_s is not None:  # tests/hooked_daemon.py: the keyframe/compaction period as a DaemonHooks value
        argv = [str(BIN / "python"), "-m", "tests.hooked_daemon", "--config", str(cfg)]
        argv += ["--store-period-s", str(period_s)]
    with open(tmp / "daemon.log", "ab") as log:
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    return p, db


def _stop(p: subprocess.Popen[bytes]) -> None:
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def _steady(tmp: Path, src: str | None, seconds: float) -> dict[str, float]:
    p, db = _start(tmp, src, None)
    atop_file = tmp / "atop.raw"
    atop = None
    try:
        time.sleep(2 * INTERVAL + 3)  # the first (keyframe) snapshot is in
        atop = subprocess.Popen(
            ["atop", "-w", str(atop_file), "3"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(4)  # atop's first sample (the whole process list) is written at start
        wb0, wc0 = _written(p.pid)
        a0 = atop_file.stat().st_size if atop_file.exists() else 0
        t0 = time.monotonic()
        time.sleep(seconds)
        wb1, wc1 = _written(p.pid)
        a1 = atop_file.stat().st_size if atop_file.exists() else 0
        dt = time.monotonic() - t0
        if p.poll() is not None:
            raise RuntimeError(f"the daemon exited: {(tmp / 'daemon.log').read_text()[-2000:]}")
    finally:
        if atop is not None:
            atop.terminate()
            atop.wait(30)
        _stop(p)
    day = 86400 / dt
    return {
        "write_bytes_day": (wb1 - wb0) * day,
        "wchar_day": (wc1 - wc0) * day,
        "atop_day": (a1 - a0) * day,
        "s": dt,
    }


def _periodic(tmp: Path, src: str | None, steady_wb_s: float, steady_wc_s: float) -> dict[str, float] | None:
    period = 40
    p, db = _start(tmp, src, period)
    try:
        # two compactions apart = exactly two periods of keyframes and compactions
        marks: list[tuple[float, int, int]] = []
        last = 0
        deadline = time.monotonic() + 6 * period
        while len(marks) < 3 and time.monotonic() < deadline:
            c = _meta(db, "compacted_through")
            if c != last:
                last = c
                wb, wc = _written(p.pid)
                marks.append((time.monotonic(), wb, wc))
            time.sleep(0.5)
    finally:
        _stop(p)
    if len(marks) < 3:
        return None  # the daemon under test has no period hook (e.g. before issue 18)
    dt = marks[2][0] - marks[0][0]
    return {
        "write_bytes_period": max(0.0, (marks[2][1] - marks[0][1] - steady_wb_s * dt) / 2),
        "wchar_period": max(0.0, (marks[2][2] - marks[0][2] - steady_wc_s * dt) / 2),
    }


def _host(n: int, changing: int, tmp: Path) -> subprocess.Popen[bytes]:
    exe = tmp / "procs"
    if not exe.exists():
        (tmp / "procs.c").write_text(PROCS_C)
        subprocess.run(["cc", "-O2", "-o", str(exe), str(tmp / "procs.c")], check=True)
    return subprocess.Popen(
        [str(exe), str(n), str(changing), str(int(INTERVAL * 1000))], start_new_session=True
    )


async def _compaction_hour_async(path: str, n: int, changing: int) -> int:
    import random

    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(HERE))
    import bench_store as bs  # the simulated host's processes and groups

    from memwatchd.config import StorageConfig
    from memwatchd.models import BpfHealth, MemInfo, Snapshot
    from memwatchd.store.writer import StoreWriter

    rng = random.Random(1)
    procs = [bs._proc(pid, rng) for pid in range(1000, 1000 + n)]
    w = await StoreWriter.open(path, StorageConfig(path=path))
    w.margin_ms, w.margin_snaps = 10 * w.period_ms, 10**9  # compacted below, by hand
    await w._db.execute("PRAGMA wal_autocheckpoint = 0")
    t0 = 1_700_000_000.0 - 1_700_000_000.0 % 3600  # an hour boundary
    per_hour = round(3600 / INTERVAL)
    mi = MemInfo(32 << 20, 16 << 20, 8 << 20, 7 << 20)
    batch: list[Snapshot] = []
    grown = 0
    for i in range(2 * per_hour + 1):
        for j in range(changing):
            procs[j] = bs._change(procs[j], rng)
        snap = Snapshot(
            ts=t0 + i * INTERVAL,
            mono=i * INTERVAL,
            processes=tuple(procs),
            meminfo=mi,
            bpf=BpfHealth("active"),
        )
        batch.append(bs._with_groups(snap, i, rng))
        if len(batch) == 10 or i % per_hour == 0:
            await w.write_batch(batch)
            batch = []
        if i == per_hour:  # the second hour starts: compact the first (births: not measured)
            await w.compact(w._cur.next_snap - 2)
    wal = path + "-wal"
    before = os.stat(wal).st_size
    await w.compact(w._cur.next_snap - 2)  # the second hour, with its own snapshots only
    grown = os.stat(wal).st_size - before
    await w.close()
    return grown


def compaction_hour(n: int, changing: int) -> int:
    """Bytes the compaction of one real hour appends to the WAL (simulated host, real writer)."""
    import asyncio

    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="mwbench-hour-") as td:
        return asyncio.run(_compaction_hour_async(os.path.join(td, "h.db"), n, changing))


def run(quick: bool, src: str | None = None, steady_only: bool = False) -> list[dict]:
    """In a fresh PID namespace with its own /proc: the daemon and atop see only the benchmark's host."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        argv = [sys.executable, str(Path(__file__).resolve()), "--inside", "--out", out.name]
        argv += ["--quick"] * quick + ["--steady-only"] * steady_only + (["--src", src] if src else [])
        subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", *argv], check=True)
        return list(json.loads(Path(out.name).read_text()))


def _reap() -> None:
    """This process is the namespace's init: orphaned host processes become its zombies until reaped."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)


def _run_inside(quick: bool, src: str | None = None, steady_only: bool = False) -> list[dict]:
    seconds = 90.0 if quick else 600.0
    hosts = [(1000, 0), (10000, 0), (1000, 100)]
    rows = []
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="mwbench-") as td:
        tmp = Path(td)
        for n, changing in hosts:
            host = _host(n, changing, tmp)
            try:
                time.sleep(3 + n / 2000)
                s = _steady(tmp, src, seconds)
                per = (
                    None
                    if steady_only
                    else _periodic(tmp, src, s["write_bytes_day"] / 86400, s["wchar_day"] / 86400)
                )
            finally:
                os.killpg(host.pid, signal.SIGKILL)
                host.wait()
                _reap()
            what = f"{n:,} processes, " + (f"{changing * 100 // n} % changing" if changing else "idle")
            total = s["write_bytes_day"] + (24 * per["write_bytes_period"] if per else 0)
            wchar = s["wchar_day"] + (24 * per["wchar_period"] if per else 0)
            note = f"steady {s['write_bytes_day'] / 1e6:.1f} MB/day over {s['s']:.0f} s" + (
                f" + 24 x {per['write_bytes_period'] / 1e6:.2f} MB hourly keyframe+compaction"
                if per
                else " (hourly keyframe+compaction not measured)"
            )
            hour = None if steady_only else compaction_hour(n, max(1, changing))
            rows += [
                {
                    "benchmark": "disk writes",
                    "config": f"memwatchd write_bytes/day, {what}, 3 s",
                    "value": round(total / 1e6, 1),
                    "unit": "MB/day",
                    "target": "<= 100 (goal 30) when idle at 1,000",
                    "note": note,
                },
                {
                    "benchmark": "disk writes",
                    "config": f"memwatchd wchar/day, {what}, 3 s",
                    "value": round(wchar / 1e6, 1),
                    "unit": "MB/day",
                    "target": "-",
                },
                *(
                    []
                    if hour is None
                    else [
                        {
                            "benchmark": "disk writes",
                            "config": f"compaction of a real hour, WAL bytes, {what} (simulated)",
                            "value": round(hour / 1e6, 2),
                            "unit": "MB/hour",
                            "target": "-",
                            "note": f"{max(1, changing)} of {n:,} simulated processes changing every 3 s",
                        },
                        {
                            "benchmark": "disk writes",
                            "config": f"memwatchd steady write_bytes + 24 x real-hour compaction, {what}",
                            "value": round((s["write_bytes_day"] + 24 * hour) / 1e6, 1),
                            "unit": "MB/day",
                            "target": "<= 100 (goal 30) when idle at 1,000",
                        },
                    ]
                ),
                {
                    "benchmark": "disk writes",
                    "config": f"atop -w FILE 3 file growth/day, {what}",
                    "value": round(s["atop_day"] / 1e6, 1),
                    "unit": "MB/day",
                    "target": "peer",
                },
            ]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="90 s per host instead of 600 s")
    ap.add_argument("--src", default=None, help="run the daemon from this source tree (PYTHONPATH)")
    ap.add_argument("--steady-only", action="store_true", help="skip the periodic (keyframe) phase")
    ap.add_argument("--out", default=None, help="also write the rows as JSON to this file")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inside:
        rows = _run_inside(args.quick, args.src, args.steady_only)
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
        return
    rows = run(args.quick, args.src, args.steady_only)
    for r in rows:
        print(f"{r['config']:<62} {r['value']:>10} {r['unit']}  {r.get('note', '')}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
