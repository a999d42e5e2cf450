"""Memory the daemon keeps per idle process downstream of the scan: merge, store writer, rules, groups.

Issue 13's target is ≤ 40 MB anonymous memory for the whole daemon at 10,000 processes with the shipped rules;
about 21 MB of that is fixed (interpreter, modules, SQLite, allocator), so what each process costs decides
it. This measures the bytes the real components keep per process (tracemalloc, the difference between 200
and 2,200 idle processes, so fixed costs cancel) after a few cycles of unchanged processes, fed as the
collectors feed them (change sets). The scan's own cache per process is measured in tests/test_taskscan.py.

Measured before this test's bound was set: 1,270 B per process (a copy of every stored value per identity in
the writer, a key tuple per identity in each of writer, rules and groups, a float per record for dt_s).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import tracemalloc
from pathlib import Path

from memwatchd.alerts.engine import AlertEngine
from memwatchd.alerts.scopes import is_scoped
from memwatchd.config import StorageConfig, load_config
from memwatchd.group_tracker import GroupTracker
from memwatchd.merge import Merger
from memwatchd.models import MemInfo, ProcSample, ProcScan
from memwatchd.store.writer import StoreWriter

REPO = Path(__file__).resolve().parent.parent
MEM = MemInfo(mem_total_kb=16_000_000, mem_available_kb=8_000_000, swap_total_kb=0, swap_free_kb=0)
BOUND = 1000  # bytes per idle process


def _samples(n: int) -> tuple[ProcSample, ...]:
    """n idle processes as a collector reports them: values are distinct int objects, as parsed."""
    out = []
    for i in range(n):
        pid = 1000 + i
        rss = int(str(900 + i % 700))  # a fresh int object, as from a parse
        out.append(
            ProcSample(
                pid=pid,
                start_ticks=int(str(5_000_000 + i)),
                comm="sleeper",
                ppid=999,
                state="S",
                rss_kb=rss,
                vm_kb=rss * 4,
                hwm_kb=rss + 8,
                anon_kb=rss // 2 + 300,
                swap_kb=0,
                unit="bench.service",
                cgroup="/system.slice/bench.service",
            )  # fmt: skip
        )
    return tuple(out)


def _kept(tmp_path: Path, n: int) -> int:
    """Bytes the components keep for n idle processes after 8 cycles (the samples themselves excluded)."""
    rules = [r for r in load_config(REPO / "etc" / "memwatchd.toml").rules if not is_scoped(r)]
    samples = _samples(n)
    db = tmp_path / f"m{n}.db"

    async def run() -> int:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        merger, tracker, engine = Merger(), GroupTracker(), AlertEngine(rules, [], 0)
        writer = await StoreWriter.open(str(db), StorageConfig(path=str(db)))
        try:
            for c in range(8):
                sc = ProcScan(samples=samples, meminfo=MEM, boot_time=1_700_000_000.0, clk_tck=100, seq=c + 1)
                if c:
                    sc = dataclasses.replace(sc, base_seq=c, changed=())
                snap = merger.merge(sc, None, ts=1_800_000_000.0 + 3 * c, mono=100.0 + 3 * c)
                groups, host = tracker.update(snap, {})
                snap = dataclasses.replace(snap, groups=groups, host=host)
                merger.prev = snap
                engine.observe(snap)
                await writer.write(snap)
            del snap, sc, groups, host
            gc.collect()
            return tracemalloc.get_traced_memory()[0] - before
        finally:
            await writer.close()

    return asyncio.run(run())


def test_bytes_kept_per_idle_process_downstream_of_the_scan(tmp_path: Path) -> None:
    tracemalloc.start()
    try:
        small = _kept(tmp_path, 200)
        large = _kept(tmp_path, 2200)
    finally:
        tracemalloc.stop()
    per = (large - small) / 2000
    assert per <= BOUND, f"{per:.0f} B kept per idle process (bound {BOUND})"
