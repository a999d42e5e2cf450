"""The write pump: the one task that feeds snapshots to the store, with a bounded backlog and retention.

Sampling never waits for the database. Snapshots queue in memory and are committed together, one
transaction holding the snapshots and the daemon's status:

- snapshots wait up to `commit_window_s()` and are then committed together: a host where little changes
  costs one commit (a few pages) per window instead of one per interval, and what changes more often
  than that is written once per window. A kill -9 loses at most that window of samples
  (docs/reliability.md states it);
- the first snapshot of a run and snapshots with OOM kills (store.is_urgent) are committed at once, with
  whatever waits before them.

While the database cannot be written the pump keeps up to `backlog` snapshots, drops the oldest beyond that,
says so once (and once when it clears), and retries every `retry_s()` seconds. An error that is not about
the file system (a constraint or a corrupt page: retrying the same data fails the same way) makes the pump
write one snapshot per transaction; a snapshot that fails POISON_ATTEMPTS times is dropped and counted
(`poisoned_snapshots`), so one bad snapshot never blocks the ones after it. When the database could not be
opened at start (a full disk), `opener` is retried the same way. Retention runs every `prune_every_s` after
a commit, at a wall time that never runs ahead of the monotonic clock (see `RetentionClock`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from memwatchd.daemon.clock import SYSTEM_CLOCK, Clock
from memwatchd.models import Snapshot

log = logging.getLogger("memwatchd")

WRITE_BACKLOG = 200  # snapshots kept in memory while the database cannot be written (disk full)
PRUNE_EVERY_S = 600.0  # retention applies within 10 minutes; each prune is a few commits
POISON_ATTEMPTS = 2  # a snapshot that fails this often with a non-transient error is dropped
MAX_BATCH = 100  # snapshots per transaction at most (a long backlog drains in a few commits)
# Changed or exited process records waiting in the queue that make a commit due at once. Batching is for
# hosts where little changes; under process churn every snapshot carries thousands of new and exit records,
# and holding 10 intervals of them (~2 KB per exit) raised the heap's peak by ~25 MB for 1,300 exits/s:
# memory the allocator then keeps (its arenas stay mapped while any object in them lives).
MAX_QUEUED_RECORDS = 2000


StatusFields = Mapping[str, str | int | float | None]


def _records(snap: Snapshot) -> int:
    """The process records a queued snapshot holds on its own (its changed ones and its exits)."""
    return len(snap.fresh if snap.fresh is not None else snap.processes) + len(snap.exits)


class SnapshotStore(Protocol):
    """What the pump needs from the store (StoreWriter)."""

    async def write_batch(
        self, snaps: Sequence[Snapshot], status: StatusFields | None = None, clear_status: Sequence[str] = ()
    ) -> None: ...

    def is_urgent(self, snap: Snapshot) -> bool: ...

    def skip_snapshot_id(self) -> None: ...

    async def set_status(self, **fields: str | int | float | None) -> None: ...

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
    """Bounded backlog of snapshots and the loop that commits them, in order, in batches.

    on_commit(snap) is awaited after each snapshot's commit; status(committed) gives the status key/values
    written in the same transaction as the snapshots (committed: the count after this commit).
    """

    def __init__(
        self,
        store: SnapshotStore | None,
        *,
        retry_s: Callable[[], float],
        on_commit: Callable[[Snapshot], Awaitable[None]] | None = None,
        status: Callable[[int], StatusFields] | None = None,
        opener: Callable[[], Awaitable[SnapshotStore]] | None = None,
        commit_window_s: Callable[[], float] = lambda: 0.0,
        clock: Clock = SYSTEM_CLOCK,
        backlog: int = WRITE_BACKLOG,
        prune_every_s: float = PRUNE_EVERY_S,
    ) -> None:
        self.store = store
        self.retry_s = retry_s
        self.on_commit = on_commit
        self.status = status
        self.opener = opener
        self.commit_window_s = commit_window_s
        self.clock = clock
        self.retention = RetentionClock(clock)
        self.prune_every_s = prune_every_s
        self.queue: deque[Snapshot] = deque(maxlen=backlog)
        self._more = asyncio.Event()
        self._dirty = False  # an urgent snapshot is queued: commit now
        self._single = False  # after a non-transient error: one snapshot per transaction
        self._attempts = 0  # failed attempts of the snapshot at the head of the queue
        self._head: Snapshot | None = None
        self._status_error: str | None = None  # the error last recorded in the status table
        self._drop_logged = False
        self.committed = 0
        self.dropped = 0
        self.poisoned = 0
        self.write_errors = 0
        self.write_failing: str | None = None
        self.failing_since: float | None = None  # monotonic time the current failure began
        self.disk_full = False  # the current failure is a full file system
        self.last_write_ts: float | None = None
        self._records = 0  # changed and exit records in the queue (see MAX_QUEUED_RECORDS)

    def put(self, snap: Snapshot) -> None:
        """Queue one snapshot; when the backlog is full the oldest is dropped (and counted)."""
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1  # the disk stayed unwritable for `backlog` intervals: the oldest goes
        self.queue.append(snap)
        self._records += _records(snap)
        if self.store is not None and self.store.is_urgent(snap):
            self._dirty = True
        self._more.set()

    def unavailable(self, e: BaseException) -> None:
        """The database could not be opened (at start): sampling goes on, `opener` is retried."""
        self._failed(e)

    async def run(self, stop: asyncio.Event) -> None:
        """Write until `stop` is set and the backlog is empty (or, while writes fail, until `stop`)."""
        try:
            await self._run(stop)
        except Exception:  # a bug here must not silently end all writing
            log.exception("the write pump failed")
            raise

    async def _run(self, stop: asyncio.Event) -> None:
        # the first prune follows the first write: after a long downtime retention applies at once
        last_prune = self.clock.mono() - self.prune_every_s
        while True:
            if not self.queue:
                self._single = False
                if stop.is_set():
                    return
                await self._wait(stop, None)
                continue
            if not stop.is_set() and not self._due():
                await self._wait(stop, self.queue[0].mono + self.commit_window_s() - self.clock.mono())
                continue
            if not await self._write_some():
                if stop.is_set():
                    return
                await self._sleep(stop, self.retry_s())
                continue
            if self.clock.mono() - last_prune >= self.prune_every_s:
                last_prune = self.clock.mono()
                await self.prune()

    def _due(self) -> bool:
        window = self.commit_window_s()
        if window <= 0 or self._dirty or self.write_failing is not None or len(self.queue) >= MAX_BATCH:
            return True
        if self._records >= MAX_QUEUED_RECORDS:
            return True
        return self.clock.mono() - self.queue[0].mono >= window

    async def prune(self) -> None:
        """Apply retention once (errors are logged: the next prune retries)."""
        if self.store is None:
            return
        try:
            await self.store.prune(self.retention.now())
        except Exception as e:
            log.warning("retention prune failed: %s", e)

    async def _wait(self, stop: asyncio.Event, timeout: float | None) -> None:
        """Until a snapshot is queued, `stop` is set or `timeout` passes."""
        if timeout is not None and timeout <= 0:
            return
        self._more.clear()
        stopping = asyncio.ensure_future(stop.wait())
        more = asyncio.ensure_future(self._more.wait())
        await asyncio.wait({stopping, more}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        more.cancel()

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)

    async def _write_some(self) -> bool:
        """Commit the head of the queue (a batch, or one snapshot after a non-transient error)."""
        if self.store is None:
            if self.opener is None:
                return False
            try:
                self.store = await self.opener()
            except Exception as e:
                self._failed(e)
                return False
            self._dirty = True
        store = self.store
        batch = [self.queue[0]] if self._single else list(self.queue)[:MAX_BATCH]
        dirty, self._dirty = self._dirty, False
        status = self.status(self.committed + len(batch)) if self.status is not None else None
        try:
            await store.write_batch(batch, status, ("db_error",))
        except Exception as e:
            self._dirty = True if dirty else self._dirty
            self._failed(e)
            if getattr(e, "transient", False):
                await self._record_error()
            else:
                await self._poisoned(batch)
            return False
        written = {id(s) for s in batch}
        while self.queue and id(self.queue[0]) in written:
            self.queue.popleft()
        self._records = sum(_records(s) for s in self.queue)
        self._attempts = 0
        self.committed += len(batch)
        self.last_write_ts = batch[-1].ts
        self._status_error = None
        self._drop_logged = False
        if self.write_failing is not None:
            log.info("database writes resumed")
            self.write_failing = None
            self.failing_since = None
            self.disk_full = False
        if self.on_commit is not None:
            for s in batch:
                await self.on_commit(s)
        return True

    def _failed(self, e: BaseException) -> None:
        self.write_errors += 1
        if self.write_failing is None:
            log.error(
                "cannot write to the database (%s); keeping up to %d snapshots in memory, retrying",
                e,
                self.queue.maxlen,
            )
            self.failing_since = self.clock.mono()
        elif self.write_failing != str(e):
            log.warning("database error changed: %s", e)  # once per new cause, not per attempt
        self.write_failing = str(e)
        self.disk_full = bool(getattr(e, "disk_full", False))

    async def _poisoned(self, batch: list[Snapshot]) -> None:
        """A non-transient failure: isolate the snapshot that causes it, drop it once it failed enough."""
        if len(batch) > 1:
            self._single = True
            return
        if self._head is not batch[0]:
            self._head, self._attempts = batch[0], 0
        self._attempts += 1
        if self._attempts < POISON_ATTEMPTS or not self.queue or self.queue[0] is not batch[0]:
            await self._record_error()
            return
        self.queue.popleft()
        self.poisoned += 1
        self._attempts = 0
        self._single = False
        if self.store is not None:
            self.store.skip_snapshot_id()
        if not self._drop_logged:  # once per failing episode
            self._drop_logged = True
            log.warning(
                "snapshot of %s dropped after %d failed writes (counted in poisoned_snapshots)",
                time.strftime("%H:%M:%S", time.localtime(batch[0].ts)),
                POISON_ATTEMPTS,
            )
        await self._record_error(force=True)

    async def _record_error(self, force: bool = False) -> None:
        """Show the error (and the counts) in the status table, in a transaction of its own."""
        if self.store is None or (not force and self._status_error == self.write_failing):
            return
        try:
            await self.store.set_status(
                db_error=self.write_failing,
                poisoned_snapshots=self.poisoned,
                dropped_snapshots=self.dropped,
                write_errors=self.write_errors,
            )
        except Exception as e:  # the database refuses this too: STATUS= and the log still say it
            log.debug("status update failed: %s", e)
            return
        self._status_error = self.write_failing
