"""The write pump and the retention clock, in-process: real SQLite files, a clock the test drives."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from memwatchd.config import StorageConfig
from memwatchd.daemon.pump import RetentionClock, WritePump
from memwatchd.models import BpfHealth, MemInfo, Snapshot
from memwatchd.store.writer import StoreWriter
from tests.factories import process_snapshot

T0 = 1_700_000_000.0
HOUR = 3600.0


class StepClock:
    """A clock that moves only when the test says so; wall and monotonic can be stepped apart."""

    def __init__(self, wall: float, mono: float = 1000.0) -> None:
        self._wall = wall
        self._mono = mono

    def wall(self) -> float:
        return self._wall

    def mono(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += seconds

    def step_wall(self, seconds: float) -> None:
        self._wall += seconds


def snap(ts: float, rss_kb: int = 1000) -> Snapshot:
    kb = rss_kb
    p = process_snapshot(pid=7, start_ticks=70, comm="w", rss_kb=kb, anon_kb=kb, swap_kb=0, vm_kb=kb)
    return Snapshot(
        ts=ts,
        mono=ts - T0,
        processes=(p,),
        meminfo=MemInfo(8 << 20, 4 << 20, 0, 0),
        bpf=BpfHealth("disabled: test"),
    )


def stored_ts(db: Path) -> list[float]:
    with sqlite3.connect(db) as c:
        return [r[0] / 1000 for r in c.execute("SELECT ts_ms FROM snapshots ORDER BY id")]


def test_retention_clock_follows_the_monotonic_clock_not_a_wall_step_forward() -> None:
    clock = StepClock(T0)
    rc = RetentionClock(clock)
    assert rc.now() == T0
    clock.advance(60)
    assert rc.now() == T0 + 60
    clock.step_wall(+HOUR)  # NTP or date -s: an hour forward at once
    assert rc.now() == T0 + 60  # no time passed on the monotonic clock
    clock.advance(10)
    assert rc.now() == T0 + 70
    clock.step_wall(-2 * HOUR)  # a step back is followed at once (it only keeps rows longer)
    assert rc.now() == T0 + 70 - HOUR


async def _pump_run(pump: WritePump, snaps: list[Snapshot], clock: StepClock, step: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(pump.run(stop))
    for s in snaps:
        pump.put(s)
        await asyncio.sleep(0)
        while pump.queue:  # let the pump write it before the clock moves on
            await asyncio.sleep(0.001)
        clock.advance(step)
    stop.set()
    await asyncio.wait_for(task, 10)


def test_pump_writes_in_order_and_a_wall_step_does_not_purge_the_history(tmp_path: Path) -> None:
    """raw retention 1 h; a +1 h wall step would make every row look expired to a wall-clock prune."""
    db = tmp_path / "m.db"
    cfg = StorageConfig(path=str(db), raw_retention_s=HOUR, minute_retention_s=HOUR, retention_s=HOUR)
    clock = StepClock(T0)
    committed: list[float] = []

    async def go() -> None:
        store = await StoreWriter.open(str(db), cfg)

        async def on_commit(s: Snapshot) -> None:
            committed.append(s.ts)

        pump = WritePump(store, retry_s=lambda: 0.01, on_commit=on_commit, clock=clock, prune_every_s=5.0)
        first = [snap(T0 + 10 * i) for i in range(30)]  # 5 minutes of history
        await _pump_run(pump, first, clock, 10.0)
        assert pump.committed == 30 and pump.dropped == 0 and pump.write_failing is None
        clock.step_wall(+HOUR)
        later = [snap(T0 + HOUR + 300 + 10 * i) for i in range(5)]
        await _pump_run(pump, later, clock, 10.0)
        await store.close()

    asyncio.run(go())
    ts = stored_ts(db)
    assert ts[:30] == [T0 + 10 * i for i in range(30)], "nothing of the first 5 minutes was purged"
    assert len(ts) == 35 and committed == ts


def test_pump_prunes_what_is_past_retention_on_the_monotonic_clock(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    cfg = StorageConfig(path=str(db), raw_retention_s=60.0, minute_retention_s=60.0, retention_s=60.0)
    clock = StepClock(T0)

    async def go() -> None:
        store = await StoreWriter.open(str(db), cfg)
        pump = WritePump(store, retry_s=lambda: 0.01, clock=clock, prune_every_s=5.0)
        await _pump_run(pump, [snap(T0 + 10 * i) for i in range(30)], clock, 10.0)
        await store.close()

    asyncio.run(go())
    ts = stored_ts(db)
    # the last prune ran at the last commit (T0 + 290): rows older than 60 s before it are gone
    assert ts and min(ts) >= T0 + 290 - 60 - 10 and max(ts) == T0 + 290


def test_backlog_is_bounded_and_counts_what_it_drops(tmp_path: Path) -> None:
    """While nothing is written (here: the pump is not running yet), the oldest snapshots go first."""

    async def go() -> None:
        store = await StoreWriter.open(str(tmp_path / "m.db"), StorageConfig(path=str(tmp_path / "m.db")))
        pump = WritePump(store, retry_s=lambda: 0.01, backlog=5, clock=StepClock(T0 + 10))
        for i in range(8):
            pump.put(snap(T0 + i))
        assert pump.dropped == 3 and [s.ts for s in pump.queue] == [T0 + i for i in range(3, 8)]
        stop = asyncio.Event()
        stop.set()  # stop with a backlog: the pump still writes it all before returning
        await asyncio.wait_for(pump.run(stop), 10)
        assert pump.committed == 5 and not pump.queue
        await store.close()

    asyncio.run(go())
    assert stored_ts(tmp_path / "m.db") == [T0 + i for i in range(3, 8)]


def test_a_failing_write_is_kept_retried_and_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Real SQLite errors (the connection turned query-only): kept in the backlog, retried, said once."""
    db = tmp_path / "m.db"
    caplog.set_level(logging.INFO, logger="memwatchd")

    async def go() -> None:
        store = await StoreWriter.open(str(db), StorageConfig(path=str(db)))
        pump = WritePump(store, retry_s=lambda: 0.01, clock=StepClock(T0 + 10))
        stop = asyncio.Event()
        task = asyncio.create_task(pump.run(stop))
        pump.put(snap(T0))
        while pump.committed < 1:
            await asyncio.sleep(0.005)
        await store._db.execute("PRAGMA query_only = 1")  # every write now fails inside SQLite
        pump.put(snap(T0 + 1))
        pump.put(snap(T0 + 2))
        while pump.write_errors < 3:
            await asyncio.sleep(0.005)
        assert pump.write_failing and pump.committed == 1 and len(pump.queue) == 2
        await store._db.execute("PRAGMA query_only = 0")  # the database is writable again
        while pump.queue:
            await asyncio.sleep(0.005)
        assert pump.write_failing is None and pump.committed == 3
        stop.set()
        await asyncio.wait_for(task, 10)
        await store.close()

    asyncio.run(go())
    errors = [r for r in caplog.records if "cannot write to the database" in r.getMessage()]
    assert len(errors) == 1, "said once, not per retry"
    assert any("database writes resumed" in r.getMessage() for r in caplog.records)
    assert stored_ts(db) == [T0, T0 + 1, T0 + 2]


def test_a_churning_host_is_committed_before_the_window_ends(tmp_path: Path) -> None:
    """Batching holds a quiet host's snapshots for the commit window; snapshots carrying thousands of new and
    exit records (process churn) are committed at once: holding 10 intervals of them raised the heap's peak
    by ~25 MB at 1,300 exits/s (memory the allocator then kept)."""
    from memwatchd.daemon.pump import MAX_QUEUED_RECORDS

    db = tmp_path / "m.db"
    clock = StepClock(T0, mono=0.0)  # snapshots here have mono = ts - T0

    def churn(ts: float, n: int) -> Snapshot:
        procs = tuple(
            process_snapshot(pid=100 + i, start_ticks=int(ts), comm="c", rss_kb=10) for i in range(n)
        )
        return Snapshot(ts=ts, mono=ts - T0, processes=procs, meminfo=None, bpf=BpfHealth("off"), fresh=procs)

    async def go() -> None:
        store = await StoreWriter.open(str(db), StorageConfig(path=str(db)))
        pump = WritePump(store, retry_s=lambda: 0.01, clock=clock, commit_window_s=lambda: 30.0)
        stop = asyncio.Event()
        task = asyncio.create_task(pump.run(stop))
        pump.put(snap(T0))  # the first snapshot of a run is committed at once
        for _ in range(100):
            await asyncio.sleep(0.01)
        assert pump.committed == 1
        clock.advance(3.0)
        pump.put(snap(T0 + 3))  # quiet: waits for the window
        for _ in range(30):
            await asyncio.sleep(0.01)
        assert pump.committed == 1 and len(pump.queue) == 1
        clock.advance(3.0)
        pump.put(churn(T0 + 6, MAX_QUEUED_RECORDS))  # churn: due at once, with what waits before it
        for _ in range(300):
            await asyncio.sleep(0.01)
            if pump.committed == 3:
                break
        assert pump.committed == 3 and not pump.queue
        stop.set()
        await asyncio.wait_for(task, 10)
        await store.close()

    asyncio.run(go())
