"""The write pump: the one task that feeds snapshots to the store, with a bounded backlog and retention.

Sampling never waits for the database. Snapshots queue in memory; while the database cannot be written
(disk full, locked, I/O error) the pump keeps up to `backlog` of them, drops the oldest beyond that, says so
once, and retries every `retry_s()` seconds. Retention runs every `prune_every_s` after a commit, at a wall
time that never runs ahead of the monotonic clock (see `RetentionClock`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from memwatchd.daemon.clock import SYSTEM_CLOCK, Clock
from memwatchd.models import Snapshot

log = logging.getLogger("memwatchd")

WRITE_BACKLOG = 200  # snapshots kept in memory while the database cannot be written (disk full)
PRUNE_EVERY_S = 60.0


class SnapshotStore(Protocol):
    """What the pump needs from the store (StoreWriter)."""

    async def write(self, snap: Snapshot) -> None: ...

    async def prune(self, now: float) -> object: ...


class RetentionClock:
    """The wall time retention cuts at: it advances no faster than the monotonic clock.

    A wall-clock step forward (NTP correcting a wrong clock, an operator's date -s) would otherwise age
    every stored row at once and the next prune would delete up to the whole history. A step back is
    followed at once (it only keeps rows longer).
    """

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self._ref: tuple[float, float] | None = None  # (wall, mono) of the last reading

    def now(self) -> float:
        wall, mono = self.clock.wall(), self.clock.mono()
        if self._ref is not None:
            ref_wall, ref_mono = self._ref
            wall = min(wall, ref_wall + (mono - ref_mono))
        self._ref = (wall, mono)
        return wall


class WritePump:
    """Bounded backlog of snapshots and the loop that writes them, one at a time, in order.

    on_commit(snap) is awaited after each successful write (the daemon records its status there).
    """

    def __init__(
        self,
        store: SnapshotStore,
        *,
        retry_s: Callable[[], float],
        on_commit: Callable[[Snapshot], Awaitable[None]] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        backlog: int = WRITE_BACKLOG,
        prune_every_s: float = PRUNE_EVERY_S,
    ) -> None:
        self.store = store
        self.retry_s = retry_s
        self.on_commit = on_commit
        self.clock = clock
        self.retention = RetentionClock(clock)
        self.prune_every_s = prune_every_s
        self.queue: deque[Snapshot] = deque(maxlen=backlog)
        self._more = asyncio.Event()
        self.committed = 0
        self.dropped = 0
        self.write_errors = 0
        self.write_failing: str | None = None
        self.last_write_ts: float | None = None

    def put(self, snap: Snapshot) -> None:
        """Queue one snapshot; when the backlog is full the oldest is dropped (and counted)."""
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1  # the disk stayed unwritable for `backlog` intervals: the oldest goes
        self.queue.append(snap)
        self._more.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Write until `stop` is set and the backlog is empty (or, while writes fail, until `stop`)."""
        # the first prune follows the first write: after a long downtime retention applies at once
        last_prune = self.clock.mono() - self.prune_every_s
        while True:
            if not self.queue:
                if stop.is_set():
                    return
                await self._wait_for_more(stop)
                continue
            snap = self.queue[0]
            if not await self._write(snap):
                if stop.is_set():
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.retry_s())
                continue
            if self.queue and self.queue[0] is snap:
                self.queue.popleft()
            if self.on_commit is not None:
                await self.on_commit(snap)
            if self.clock.mono() - last_prune >= self.prune_every_s:
                last_prune = self.clock.mono()
                await self.prune()

    async def prune(self) -> None:
        """Apply retention once (errors are logged: the next prune retries)."""
        try:
            await self.store.prune(self.retention.now())
        except Exception as e:
            log.warning("retention prune failed: %s", e)

    async def _wait_for_more(self, stop: asyncio.Event) -> None:
        self._more.clear()
        stopping = asyncio.ensure_future(stop.wait())
        more = asyncio.ensure_future(self._more.wait())
        await asyncio.wait({stopping, more}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        more.cancel()

    async def _write(self, snap: Snapshot) -> bool:
        try:
            await self.store.write(snap)
        except Exception as e:
            if self.write_failing is None:
                log.error(
                    "cannot write to the database (%s); keeping up to %d snapshots in memory, retrying",
                    e,
                    self.queue.maxlen,
                )
            self.write_failing = str(e)
            self.write_errors += 1
            return False
        self.committed += 1
        self.last_write_ts = snap.ts
        if self.write_failing is not None:
            log.info("database writes resumed")
            self.write_failing = None
        return True
