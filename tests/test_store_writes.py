"""Issue 18: what the store writes grows with the number of changes, not with the number of processes.

Measured on real SQLite files written by the real StoreWriter: the WAL's checkpointing is turned off, so
every page a commit writes is appended as a frame and the -wal file's growth is exactly the bytes written
(each frame a page plus its 24-byte header; a checkpoint would write the same pages once more).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

from memwatchd.config import StorageConfig
from memwatchd.store.reader import StoreReader
from memwatchd.store.schema import TIER_HOUR, TIER_MINUTE, TIER_RAW
from memwatchd.store.writer import StoreWriter
from tests.test_store import T0, proc, snap

PERIOD_MS = 60_000  # a compaction period of a minute: several periods in a short test
INTERVAL_S = 3.0
BATCH = 10  # the daemon commits 10 snapshots per transaction (daemon/pump.py)


def _snaps(n_idle: int, first: int, count: int) -> list:
    """Snapshots `first`..`first + count - 1` of a host of n_idle idle processes and one that changes."""
    out = []
    for i in range(first, first + count):
        procs = [proc(p, 1000 + p % 7) for p in range(1, n_idle + 1)]
        procs.append(proc(100_000, 5000 + i))  # the one that always changes (the daemon itself)
        out.append(snap(T0 + INTERVAL_S * i, procs))
    return out


async def _wal_growth(db: Path, n_idle: int, warm: int, measured: int) -> int:
    """Bytes appended to the WAL over `measured` snapshots, after `warm` snapshots that set the host up."""
    w = await StoreWriter.open(str(db), StorageConfig(path=str(db)))
    w.period_ms = PERIOD_MS
    w.margin_ms = PERIOD_MS // 2
    await w._db.execute("PRAGMA wal_autocheckpoint = 0")
    snaps = _snaps(n_idle, 0, warm + measured)
    for k in range(0, warm, BATCH):
        await w.write_batch(snaps[k : k + BATCH])
    before = os.stat(f"{db}-wal").st_size
    for k in range(warm, warm + measured, BATCH):
        await w.write_batch(snaps[k : k + BATCH])
    grown = os.stat(f"{db}-wal").st_size - before
    await w.close()
    return grown


def test_idle_processes_cost_no_writes_across_compaction_periods(tmp_path: Path) -> None:
    """10x the idle processes over 4 keyframe/compaction periods: the same bytes written (not 10x)."""
    per_period = PERIOD_MS // 1000 // int(INTERVAL_S)
    warm, measured = 2 * per_period, 4 * per_period  # after the first compaction; 4 more periods
    small = asyncio.run(_wal_growth(tmp_path / "small.db", 200, warm, measured))
    large = asyncio.run(_wal_growth(tmp_path / "large.db", 2000, warm, measured))
    assert small > 0
    # before issue 18's v5 format: every period wrote a keyframe row and three chunks per live process,
    # so 10x the processes wrote ~8x the bytes (e.g. 1.5 MB against 0.19 MB)
    assert large < 1.3 * small + 64 * 1024, (small, large)


def test_idle_processes_read_back_identically_across_many_periods(tmp_path: Path) -> None:
    """History of processes idle across many periods (some changing once, some coming and going): the
    same rows in every tier as the snapshots say, before and after compaction."""
    db = tmp_path / "m.db"
    snaps = []
    n = 200  # 10 minutes at 3 s: 10 periods of a minute
    for i in range(n):
        procs = [proc(1, 1000), proc(2, 2000 if i < 77 else 2100)]  # idle; one change in period 3
        if 30 <= i < 150:
            procs.append(proc(3, 300))  # born in period 2, idle, vanishes in period 8
        procs.append(proc(4, 4000 + (i // 25)))  # changes every 25 snapshots
        snaps.append(snap(T0 + INTERVAL_S * i, procs))

    async def go() -> None:
        w = await StoreWriter.open(str(db), StorageConfig(path=str(db)))
        w.period_ms, w.margin_ms = PERIOD_MS, PERIOD_MS // 2
        for k in range(0, n, BATCH):
            await w.write_batch(snaps[k : k + BATCH])
        await w.close()

    asyncio.run(go())
    c = sqlite3.connect(db)
    assert c.execute("SELECT value FROM meta WHERE key = 'compacted_through'").fetchone()[0] > 150
    c.close()
    end = snaps[-1].ts
    with StoreReader(str(db)) as r:
        for pid in (1, 2, 3, 4):
            truth = [(s.ts, p) for s in snaps for p in s.processes if p.pid == pid]
            procs = r.find_processes(pid=pid)
            rows = r.history(procs, T0 - 10, end + 10, TIER_RAW)
            expect = [
                (t, p.rss_kb)
                for k, (t, p) in enumerate(truth)
                if k in (0, len(truth) - 1) or p.rss_kb != truth[k - 1][1].rss_kb
            ]
            assert [(x.ts, x.rss_kb) for x in rows] == expect, pid
            # a range that starts in a period where the process did not change
            mid = r.history(procs, T0 + 130 * INTERVAL_S, T0 + 140 * INTERVAL_S, TIER_RAW)
            inside = [(t, p.rss_kb) for t, p in truth if T0 + 390 <= t <= T0 + 420]
            if inside:
                assert (mid[0].ts, mid[0].rss_kb) == inside[0], pid
                assert (mid[-1].ts, mid[-1].rss_kb) == inside[-1], pid
            for tier, bucket_s in ((TIER_MINUTE, 60), (TIER_HOUR, 3600)):
                got = r.history(procs, T0 - 10, end + 10, tier)
                want: dict[float, list[int]] = {}
                for t, p in truth:
                    want.setdefault(float(int(t // bucket_s) * bucket_s), []).append(p.rss_kb)
                assert [x.ts for x in got] == sorted(want), (pid, tier)
                for x in got:
                    v = want[x.ts]
                    assert x.samples == len(v), (pid, tier, x.ts)
                    assert (x.rss_min_kb, x.rss_max_kb, x.rss_kb) == (min(v), max(v), v[-1]), (pid, tier)
                    assert x.rss_avg_kb is not None and abs(x.rss_avg_kb - sum(v) / len(v)) < 1e-3
        top = {t.pid: t for t in r.top().processes}
        assert sorted(top) == [1, 2, 4] and top[1].rss_kb == 1000 and top[2].rss_kb == 2100
        # growth over the window: none for the idle process (no head row at all), the held values' for
        # the one that changed before the window
        assert top[1].growth_kb_per_h == 0.0 and top[2].growth_kb_per_h == 0.0
        assert top[4].growth_kb_per_h is not None and top[4].growth_kb_per_h > 0


def _check_history(db: Path, snaps: list, label: str) -> None:
    """Every tier of every process reads exactly what the snapshots say (changes, carried values, rollups)."""
    end = snaps[-1].ts
    pids = sorted({p.pid for s in snaps for p in s.processes})
    with StoreReader(str(db)) as r:
        for pid in pids:
            truth = [(s.ts, p) for s in snaps for p in s.processes if p.pid == pid]
            procs = r.find_processes(pid=pid)
            rows = r.history(procs, T0 - 10, end + 10, TIER_RAW)
            expect = [
                (t, p.rss_kb, p.mmap_count)
                for k, (t, p) in enumerate(truth)
                if k in (0, len(truth) - 1) or p.rss_kb != truth[k - 1][1].rss_kb
            ]
            assert [(x.ts, x.rss_kb, x.mmap_count) for x in rows] == expect, (label, pid)
            for tier, bucket_s in ((TIER_MINUTE, 60), (TIER_HOUR, 3600)):
                got = r.history(procs, T0 - 10, end + 10, tier)
                want: dict[float, list[int]] = {}
                for t, p in truth:
                    want.setdefault(float(int(t // bucket_s) * bucket_s), []).append(p.rss_kb)
                assert [(x.ts, x.samples) for x in got] == [(b, len(v)) for b, v in sorted(want.items())], (
                    label,
                    pid,
                    tier,
                )
                for x in got:
                    v = want[x.ts]
                    assert (x.rss_min_kb, x.rss_max_kb, x.rss_kb) == (min(v), max(v), v[-1]), (label, pid)
                    assert x.rss_avg_kb is not None and abs(x.rss_avg_kb - sum(v) / len(v)) < 1e-3


def test_a_v4_database_opens_migrates_and_reads_the_same(tmp_path: Path) -> None:
    """tests/fixtures/store_v4.db was written by the schema-4 writer (full keyframes, a chunk per live
    process per period): this version reads it the same, migrates it, and the history written after the
    migration (no rows for idle processes) reads on seamlessly."""
    import shutil

    from memwatchd.store.schema import SCHEMA_VERSION
    from tests.fixtures import store_v4

    db = tmp_path / "m.db"
    shutil.copy(Path(__file__).parent / "fixtures" / "store_v4.db", db)
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == 4
    old = store_v4.scenario(proc, snap, 0, store_v4.V4_SNAPSHOTS)
    _check_history(db, old, "v4 as written")
    new = store_v4.scenario(proc, snap, store_v4.V4_SNAPSHOTS, 150)

    async def go() -> None:
        w = await StoreWriter.open(str(db), StorageConfig(path=str(db)))
        w.period_ms, w.margin_ms = store_v4.PERIOD_MS, store_v4.PERIOD_MS // 2
        for k in range(0, len(new), BATCH):
            await w.write_batch(new[k : k + BATCH])
        await w.close()

    asyncio.run(go())
    c = sqlite3.connect(db)
    assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # the periods after the migration stored chunks only for processes that changed in them
    per_period = c.execute(
        "SELECT snap0, count(DISTINCT proc) FROM chunks WHERE snap0 IS NOT NULL GROUP BY snap0"
    ).fetchall()
    c.close()
    # (the v4 head period and the restart's first period start with every process)
    assert len(per_period) > 5 and max(n for _, n in per_period[2:]) <= 2, per_period
    _check_history(db, old + new, "after the migration")
