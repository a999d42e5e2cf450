"""Group and host series in the store: the writer's part (called inside its transactions) and the queries.

A series is one memory cgroup, one systemd unit or the host. Like a process it gets a row in ``series_head``
only when its values changed (and at every keyframe), and is compacted with the processes into chunks per
tier: raw (every change, keyed by snapshot id, codec.encode) and the last values per minute and per hour
(keyed by bucket number). A series present in a snapshot is "live" (last_snap NULL) until a snapshot comes
without it. See schema.py for the tables.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import TYPE_CHECKING, Any

from memwatchd.models import GroupSample, HostMemory, Snapshot
from memwatchd.store import codec
from memwatchd.store.schema import (
    BUCKET_MS,
    GROUP_FIELDS,
    HOST_FIELDS,
    SERIES_COLS,
    SERIES_FIELDS,
    TIER_HOUR,
    TIER_MINUTE,
    TIER_RAW,
)

if TYPE_CHECKING:  # series_read (memwatchctl) imports this module's pure helpers: no aiosqlite at run time
    import aiosqlite

SKey = tuple[str, str]  # (kind, name)
Vals = tuple[int | None, ...]
HOST_NAME = "host"


def group_values(g: GroupSample) -> Vals:
    return (g.processes, g.rss_kb, g.anon_kb, g.swap_kb, g.memory_current_kb, g.memory_limit_kb)


def host_values(h: HostMemory) -> Vals:
    return tuple(getattr(h, f) for f in HOST_FIELDS)


# A unit whose processes are exactly those of its own cgroup (the usual case: one cgroup per service) stores
# this marker instead of a copy of the cgroup's values; readers take the values of the series of the cgroup
# named in series.cgroup. An unchanged marker costs nothing (change-only), so the unit's series is free.
ALIAS: Vals = (-1, None, None, None, None, None)


def snapshot_series(snap: Snapshot) -> list[tuple[SKey, Vals, str | None, str | None]]:
    """(key, values, unit, cgroup) of every series in a snapshot."""
    cgroups = {g.group: group_values(g) for g in snap.groups if g.by == "cgroup"}
    out: list[tuple[SKey, Vals, str | None, str | None]] = []
    for g in snap.groups:
        vals = group_values(g)
        if g.by == "unit" and g.cgroup is not None and cgroups.get(g.cgroup) == vals:
            vals = ALIAS
        out.append(((g.by, g.group), vals, g.unit, g.cgroup))
    if snap.host is not None:
        out.append((("host", HOST_NAME), host_values(snap.host), None, None))
    return out


@dataclass(slots=True)
class _Live:
    id: int
    vals: Vals
    unit: str | None
    cgroup: str | None


@dataclass(slots=True)
class SeriesPlan:
    """What one snapshot writes for the series; applied to the writer's memory after the commit."""

    rows: list[tuple[int, Vals]] = field(default_factory=list)
    new: list[tuple[int, SKey, Vals, str | None, str | None]] = field(default_factory=list)
    meta: list[tuple[str | None, str | None, int]] = field(default_factory=list)
    vanished: list[int] = field(default_factory=list)
    state: dict[SKey, _Live] = field(default_factory=dict)
    next_id: int = 0
    known: dict[SKey, int] = field(default_factory=dict)  # ids given by earlier plans of the same batch


def _qs(n: int) -> str:
    return ", ".join("?" * n)


class SeriesWriter:
    """The series half of the store's writer: plans, writes, compacts and prunes series rows."""

    def __init__(self) -> None:
        self._state: dict[SKey, _Live] = {}
        self._next_id = 1
        self._known: dict[SKey, int] = {}  # ids of series seen before (this or an earlier run)

    async def setup(self, db: aiosqlite.Connection) -> None:
        """After the migrations, inside no transaction: close series left open by a previous writer."""
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute(
                "UPDATE series SET last_snap = (SELECT max(id) FROM snapshots),"
                " last_seen_ms = (SELECT ts_ms FROM snapshots ORDER BY id DESC LIMIT 1)"
                " WHERE last_snap IS NULL"
            )
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        async with db.execute("SELECT id, kind, name FROM series") as cur:
            self._known = {(k, n): i async for i, k, n in cur}
        self._next_id = 1 + max(self._known.values(), default=0)

    def plan(self, snap: Snapshot, kf: bool, prev: SeriesPlan | None = None) -> SeriesPlan:
        """What ``snap`` writes, against the stored state or, in a batch, against the previous ``prev``."""
        base = self._state if prev is None else prev.state
        plan = SeriesPlan(
            next_id=self._next_id if prev is None else prev.next_id,
            known={} if prev is None else dict(prev.known),
        )
        for key, vals, unit, cgroup in snapshot_series(snap):
            if key in plan.state:
                continue
            old = base.get(key)
            if old is None:
                sid = self._known.get(key) or plan.known.get(key)
                if sid is None:
                    sid = plan.next_id
                    plan.next_id += 1
                plan.new.append((sid, key, vals, unit, cgroup))
                plan.known[key] = sid
                plan.state[key] = _Live(sid, vals, unit, cgroup)
                plan.rows.append((sid, vals))
                continue
            if (unit, cgroup) != (old.unit, old.cgroup):
                plan.meta.append((unit, cgroup, old.id))
            if kf or vals != old.vals:
                plan.rows.append((old.id, vals))
            plan.state[key] = (
                old
                if vals == old.vals and (unit, cgroup) == (old.unit, old.cgroup)
                else _Live(old.id, vals, unit, cgroup)
            )
        plan.vanished = [v.id for k, v in base.items() if k not in plan.state]
        return plan

    async def apply(
        self,
        db: aiosqlite.Connection,
        plan: SeriesPlan,
        snap_id: int,
        ts_ms: int,
        last: tuple[int, int] | None,
    ) -> None:
        """Inside the snapshot's transaction."""
        if plan.new:
            await db.executemany(
                "INSERT INTO series (id, kind, name, unit, cgroup, first_snap, first_seen_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET unit = excluded.unit,"
                " cgroup = excluded.cgroup, last_snap = NULL, last_seen_ms = NULL",
                [(sid, k[0], k[1], unit, cg, snap_id, ts_ms) for sid, k, _, unit, cg in plan.new],
            )
        if plan.rows:
            width = len(SERIES_COLS)
            await db.executemany(
                f"INSERT INTO series_head (series, snap, {', '.join(SERIES_COLS)})"
                f" VALUES (?, ?, {_qs(width)})",
                [(sid, snap_id, *vals, *(None,) * (width - len(vals))) for sid, vals in plan.rows],
            )
        if plan.meta:
            await db.executemany("UPDATE series SET unit = ?, cgroup = ? WHERE id = ?", plan.meta)
        if plan.vanished and last is not None:
            await db.executemany(
                "UPDATE series SET last_snap = ?, last_seen_ms = ? WHERE id = ?",
                [(last[0], last[1], sid) for sid in plan.vanished],
            )

    def commit(self, plan: SeriesPlan) -> None:
        self._state = plan.state
        self._next_id = plan.next_id
        for sid, key, *_ in plan.new:
            self._known[key] = sid

    async def compact(
        self, db: aiosqlite.Connection, snaps: list[tuple[int, int]], after: int, through: int
    ) -> None:
        """Inside the compaction's transaction: move series head rows up to ``through`` into chunks."""
        async with db.execute(
            f"SELECT series, snap, {', '.join(SERIES_COLS)} FROM series_head WHERE snap <= ?"
            " ORDER BY series, snap",
            (through,),
        ) as cur:
            rows = list(await cur.fetchall())
        if not rows:
            return
        async with db.execute(
            "SELECT id, kind, last_snap FROM series WHERE last_snap IS NULL OR last_snap > ?", (after,)
        ) as cur:
            info = {r[0]: (r[1], r[2]) async for r in cur}
        chunks = await asyncio.to_thread(_build_chunks, snaps, rows, info, through)
        if chunks:
            await db.executemany(
                "INSERT INTO series_chunks (tier, series, t0_ms, t1_ms, data) VALUES (?, ?, ?, ?, ?)", chunks
            )
        await db.execute("DELETE FROM series_head WHERE snap <= ?", (through,))

    @staticmethod
    def prune_steps(cut: dict[int, int], oldest: int) -> list[tuple[str, str, int]]:
        """(select, delete, cutoff) batches for the writer's prune()."""
        steps = [
            (
                f"SELECT id FROM series_chunks WHERE tier = {t} AND t1_ms < ? LIMIT ?",
                "DELETE FROM series_chunks WHERE id IN",
                c,
            )
            for t, c in cut.items()
        ]
        steps.append(
            (
                "SELECT id FROM series WHERE last_seen_ms < ? AND last_snap IS NOT NULL"
                " AND NOT EXISTS (SELECT 1 FROM series_head h WHERE h.series = series.id) LIMIT ?",
                "DELETE FROM series WHERE id IN",
                oldest,
            )
        )
        return steps


def last_per_bucket(
    entries: Sequence[tuple[int, Vals]],
    ids: Sequence[int],
    ts: Sequence[int],
    start: int,
    end: int,
    bucket_ms: int,
) -> list[tuple[int, Vals]]:
    """The values held at the last snapshot of each bucket in [start, end] (carried forward), by bucket."""
    lo, hi = bisect_left(ids, start), bisect_right(ids, end)
    keys = [e[0] for e in entries]
    out: dict[int, Vals] = {}
    for pos in range(lo, hi):
        i = bisect_right(keys, ids[pos]) - 1
        if i >= 0:
            out[ts[pos] // bucket_ms] = entries[i][1]
    return sorted(out.items())


def _build_chunks(
    snaps: list[tuple[int, int]],
    rows: Sequence[Sequence[Any]],
    info: dict[int, tuple[str, int | None]],
    through: int,
) -> list[tuple[int, int, int, int, bytes]]:
    ids = [s[0] for s in snaps]
    ts = [s[1] for s in snaps]
    out: list[tuple[int, int, int, int, bytes]] = []
    for sid, group in groupby(rows, key=lambda r: r[0]):
        kind, last = info.get(sid, ("host", through))
        n = len(SERIES_FIELDS.get(kind, GROUP_FIELDS))
        entries = [(r[1], tuple(r[2 : 2 + n])) for r in group]
        start = entries[0][0]
        end = through if last is None else min(max(last, entries[-1][0]), through)
        lo, hi = bisect_left(ids, start), bisect_right(ids, end)
        if hi <= lo:
            continue
        out.append((TIER_RAW, sid, ts[lo], ts[hi - 1], codec.encode(entries)))
        for tier in (TIER_MINUTE, TIER_HOUR):
            bm = BUCKET_MS[tier]
            b = last_per_bucket(entries, ids, ts, start, end, bm)
            if b:
                out.append((tier, sid, b[0][0] * bm, b[-1][0] * bm, codec.encode(b)))
    return out
