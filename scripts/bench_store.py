"""Storage benchmark: disk bytes per process-sample, and query times of `history` and `top`.

Synthetic host: 1,000 processes, 3 s interval, ~10% of processes change per interval, in three patterns:
"active" (the same 10% change every interval, the rest are steady), "skewed" (5% change every interval, the
other 95% about once a minute each: 10% per interval on average) and "uniform" (a random 10% each interval,
so every process changes every 30 s on average: the worst case for per-process compression). The naive
design (one row per process per snapshot, indexed by pid and time) is measured on a sample of the same data
and scaled per row.

Each snapshot also carries the group and host series the daemon stores (issue 16): the processes' 20
cgroups and 20 units (sums of the members plus a charge that follows them) and the host breakdown, whose
values move every interval. ``--no-groups`` leaves them out (the cost of the processes alone, as before);
``--storage-only`` runs just the three storage patterns.

Usage: .venv/bin/python scripts/bench_store.py [--quick] [--no-groups] [--storage-only]
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from memwatchd.config import StorageConfig  # noqa: E402 - after the path setup
from memwatchd.groups import aggregate_groups, host_memory  # noqa: E402
from memwatchd.models import BpfHealth, GroupCharge, MemInfo, ProcessSnapshot, Snapshot  # noqa: E402
from memwatchd.store.reader import StoreReader  # noqa: E402
from memwatchd.store.writer import StoreWriter  # noqa: E402

N_PROC = 1000
INTERVAL = 3.0
T0 = 1_700_000_000.0
DAY = 86400.0


def _proc(pid: int, rng: random.Random) -> ProcessSnapshot:
    rss = rng.randrange(1_000, 500_000, 4)
    return ProcessSnapshot(
        pid=pid,
        start_ticks=pid * 100,
        start_time=T0 - 1000 + pid,
        comm=f"proc{pid % 50}",
        unit=f"svc{pid % 20}.service",
        cgroup=f"/system.slice/svc{pid % 20}.service",
        rss_kb=rss,
        anon_kb=rss // 2,
        swap_kb=0,
        vm_kb=rss * 4,
        hwm_kb=rss,
        pss_kb=None,
        uss_kb=None,
        mmap_count=100,
        mmap_bytes=100 * 65536,
        munmap_count=50,
        munmap_bytes=50 * 65536,
        brk_count=10,
        brk_bytes=1 << 20,
        d_mmap_count=0,
        d_mmap_bytes=0,
        d_munmap_bytes=0,
        d_brk_bytes=0,
        dt_s=INTERVAL,
    )


def _change(p: ProcessSnapshot, rng: random.Random) -> ProcessSnapshot:
    d = rng.choice((-1, 1, 1)) * rng.randrange(4, 2048, 4)
    rss = max(1000, p.rss_kb + d)  # type: ignore[operator]
    kw: dict = {"rss_kb": rss, "anon_kb": max(0, p.anon_kb + d // 2), "hwm_kb": max(p.hwm_kb, rss)}  # type: ignore[operator]
    if rng.random() < 0.3:  # allocation activity seen by eBPF
        n = rng.randrange(1, 20)
        kw.update(
            mmap_count=p.mmap_count + n,
            mmap_bytes=p.mmap_bytes + n * 65536,
            vm_kb=p.vm_kb + n * 64,  # type: ignore[operator]
            d_mmap_count=n,
            d_mmap_bytes=n * 65536,
        )
    else:
        kw.update(d_mmap_count=0, d_mmap_bytes=0)
    return dataclasses.replace(p, **kw)


def _with_groups(snap: Snapshot, i: int, rng: random.Random) -> Snapshot:
    """The group and host series of a snapshot: the charge of each cgroup follows its members' anon sum
    plus page cache that drifts a little each interval; the host's meminfo parts move every interval."""
    anon: dict[str, int] = {}
    for p in snap.processes:
        if p.cgroup:
            anon[p.cgroup] = anon.get(p.cgroup, 0) + (p.anon_kb or 0)
    charges = {
        cg: GroupCharge(cg, (a + 200_000 + (i // 20) * 4) * 1024, 4 << 30, cg, None) for cg, a in anon.items()
    }
    mi = MemInfo(
        32 << 20,
        (16 << 20) - rng.randrange(0, 4096),
        8 << 20,
        7 << 20,
        mem_free_kb=(12 << 20) - rng.randrange(0, 4096),
        buffers_kb=200_000 + rng.randrange(0, 64),
        cached_kb=(4 << 20) + rng.randrange(0, 4096),
        shmem_kb=100_000 + rng.randrange(0, 16),
        anon_pages_kb=(8 << 20) + rng.randrange(0, 4096),
        slab_reclaimable_kb=300_000 + rng.randrange(0, 256),
        slab_unreclaimable_kb=100_000 + rng.randrange(0, 64),
        kernel_stack_kb=16_000 + 16 * rng.randrange(0, 4),
        page_tables_kb=60_000 + 4 * rng.randrange(0, 16),
    )
    return dataclasses.replace(
        snap,
        meminfo=mi,
        groups=aggregate_groups(snap.processes, charges),
        host=host_memory(mi, snap.processes),
    )


async def simulate(
    path: str,
    hours: float,
    pattern: str,
    interval: float = INTERVAL,
    seed: int = 1,
    sizes: list[int] | None = None,
    groups: bool = True,
) -> int:
    """Write `hours` of snapshots; returns how many. ``sizes`` receives the bytes in use every hour."""
    rng = random.Random(seed)
    procs = [_proc(pid, rng) for pid in range(1000, 1000 + N_PROC)]
    busy = set(range(0, N_PROC, 20))  # 5% always change
    p_rest = (0.10 - len(busy) / N_PROC) / (1 - len(busy) / N_PROC)
    w = await StoreWriter.open(path, StorageConfig())
    n = int(hours * 3600 / interval)
    mi = MemInfo(32 << 20, 16 << 20, 8 << 20, 7 << 20)
    health = BpfHealth("active")
    for i in range(n):
        if pattern == "uniform":
            changed = rng.sample(range(N_PROC), N_PROC // 10)
        elif pattern == "active":
            changed = list(range(0, N_PROC, 10))
        else:
            changed = [j for j in range(N_PROC) if j in busy or rng.random() < p_rest]
        for j in changed:
            procs[j] = _change(procs[j], rng)
        snap = Snapshot(
            ts=T0 + i * interval, mono=i * interval, processes=tuple(procs), meminfo=mi, bpf=health
        )
        if groups:
            snap = _with_groups(snap, i, rng)
        await w.write(snap)
        if sizes is not None and (i + 1) % int(3600 / interval) == 0:
            pages = await (await w._db.execute("PRAGMA page_count")).fetchone()
            free = await (await w._db.execute("PRAGMA freelist_count")).fetchone()
            size = await (await w._db.execute("PRAGMA page_size")).fetchone()  # 1024 for new databases
            sizes.append((pages[0] - free[0]) * size[0])
        for j in changed:  # deltas are per interval
            if procs[j].d_mmap_count:
                procs[j] = dataclasses.replace(procs[j], d_mmap_count=0, d_mmap_bytes=0)
    await w.close()
    return n


def naive_bytes_per_row(tmp: str, snaps: int = 120) -> float:
    """One row per process per snapshot: (ts, pid, start_ticks, 11 values), index (pid, start_ticks, ts)."""
    path = os.path.join(tmp, "naive.db")
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE samples (ts INTEGER, pid INTEGER, start_ticks INTEGER, rss_kb INTEGER, anon_kb INTEGER,"
        " swap_kb INTEGER, vm_kb INTEGER, hwm_kb INTEGER, mmap_count INTEGER, mmap_bytes INTEGER,"
        " munmap_count INTEGER, munmap_bytes INTEGER, brk_count INTEGER, brk_bytes INTEGER)"
    )
    db.execute("CREATE INDEX samples_pid ON samples (pid, start_ticks, ts)")
    rng = random.Random(2)
    procs = [_proc(pid, rng) for pid in range(1000, 1000 + N_PROC)]
    for i in range(snaps):
        for j in rng.sample(range(N_PROC), N_PROC // 10):
            procs[j] = _change(procs[j], rng)
        db.executemany(
            "INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    int(T0) + 3 * i,
                    p.pid,
                    p.start_ticks,
                    p.rss_kb,
                    p.anon_kb,
                    p.swap_kb,
                    p.vm_kb,
                    p.hwm_kb,
                    p.mmap_count,
                    p.mmap_bytes,
                    p.munmap_count,
                    p.munmap_bytes,
                    p.brk_count,
                    p.brk_bytes,
                )
                for p in procs
            ],
        )
    db.commit()
    db.close()
    return os.path.getsize(path) / (snaps * N_PROC)


def _median_ms(fn, repeat: int = 7) -> float:  # noqa: ANN001 - any callable
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _wall_ms(db: str, now: float, *args: str) -> float:
    exe = str(REPO / ".venv" / "bin" / "memwatchctl")
    env = {**os.environ, "MEMWATCHCTL_NOW": str(now), "TZ": "UTC"}
    times = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([exe, "--db", db, *args], env=env, check=True, capture_output=True)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def run(quick: bool, groups: bool = True, storage_only: bool = False) -> list[dict]:
    """Benchmark rows for scripts/bench."""
    rows: list[dict] = []
    hours = 3.0 if quick else 24.0
    with tempfile.TemporaryDirectory() as tmp:
        for pattern in ("active", "skewed", "uniform"):
            path = os.path.join(tmp, f"{pattern}.db")
            t = time.perf_counter()
            sizes: list[int] = []
            n = asyncio.run(simulate(path, hours, pattern, sizes=sizes, groups=groups))
            write_s = time.perf_counter() - t
            size = os.path.getsize(path)
            if quick:  # the head (~1 h uncompacted) is a fixed cost: extrapolate the hourly growth to a day
                day = size + (sizes[-1] - sizes[-2]) * (24 - hours)
                note = f"{hours:g} h simulated ({size / 1e6:.1f} MB), extrapolated to 24 h by the last hour"
                value = day / (DAY / INTERVAL * N_PROC)
            else:
                note = f"24 h simulated: {size / 1e6:.1f} MB for {n} snapshots"
                value = size / (n * N_PROC)
            rows.append(
                {
                    "benchmark": "storage",
                    "config": f"memwatchd, {pattern} 10% changing"
                    + ("" if groups else ", no group/host series"),
                    "value": round(value, 3),
                    "unit": "bytes/process-sample",
                    "target": "<= 2",
                    "note": note,
                }
            )
            rows.append(
                {
                    "benchmark": "storage",
                    "config": f"memwatchd write, {pattern}",
                    "value": round(write_s / n * 1000, 2),
                    "unit": "ms/snapshot",
                    "target": "",
                    "note": "writer incl. compaction, 1,000 processes",
                }
            )
            if pattern == "active" and not storage_only:
                last = T0 + (n - 1) * INTERVAL
                with StoreReader(path) as r:
                    top_ms = _median_ms(r.top)
                rows.append(
                    {
                        "benchmark": "top",
                        "config": "query (in process)",
                        "value": round(top_ms, 1),
                        "unit": "ms",
                        "target": "<= 50",
                    }
                )
                rows.append(
                    {
                        "benchmark": "top",
                        "config": "whole command (memwatchctl top)",
                        "value": round(_wall_ms(path, last + 1, "top"), 1),
                        "unit": "ms",
                        "target": "",
                    }
                )
        if storage_only:
            return rows
        rows.append(
            {
                "benchmark": "storage",
                "config": "naive one row per sample",
                "value": round(naive_bytes_per_row(tmp), 1),
                "unit": "bytes/process-sample",
                "target": "",
                "note": "rowid table + (pid, start_ticks, ts) index",
            }
        )
        # 7 days of history: simulated with a 60 s interval (300 s when quick) so it runs in about a minute;
        # the tiers hold the same number of chunks per process as at 3 s (one per hour and tier), so the
        # query does the same work.
        path = os.path.join(tmp, "week.db")
        days = 7
        week_interval = 300.0 if quick else 60.0
        n = asyncio.run(simulate(path, days * 24, "active", interval=week_interval))
        last = T0 + (n - 1) * week_interval
        span = last - T0
        with StoreReader(path) as r:

            def q(tier: int | None = None) -> None:
                procs = r.find_processes(pid=1000, since=last - span, until=last)  # a busy process
                r.history(procs, last - span, last, tier)

            auto_ms = _median_ms(q)
            minute_ms = _median_ms(lambda: q(1), repeat=3)
        label = f"{span / DAY:.2g} days"
        rows.append(
            {
                "benchmark": "history --pid",
                "config": f"query over {label} (auto: hour tier)",
                "value": round(auto_ms, 1),
                "unit": "ms",
                "target": "<= 100",
            }
        )
        rows.append(
            {
                "benchmark": "history --pid",
                "config": f"query over {label}, --tier minute",
                "value": round(minute_ms, 1),
                "unit": "ms",
                "target": "",
            }
        )
        rows.append(
            {
                "benchmark": "history --pid",
                "config": "whole command (--json)",
                "value": round(
                    _wall_ms(path, last + 1, "history", "--pid", "1000", "--since", f"{span:.0f}s", "--json"),
                    1,
                ),
                "unit": "ms",
                "target": "",
            }
        )
    return rows


if __name__ == "__main__":
    out = run("--quick" in sys.argv, "--no-groups" not in sys.argv, "--storage-only" in sys.argv)
    w = [
        max(
            len(str(r.get(k, "")))
            for r in [*out, {k: k for k in ("benchmark", "config", "value", "unit", "target")}]
        )
        for k in ("benchmark", "config", "value", "unit", "target")
    ]
    fmt = "  ".join(f"{{:{n}}}" for n in w)
    print(fmt.format("benchmark", "config", "value", "unit", "target"))
    for r in out:
        print(fmt.format(*(str(r.get(k, "")) for k in ("benchmark", "config", "value", "unit", "target"))))
    print(json.dumps(out, indent=1))
