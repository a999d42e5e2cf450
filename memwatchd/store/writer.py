"""The store's single writer, owned by the daemon (one aiosqlite connection).

Per snapshot, one ``BEGIN IMMEDIATE`` transaction writes a ``snapshots`` row and, for each process whose
values changed since its last stored sample, one ``raw_head`` row; unchanged processes cost nothing. Every
period (an hour of wall time) starts at a period-start snapshot; a process's first change in a period also
writes a row at that snapshot with the values it held there, so each process's rows of a period are
self-contained. Once a period is at least ``margin`` old, a separate transaction compacts it into
per-process blobs for three tiers (every change, per-minute and per-hour rollups; see codec.py and
rollup.py) for the processes that changed in it, records its snapshots in ``periods`` (readers imply the
periods of unchanged processes from them) and deletes its head rows. prune() applies retention per tier in
small batches. Nothing here is proportional to the number of idle processes (issue 18), except the first
snapshot of a run, which stores every process it sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import operator
import os
import sqlite3
import stat
from bisect import bisect_left, bisect_right
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any, TypeVar

import aiosqlite

from memwatchd.config import StorageConfig
from memwatchd.models import AlertRecord, ProcessSnapshot, Snapshot
from memwatchd.store import codec
from memwatchd.store.files import (
    DatabaseInUse,
    StoreError,
    WriterLock,
    acquire_lock,
    classify,
    corrupt_message,
    describe,
    is_corrupt,
    refuse_symlinks,
)
from memwatchd.store.rollup import Buckets, coarsen, rollup
from memwatchd.store.schema import (
    ALERT_COLS,
    BUCKET_MS,
    KF_FULL,
    KF_PERIOD,
    RAW_FIELDS,
    SCHEMA_VERSION,
    TIER_HOUR,
    TIER_MINUTE,
    TIER_RAW,
    pending_migrations,
)
from memwatchd.store.series import SeriesPlan, SeriesWriter
from memwatchd.triage.report import TriageResult

__all__ = ["DatabaseInUse", "StoreError", "StoreWriter", "WriterLock", "acquire_lock", "describe"]

R = TypeVar("R")
log = logging.getLogger("memwatchd.store")

FILE_MODE = 0o640
_RAW_COLS = ", ".join(RAW_FIELDS)
_RAW_QS = ", ".join("?" * len(RAW_FIELDS))
_MAX_PARAMS = 900
_EXIT_SET = "exit_ms = ?, exit_code = ?, exit_signal = ?, oom_killed = ?"


_values: Callable[[ProcessSnapshot], tuple[int | None, ...]] = operator.attrgetter(*RAW_FIELDS)


@dataclass(slots=True)
class _Live:
    """One stored identity: its row id and the record whose values and labels are the ones stored (the
    merger's own object, not a copy of its values: ~200 B less per process)."""

    proc: int
    snap: ProcessSnapshot
    row_kf: int = 0  # the period start (snapshot id) of the period in which it last got a head row

    @property
    def vals(self) -> tuple[int | None, ...]:
        return _values(self.snap)


_Undo = list[tuple[dict[tuple[int, int], "_Live"], tuple[int, int], "_Live | None"]]  # (state, key, old)


@dataclass(slots=True)
class _Cursor:
    """Where the stored history stands: what the next snapshot is planned against."""

    state: dict[tuple[int, int], _Live]
    next_snap: int = 1
    next_proc: int = 1
    force_kf: bool = True
    period: int | None = None
    last: tuple[int, int] | None = None  # (snap id, ts_ms) of the previous snapshot this session
    last_mono: float | None = None
    last_seq: int | None = None  # Snapshot.seq of the last snapshot stored (or planned in the batch)
    kf_sid: int = 0  # the snapshot id that started the current period


@dataclass(slots=True)
class _Plan:
    """Everything one snapshot writes, computed before the transaction and applied to memory after it."""

    sid: int
    ts_ms: int
    kf: bool
    period: int
    rows: list[tuple[int | None, tuple[int | None, ...], ProcessSnapshot]] = field(default_factory=list)
    lazy: list[tuple[int, tuple[int | None, ...]]] = field(default_factory=list)  # (proc, values) at kf_sid
    kf_sid: int = 0
    full_kf: bool = False
    new: list[ProcessSnapshot] = field(default_factory=list)
    meta: list[tuple[str, str | None, str | None, int]] = field(default_factory=list)
    vanished: list[tuple[tuple[int, int], int]] = field(default_factory=list)
    exited: list[tuple[int, int]] = field(default_factory=list)
    state: dict[tuple[int, int], _Live] = field(default_factory=dict)  # all live (full) or what changed
    full: bool = True  # state holds every live identity; else only those of snap.fresh (the rest unchanged)
    nproc: int = 0

    vanished_keys: set[tuple[int, int]] = field(default_factory=set)
    next_proc: int = 0
    series: SeriesPlan | None = None  # the group and host series (store/series.py)


def _prepare_file(path: str) -> None:
    """Create the folder and an empty 0640 database file; tighten an existing file that is world-readable.

    SQLite gives -wal and -shm the mode of the database file, so they are not world-readable either.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o750, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o027:
            os.fchmod(fd, mode & ~0o027)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        try:
            mode = stat.S_IMODE(os.stat(path + suffix).st_mode)
            if mode & 0o027:
                os.chmod(path + suffix, mode & ~0o027)
        except FileNotFoundError:
            pass


class StoreWriter:
    """Writes snapshots, alerts and status; compacts and prunes. Not safe to share across event loops."""

    period_ms = 3_600_000  # compaction period (a keyframe starts each one)
    margin_ms = 900_000  # the head keeps at least this much uncompacted, so `top` reads it alone
    margin_snaps = 2_000  # ... or this many snapshots, whichever comes first (wall-clock steps)
    vacuum_reserve_pages = 2_048  # free pages kept for the head's churn instead of being vacuumed
    # of new databases: most commits change a few small rows scattered over the tables (a changed process's
    # raw_head and current rows, the status, the newest snapshot rows); every touched page is written whole
    # to the WAL and again at the checkpoint, so small pages write less (docs/reliability.md, disk writes)
    page_size = 1024
    wal_checkpoint_bytes = 2 << 20  # autocheckpoint once the WAL holds this much
    wal_limit_bytes = 4 << 20  # journal_size_limit: the WAL file is cut back to this after a checkpoint

    def __init__(self, db: aiosqlite.Connection, cfg: StorageConfig, path: str) -> None:
        self._db = db
        self.cfg = cfg
        self.path = path
        self._lock = asyncio.Lock()
        self._cur = _Cursor(state={})
        self._compacted = 0
        self._keyframes: list[tuple[int, int]] = []  # (snap id, ts_ms) of keyframes not yet compacted
        self._compact_failing = False
        self._cutoffs_written: dict[int, int] = {}
        self._closed = False
        self._series = SeriesWriter()
        self._shrink = False  # rebuild the cursor's state table at the next write (shrink)

    # ---- open / close ---------------------------------------------------------------------------------
    @classmethod
    async def open(cls, path: str, cfg: StorageConfig, *, period_s: float | None = None) -> StoreWriter:
        """Open (creating if needed) the database at ``path``: WAL, busy timeout, migrations."""
        refuse_symlinks(path)
        old_umask = os.umask(0o027)
        try:
            _prepare_file(path)
            db = await aiosqlite.connect(path, isolation_level=None)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise StoreError(f"{path} is a symbolic link; refusing to follow it") from None
            raise classify(e, f"cannot open database {path}: ", path) from None
        except sqlite3.Error as e:
            raise classify(e, f"cannot open database {path}: ", path) from None
        finally:
            os.umask(old_umask)
        self = cls(db, cfg, path)
        if period_s:  # benchmarks: a keyframe/compaction period shorter than an hour
            self.period_ms = round(period_s * 1000)
            self.margin_ms = self.period_ms // 2
        try:
            await self._setup()
        except ValueError as e:
            await db.close()
            raise StoreError(f"cannot open database {path}: {e}") from None
        except sqlite3.Error as e:
            await db.close()
            if is_corrupt(e):
                raise StoreError(corrupt_message(path, e)) from None
            raise classify(e, f"cannot open database {path}: ", path) from None
        return self

    async def _setup(self) -> None:
        db = self._db
        await db.execute("PRAGMA busy_timeout = 10000")
        version = await self._scalar("PRAGMA user_version")
        if version > SCHEMA_VERSION:
            raise ValueError(f"schema version {version} is newer than this memwatchd ({SCHEMA_VERSION})")
        if version == 0 and not await self._scalar("SELECT count(*) FROM sqlite_master"):
            # only possible before the first table (existing databases keep their page size)
            await db.execute(f"PRAGMA page_size = {self.page_size}")
            await db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        old_umask = os.umask(0o027)
        try:
            await db.execute("PRAGMA journal_mode = WAL")
        finally:
            os.umask(old_umask)
        await db.execute("PRAGMA synchronous = NORMAL")  # WAL: durable against process kills, fast commits
        # the WAL is checkpointed once it holds wal_checkpoint_bytes and cut back to journal_size_limit
        # after a long reader held it open: it stays within a few MB even on a small file system
        page = int(await self._scalar("PRAGMA page_size") or 4096)
        await db.execute(f"PRAGMA journal_size_limit = {self.wal_limit_bytes}")
        await db.execute(f"PRAGMA wal_autocheckpoint = {max(16, self.wal_checkpoint_bytes // page)}")
        for target, script in pending_migrations(version):
            await db.execute("BEGIN IMMEDIATE")
            try:
                for stmt in _statements(script):
                    await db.execute(stmt)
                await db.execute(f"PRAGMA user_version = {target}")
                await db.execute("COMMIT")
            except BaseException:
                await self._rollback()
                raise
        await db.execute("BEGIN IMMEDIATE")
        try:
            # processes live when the previous writer stopped were last seen at its last snapshot
            await db.execute(
                "UPDATE processes SET last_snap = (SELECT max(id) FROM snapshots),"
                " last_seen_ms = (SELECT ts_ms FROM snapshots ORDER BY id DESC LIMIT 1)"
                " WHERE last_snap IS NULL"
            )
            await db.execute("DELETE FROM current")
            await db.execute("COMMIT")
        except BaseException:
            await self._rollback()
            raise
        self._compacted = int(
            await self._scalar("SELECT value FROM meta WHERE key = 'compacted_through'") or 0
        )
        self._cur.next_snap = 1 + max(
            int(await self._scalar("SELECT max(id) FROM snapshots") or 0),
            int(await self._scalar("SELECT max(snap) FROM raw_head") or 0),
            self._compacted,
            int(await self._scalar("SELECT value FROM meta WHERE key = 'last_snap'") or 0),
        )
        self._cur.next_proc = 1 + int(await self._scalar("SELECT max(id) FROM processes") or 0)
        async with db.execute(
            "SELECT id, ts_ms FROM snapshots WHERE kf >= 1 AND id > ? ORDER BY id", (self._compacted,)
        ) as cur:
            self._keyframes = [(r[0], r[1]) async for r in cur]
        await self._series.setup(db)

    async def close(self) -> None:
        """Close the connection (the last snapshot is already committed)."""
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            with contextlib.suppress(sqlite3.Error):  # only statistics; closing matters more
                await self._db.execute("PRAGMA optimize")
            await self._db.close()

    # ---- helpers --------------------------------------------------------------------------------------
    async def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        async with self._db.execute(sql, params) as cur:
            row = await cur.fetchone()
        return row[0] if row else None

    async def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # no transaction left to roll back
            await self._db.execute("ROLLBACK")

    async def _tx(self, fn: Callable[..., Awaitable[R]], *args: Any) -> R:
        """Run ``fn`` inside one BEGIN IMMEDIATE transaction; StoreError on any database failure."""
        if self._closed:
            raise StoreError("database is closed")
        try:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                result = await fn(*args)
                await self._db.execute("COMMIT")
            except BaseException:
                await self._rollback()
                raise
        except sqlite3.Error as e:
            raise classify(e, path=self.path) from None
        return result

    # ---- snapshots ------------------------------------------------------------------------------------
    async def write(self, snap: Snapshot) -> None:
        """Store one snapshot in one transaction; StoreError leaves the database and this writer unchanged."""
        await self.write_batch([snap])

    async def write_batch(
        self,
        snaps: Sequence[Snapshot],
        status: Mapping[str, str | int | float | None] | None = None,
        clear_status: Sequence[str] = (),
    ) -> None:
        """Store snapshots (in order) and status key/values in ONE transaction: one commit, one WAL sync.

        StoreError (with its kind, see files.StoreError) leaves the database and this writer unchanged.
        ``clear_status`` keys are removed from the status table.
        """
        if not snaps:
            return
        async with self._lock:
            if self._shrink:  # between batches nothing holds the table: swap in one sized for its entries
                self._shrink = False
                self._cur.state = dict(self._cur.state)
            plans: list[_Plan] = []
            undo: _Undo = []

            async def run() -> _Cursor:
                cur = self._cur
                series: SeriesPlan | None = None
                for snap in snaps:
                    plan = self._plan(snap, cur)
                    plan.series = series = self._series.plan(snap, plan.kf, series)
                    await self._apply(snap, plan, cur)
                    plans.append(plan)
                    cur = _advance(cur, snap, plan, undo)
                if status:
                    await self._status_rows(status)
                if clear_status:
                    await self._db.executemany(
                        "DELETE FROM status WHERE key = ?", [(k,) for k in clear_status]
                    )
                return cur

            try:
                self._cur = await self._tx(run)
            except BaseException:
                for state, k, old in reversed(undo):  # the cursor's state as it was before the batch
                    if old is None:
                        state.pop(k, None)
                    else:
                        state[k] = old
                raise
            self._keyframes += [(p.sid, p.ts_ms) for p in plans if p.kf]
            for p in plans:
                if p.series is not None:
                    self._series.commit(p.series)
        await self._maybe_compact(plans[-1].ts_ms, plans[-1].sid)

    def shrink(self) -> None:
        """Size the per-process state table for the processes there are, at the next write (see
        Merger.shrink; a batch in progress holds the table and its undo log)."""
        self._shrink = True

    def is_urgent(self, snap: Snapshot) -> bool:
        """True when ``snap`` should be committed at once rather than batched with the next ones: the
        first snapshot of this writer (``memwatchctl status`` has data as soon as the daemon runs) and a
        snapshot carrying OOM kills (the victim's last values matter most)."""
        return self._cur.force_kf or bool(snap.ooms)

    def skip_snapshot_id(self) -> None:
        """A snapshot was given up (poisoned): its id is not reused (a conflicting row may hold it)."""
        self._cur.next_snap += 1

    def _plan(self, snap: Snapshot, cur: _Cursor) -> _Plan:
        ts_ms = round(snap.ts * 1000)
        period = ts_ms // self.period_ms
        kf = cur.force_kf or period != cur.period
        plan = _Plan(sid=cur.next_snap, ts_ms=ts_ms, kf=kf, period=period, next_proc=cur.next_proc)
        plan.full_kf = cur.force_kf
        kf_sid = plan.kf_sid = plan.sid if kf else cur.kf_sid
        # Work in proportion to change: when this snapshot follows the last one written (or planned in the
        # same batch), only its fresh records can differ from what is stored (a run's first snapshot looks
        # at all; a period start is no different from any other snapshot).
        incremental = (
            not cur.force_kf and snap.fresh is not None and snap.base_seq == cur.last_seq is not None
        )
        plan.full = not incremental
        state = plan.state
        for p in snap.fresh if incremental and snap.fresh is not None else snap.processes:
            key = p.ident
            if key in state:  # a duplicate identity in one snapshot: keep the first
                continue
            old = cur.state.get(key)
            if old is None:
                plan.new.append(p)
                state[key] = _Live(0, p, kf_sid)
                continue
            was = old.snap
            if was is p:
                state[key] = old  # the common case: nothing to write, nothing to allocate
            else:
                vals, old_vals = _values(p), _values(was)
                if p.comm != was.comm or p.unit != was.unit or p.cgroup != was.cgroup:
                    plan.meta.append((p.comm, p.unit, p.cgroup, old.proc))
                row_kf = old.row_kf
                if vals != old_vals:
                    plan.rows.append((old.proc, vals, p))
                    if row_kf != kf_sid and not kf:
                        # its first change this period: the period starts with the values it held
                        plan.lazy.append((old.proc, old_vals))
                    row_kf = kf_sid
                state[key] = _Live(old.proc, p, row_kf)  # (also for equal values: the record held is p)
            if p.exited:
                plan.exited.append(key)
        if incremental:
            live = cur.state
            plan.vanished = [(k, live[k].proc) for k in snap.gone if k in live and k not in state]
            plan.vanished_keys = {k for k, _ in plan.vanished}
            plan.nproc = len(live) - len(plan.vanished) + sum(1 for k in state if k not in live)
        else:
            plan.vanished = [(k, v.proc) for k, v in cur.state.items() if k not in state]
            plan.nproc = len(state)
        return plan

    def _live(self, plan: _Plan, key: tuple[int, int], cur: _Cursor) -> _Live | None:
        """The identity's state after this plan (an incremental plan holds only what changed)."""
        live = plan.state.get(key)
        if live is None and not plan.full and key not in plan.vanished_keys:
            live = cur.state.get(key)
        return live

    async def _apply(self, snap: Snapshot, plan: _Plan, cur: _Cursor) -> None:
        db = self._db
        if plan.new:
            await self._resolve_new(plan)
        mi = snap.meminfo
        dt_ms = None
        if cur.last_mono is not None and snap.mono >= cur.last_mono:
            dt_ms = round((snap.mono - cur.last_mono) * 1000)
        await db.execute(
            "INSERT INTO snapshots (id, ts_ms, dt_ms, kf, nproc, mem_total_kb, mem_available_kb,"
            " swap_total_kb,"
            " swap_free_kb, scan_errors) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                plan.sid,
                plan.ts_ms,
                dt_ms,
                KF_FULL if plan.full_kf else KF_PERIOD if plan.kf else 0,
                plan.nproc,
                mi.mem_total_kb if mi else None,
                mi.mem_available_kb if mi else None,
                mi.swap_total_kb if mi else None,
                mi.swap_free_kb if mi else None,
                snap.scan_errors,
            ),
        )
        if plan.lazy:
            await db.executemany(
                f"INSERT INTO raw_head (proc, snap, {_RAW_COLS}) VALUES (?, ?, {_RAW_QS})",
                [(proc, plan.kf_sid, *vals) for proc, vals in plan.lazy],
            )
        if plan.rows:
            await db.executemany(
                f"INSERT INTO raw_head (proc, snap, {_RAW_COLS}) VALUES (?, ?, {_RAW_QS})",
                [(proc, plan.sid, *vals) for proc, vals, _ in plan.rows],
            )
            await db.executemany(
                f"INSERT OR REPLACE INTO current (proc, snap, {_RAW_COLS}, d_mmap_count, d_mmap_bytes,"
                f" d_munmap_bytes, d_brk_bytes, dt_ms) VALUES (?, ?, {_RAW_QS}, ?, ?, ?, ?, ?)",
                [
                    (
                        proc,
                        plan.sid,
                        *vals,
                        p.d_mmap_count,
                        p.d_mmap_bytes,
                        p.d_munmap_bytes,
                        p.d_brk_bytes,
                        None if p.dt_s is None else round(p.dt_s * 1000),
                    )
                    for proc, vals, p in plan.rows
                ],
            )
        if plan.meta:
            await db.executemany(
                "UPDATE processes SET comm = ?, unit = ?, cgroup = ? WHERE id = ?", plan.meta
            )
        ended: list[tuple[int, int, int]] = []
        if plan.vanished and cur.last is not None:
            ended += [(cur.last[0], cur.last[1], proc) for _, proc in plan.vanished]
        ended += [(plan.sid, plan.ts_ms, plan.state[k].proc) for k in plan.exited]
        if ended:
            await db.executemany("UPDATE processes SET last_snap = ?, last_seen_ms = ? WHERE id = ?", ended)
            await db.executemany("DELETE FROM current WHERE proc = ?", [(e[2],) for e in ended])
        for e in snap.exits:
            exit_ms = plan.ts_ms
            age = snap.mono - e.mono_ns / 1e9
            if 0 <= age < 3600:
                exit_ms = round((snap.ts - age) * 1000)
            ended_values = (exit_ms, e.exit_code, e.exit_signal, int(e.oom_killed))
            if e.start_ticks:  # the exact identity (BPF read the start time)
                key = (e.pid, e.start_ticks)
                live = self._live(plan, key, cur)
                proc = (
                    live.proc if live is not None else next((v for k, v in plan.vanished if k == key), None)
                )
                if proc is None:
                    await db.execute(
                        f"UPDATE processes SET {_EXIT_SET} WHERE pid = ? AND start_ticks = ?",
                        (*ended_values, e.pid, e.start_ticks),
                    )
                    continue
            else:
                proc = next((v.proc for k, v in plan.state.items() if k[0] == e.pid), None)
                if proc is None and not plan.full:
                    gone = plan.vanished_keys
                    proc = next(
                        (v.proc for k, v in cur.state.items() if k[0] == e.pid and k not in gone), None
                    )
                if proc is None:
                    proc = next((v for k, v in plan.vanished if k[0] == e.pid), None)
            if proc is not None:
                await db.execute(f"UPDATE processes SET {_EXIT_SET} WHERE id = ?", (*ended_values, proc))
            else:
                await db.execute(
                    f"UPDATE processes SET {_EXIT_SET} WHERE id = (SELECT id FROM processes"
                    " WHERE pid = ? AND exit_ms IS NULL ORDER BY first_snap DESC LIMIT 1)",
                    (*ended_values, e.pid),
                )
        if snap.ooms:
            await db.executemany(
                "INSERT INTO ooms (ts_ms, pid, comm, total_vm_kb, anon_rss_kb, file_rss_kb, shmem_rss_kb,"
                " uid,"
                " oom_score_adj) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        plan.ts_ms,
                        o.pid,
                        o.comm,
                        o.total_vm_kb,
                        o.anon_rss_kb,
                        o.file_rss_kb,
                        o.shmem_rss_kb,
                        o.uid,
                        o.oom_score_adj,
                    )
                    for o in snap.ooms
                ],
            )
        if plan.series is not None:
            await self._series.apply(db, plan.series, plan.sid, plan.ts_ms, cur.last)

    async def _resolve_new(self, plan: _Plan) -> None:
        """Give processes first seen by this writer an id: the existing row of that identity, or a new one."""
        db = self._db
        known: dict[tuple[int, int], int] = {}
        pids = sorted({p.pid for p in plan.new})
        for i in range(0, len(pids), _MAX_PARAMS):
            part = pids[i : i + _MAX_PARAMS]
            sql = f"SELECT id, pid, start_ticks FROM processes WHERE pid IN ({', '.join('?' * len(part))})"
            async with db.execute(sql, part) as cur:
                async for pid_id, pid, st in cur:
                    known[(pid, st)] = pid_id
        inserts, reopen = [], []
        for p in plan.new:
            key = p.ident
            proc = known.get(key)
            if proc is None:
                proc = plan.next_proc
                plan.next_proc += 1
                inserts.append(
                    (proc, p.pid, p.start_ticks, p.comm, p.unit, p.cgroup, p.start_time, plan.sid, plan.ts_ms)
                )
            else:
                reopen.append((p.comm, p.unit, p.cgroup, proc))
            live = plan.state[key]
            live.proc = proc
            plan.rows.append((proc, live.vals, p))
            if p.exited:
                plan.exited.append(key)
        if inserts:
            await db.executemany(
                "INSERT INTO processes (id, pid, start_ticks, comm, unit, cgroup, start_time, first_snap,"
                " first_seen_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                inserts,
            )
        if reopen:
            await db.executemany(
                "UPDATE processes SET comm = ?, unit = ?, cgroup = ?, last_snap = NULL, last_seen_ms = NULL"
                " WHERE id = ?",
                reopen,
            )

    # ---- compaction -----------------------------------------------------------------------------------
    async def _maybe_compact(self, now_ms: int, sid: int) -> None:
        due = [
            k
            for k in self._keyframes
            if k[0] > self._compacted + 1
            and (now_ms - k[1] >= self.margin_ms or sid - k[0] >= self.margin_snaps)
        ]
        if not due:
            return
        try:
            await self.compact(due[-1][0] - 1)  # period by period
        except StoreError as e:  # the snapshot is committed; compaction is retried after the next one
            if not self._compact_failing:
                log.warning("compaction failed (will retry): %s", e)
            self._compact_failing = True
        else:
            self._compact_failing = False

    async def compact(self, through: int) -> int:
        """Move the head's rows of snapshots up to ``through`` into chunks; returns the processes compacted.

        ``through`` + 1 must be a period start (or the next snapshot to be written). Each period is compacted
        in a transaction of its own (a process's rows of one period are self-contained).
        """
        n = 0
        async with self._lock:
            ends = [k[0] - 1 for k in self._keyframes if self._compacted + 1 < k[0] <= through]
            for end in [*ends, through]:
                if end <= self._compacted:
                    continue
                n += int(await self._tx(self._compact, self._compacted, end))
                self._compacted = end
                self._keyframes = [k for k in self._keyframes if k[0] > end]
            if self._compacted >= self._cur.next_snap - 1:
                self._cur.period = None  # the current period is compacted: the next snapshot starts one
        return n

    async def _compact(self, after: int, through: int) -> int:
        db = self._db
        async with db.execute(
            "SELECT id, ts_ms FROM snapshots WHERE id > ? AND id <= ? ORDER BY id", (after, through)
        ) as cur:
            snaps = [(r[0], r[1]) async for r in cur]
        async with db.execute(
            f"SELECT proc, snap, {_RAW_COLS} FROM raw_head WHERE snap <= ? ORDER BY proc, snap", (through,)
        ) as cur:
            rows = await cur.fetchall()
        async with db.execute(
            "SELECT id, last_snap FROM processes WHERE last_snap IS NULL OR last_snap > ?", (after,)
        ) as cur:
            ends = {r[0]: r[1] async for r in cur}
        chunks = await asyncio.to_thread(_build_chunks, snaps, list(rows), ends, through)
        snap0 = snaps[0][0] if snaps else after + 1
        if chunks:
            await db.executemany(
                "INSERT INTO chunks (tier, proc, t0_ms, t1_ms, data, snap0) VALUES (?, ?, ?, ?, ?, ?)",
                [(*c, snap0) for c in chunks],
            )
        if snaps:  # readers count the snapshots of the processes that did not change in it from this
            await db.execute(
                "INSERT OR REPLACE INTO periods (snap0, snap1, t0_ms, t1_ms, data) VALUES (?, ?, ?, ?, ?)",
                (snap0, through, snaps[0][1], max(t for _, t in snaps), codec.encode_period(snaps)),
            )
        await db.execute("DELETE FROM raw_head WHERE snap <= ?", (through,))
        await self._series.compact(db, snaps, after, through)
        await db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('compacted_through', ?)", (through,)
        )
        return len({c[1] for c in chunks})

    # ---- retention ------------------------------------------------------------------------------------
    async def prune(self, now: float, batch: int = 5000) -> int:
        """Delete what is older than each tier's retention, ``batch`` rows per transaction.

        Returns the number of rows deleted.
        """
        now_ms = round(now * 1000)
        cut = {
            TIER_RAW: now_ms - round(self.cfg.raw_retention_s * 1000),
            TIER_MINUTE: now_ms - round(self.cfg.minute_retention_s * 1000),
            TIER_HOUR: now_ms - round(self.cfg.retention_s * 1000),
        }
        oldest = cut[TIER_HOUR]
        steps = [
            *(
                (
                    # a process's latest chunk of a tier stays while it is present after the cut: the
                    # periods since, in which it did not change, are read from it (schema.py, version 5)
                    f"SELECT id FROM chunks c WHERE tier = {t} AND t1_ms < ?1 AND ("
                    f" EXISTS (SELECT 1 FROM chunks n WHERE n.tier = {t} AND n.proc = c.proc AND n.id > c.id)"
                    " OR NOT EXISTS (SELECT 1 FROM processes p WHERE p.id = c.proc"
                    " AND (p.last_snap IS NULL OR p.last_seen_ms >= ?1))) LIMIT ?2",
                    "DELETE FROM chunks WHERE id IN",
                    c,
                )
                for t, c in cut.items()
            ),
            (
                "SELECT snap0 FROM periods WHERE t1_ms < ? LIMIT ?",
                "DELETE FROM periods WHERE snap0 IN",
                oldest,
            ),
            (
                "SELECT id FROM snapshots WHERE ts_ms < ? LIMIT ?",
                "DELETE FROM snapshots WHERE id IN",
                cut[TIER_RAW],
            ),
            ("SELECT id FROM ooms WHERE ts_ms < ? LIMIT ?", "DELETE FROM ooms WHERE id IN", oldest),
            *SeriesWriter.prune_steps(cut, oldest),
            (
                "SELECT id FROM processes WHERE last_seen_ms < ? AND last_snap IS NOT NULL"
                " AND NOT EXISTS (SELECT 1 FROM raw_head WHERE raw_head.proc = processes.id) LIMIT ?",
                "DELETE FROM processes WHERE id IN",
                oldest,
            ),
        ]
        # first: the cut-offs (readers learn what may be gone) and the last snapshot id (ids are never reused
        # even when retention deletes every snapshot row); kept out of the snapshots' own transactions so an
        # idle commit touches as few pages as possible
        async with self._lock:
            total = int(await self._tx(self._prune_small, cut, oldest / 1000))
        for select, delete, cutoff in steps:
            while True:
                async with self._lock:
                    n = await self._tx(self._delete_batch, select, delete, cutoff, batch)
                total += n
                if n < batch:
                    break
                await asyncio.sleep(0)  # let a snapshot write in between batches
        await self._vacuum()
        return total

    async def _delete_batch(self, select: str, delete: str, cutoff: int, batch: int) -> int:
        cur = await self._db.execute(f"{delete} ({select})", (cutoff, batch))
        return max(cur.rowcount, 0)

    async def _prune_small(self, cut: dict[int, int], oldest_s: float) -> int:
        cur = await self._db.execute(
            "DELETE FROM alerts WHERE state = 'resolved' AND notified_state IS 'resolved'"
            " AND resolved_at < ?",
            (oldest_s,),
        )
        await self._db.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [*((f"cutoff_{t}_ms", c) for t, c in cut.items()), ("last_snap", self._cur.next_snap - 1)],
        )
        return max(cur.rowcount, 0)

    async def _vacuum(self) -> None:
        """Give free pages beyond a reserve back to the file system, a bounded number per transaction."""
        for _ in range(64):
            async with self._lock:
                free = int(await self._scalar("PRAGMA freelist_count") or 0)
                excess = free - self.vacuum_reserve_pages
                if excess <= 0:
                    return
                try:
                    # executescript steps the pragma to completion: execute() frees one page per step and
                    # leaves the statement open, holding the write lock until the cursor is collected
                    await self._db.executescript(f"PRAGMA incremental_vacuum({min(excess, 1024)});")
                except sqlite3.Error as e:
                    raise StoreError(describe(e)) from None
            await asyncio.sleep(0)

    # ---- alerts and status ----------------------------------------------------------------------------
    async def save_alerts(self, alerts: Sequence[AlertRecord]) -> None:
        """Insert or update alert episodes, keyed by (rule, pid, start_ticks, since)."""
        if not alerts:
            return
        cols = ", ".join(ALERT_COLS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in ALERT_COLS[4:])
        sql = (
            f"INSERT INTO alerts ({cols}) VALUES ({', '.join('?' * len(ALERT_COLS))})"
            f" ON CONFLICT (rule, pid, start_ticks, since) DO UPDATE SET {updates}"
        )
        params = [tuple(getattr(a, c) for c in ALERT_COLS) for a in alerts]

        async def run() -> None:
            await self._db.executemany(sql, params)

        async with self._lock:
            await self._tx(run)

    async def load_open_alerts(self) -> list[AlertRecord]:
        """Pending and firing episodes, and resolved ones whose resolution was not yet notified."""
        sql = (
            f"SELECT {', '.join(ALERT_COLS)} FROM alerts WHERE state IN ('pending', 'firing')"
            " OR (state = 'resolved' AND notified_state != 'resolved') ORDER BY since, rule, pid"
        )
        try:
            async with self._lock, self._db.execute(sql) as cur:
                rows = await cur.fetchall()
        except sqlite3.Error as e:
            raise StoreError(describe(e)) from None
        return [AlertRecord(**dict(zip(ALERT_COLS, r, strict=True))) for r in rows]

    async def set_status(self, **fields: str | int | float | None) -> None:
        """Record daemon status key/values (shown by ``memwatchctl status``) in a transaction of their own.

        The daemon folds its per-cycle status into the snapshot's transaction (write_batch); this is for
        the rare updates between snapshots (a write error, a dropped snapshot).
        """
        if not fields:
            return
        async with self._lock:
            await self._tx(self._status_rows, fields)

    async def _status_rows(self, fields: Mapping[str, str | int | float | None]) -> None:
        await self._db.executemany(
            "INSERT OR REPLACE INTO status (key, value) VALUES (?, ?)", list(fields.items())
        )

    async def save_triage(self, result: TriageResult, now: float) -> int:
        """Store one triage result (and drop those older than [storage] retention); returns its id."""
        from memwatchd.store import triage

        async def run() -> int:
            await self._db.execute(triage.PRUNE, (int((now - self.cfg.retention_s) * 1000),))
            async with self._db.execute(triage.INSERT, triage.insert_params(result)) as cur:
                return int(cur.lastrowid or 0)

        async with self._lock:
            row_id: int = await self._tx(run)
        return row_id


def _advance(cur: _Cursor, snap: Snapshot, plan: _Plan, undo: _Undo) -> _Cursor:
    """The cursor after ``plan`` is stored. An incremental plan changes the cursor's state in place (no
    per-process copy each snapshot) and logs each change in ``undo``, so a failed transaction can leave
    the writer as it was."""
    if plan.full:
        state = plan.state
        for key in plan.exited:
            state.pop(key, None)
    else:
        state = cur.state
        for k, _ in plan.vanished:
            old = state.pop(k, None)
            if old is not None:
                undo.append((state, k, old))
        for k, live in plan.state.items():
            undo.append((state, k, state.get(k)))
            state[k] = live
        for key in plan.exited:
            old = state.pop(key, None)
            if old is not None:
                undo.append((state, key, old))
    return _Cursor(
        state=state,
        last_seq=snap.seq,
        next_snap=plan.sid + 1,
        next_proc=plan.next_proc,
        force_kf=False,
        period=plan.period,
        last=(plan.sid, plan.ts_ms),
        last_mono=snap.mono,
        kf_sid=plan.kf_sid,
    )


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (the scripts hold no semicolons inside literals)."""
    return [s.strip() for s in script.split(";") if s.strip()]


def _build_chunks(
    snaps: list[tuple[int, int]],
    rows: Sequence[Sequence[Any]],
    ends: dict[int, int | None],
    through: int,
) -> list[tuple[int, int, int, int, bytes]]:
    """Encode the head rows of one compaction range into (tier, proc, t0_ms, t1_ms, blob) chunks."""
    ids = [s[0] for s in snaps]
    ts = [s[1] for s in snaps]
    minutes = Buckets(ids, ts, BUCKET_MS[TIER_MINUTE])
    out: list[tuple[int, int, int, int, bytes]] = []
    for proc, group in groupby(rows, key=lambda r: r[0]):
        entries = [(r[1], tuple(r[2:])) for r in group]
        start = entries[0][0]
        last = ends.get(proc)
        end = through if last is None else min(max(last, entries[-1][0]), through)
        lo, hi = bisect_left(ids, start), bisect_right(ids, end)
        if hi <= lo:
            continue  # every snapshot of its presence is past retention
        span = ts[lo:hi]
        out.append((TIER_RAW, proc, min(span), max(span), codec.encode_raw(entries)))
        mins = rollup(entries, minutes, start, end)
        if mins:
            mm = BUCKET_MS[TIER_MINUTE]
            out.append((TIER_MINUTE, proc, mins[0][0] * mm, mins[-1][0] * mm, codec.encode_agg(mins)))
            hours = coarsen(mins, BUCKET_MS[TIER_HOUR] // mm)
            hm = BUCKET_MS[TIER_HOUR]
            out.append((TIER_HOUR, proc, hours[0][0] * hm, hours[-1][0] * hm, codec.encode_agg(hours)))
    return out
