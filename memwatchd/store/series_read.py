"""Read-only queries over the group and host series (see store/series.py and schema.py).

Functions take the reader's sqlite3 connection and run inside its read transaction.
"""

from __future__ import annotations

import sqlite3
from bisect import bisect_left, bisect_right
from typing import Any

from memwatchd.store import codec
from memwatchd.store.schema import (
    BUCKET_MS,
    GROUP_FIELDS,
    HOST_FIELDS,
    SERIES_COLS,
    SERIES_FIELDS,
    TIER_NAMES,
    TIER_RAW,
)
from memwatchd.store.series import ALIAS, HOST_NAME, Vals, last_per_bucket

# Field order of a `groups` row (JSON keys).
GROUP_ROW_FIELDS = (
    "group",
    "by",
    "unit",
    "cgroup",
    "processes",
    "rss_kb",
    "anon_kb",
    "swap_kb",
    "memory_current_kb",
    "memory_limit_kb",
    "growth_kb_per_h",
    "members",
)


def _head(db: sqlite3.Connection, sid: int, n: int) -> list[tuple[int, Vals]]:
    cols = ", ".join(SERIES_COLS[:n])
    return [
        (r[0], tuple(r[1:]))
        for r in db.execute(f"SELECT snap, {cols} FROM series_head WHERE series = ? ORDER BY snap", (sid,))
    ]


def _chunks(
    db: sqlite3.Connection, tier: int, sid: int, lo_ms: int, hi_ms: int, n: int
) -> list[tuple[int, Vals]]:
    out: list[tuple[int, Vals]] = []
    for (data,) in db.execute(
        "SELECT data FROM series_chunks WHERE tier = ? AND series = ? AND t0_ms <= ? AND t1_ms >= ?"
        " ORDER BY t0_ms, id",
        (tier, sid, hi_ms, lo_ms),
    ):
        out += codec.decode(data, n)
    return out


def resolve_alias(own: list[tuple[int, Vals]], target: list[tuple[int, Vals]]) -> list[tuple[int, Vals]]:
    """A unit's entries with each ALIAS marker replaced by its cgroup's values at the same key (carried
    forward); keys are snapshot ids (raw) or bucket numbers (rollups), the same in both lists."""
    if not any(v == ALIAS for _, v in own):
        return own
    okeys, tkeys = [k for k, _ in own], [k for k, _ in target]
    out: list[tuple[int, Vals]] = []
    for k in sorted(set(okeys) | {k for k in tkeys if okeys and k >= okeys[0]}):
        v = own[bisect_right(okeys, k) - 1][1]
        if v == ALIAS:
            i = bisect_right(tkeys, k) - 1
            if i < 0:
                continue
            v = target[i][1]
        if not out or out[-1][1] != v or k in okeys:
            out.append((k, v))
    return out


def _alias_target(db: sqlite3.Connection, sid: int) -> int | None:
    """The cgroup series a unit series points at (series.cgroup)."""
    row = db.execute(
        "SELECT c.id FROM series u JOIN series c ON c.kind = 'cgroup' AND c.name = u.cgroup WHERE u.id = ?",
        (sid,),
    ).fetchone()
    return row[0] if row else None


def _at_or_before(entries: list[tuple[int, Vals]], snap: int) -> tuple[int, Vals] | None:
    i = bisect_right([e[0] for e in entries], snap) - 1
    return entries[i] if i >= 0 else None


def groups(db: sqlite3.Connection, by: str, window_s: float) -> list[dict[str, Any]]:
    """Live groups of one kind ("cgroup" or "unit") with their latest values and growth over window_s.

    growth_kb_per_h is measured on memory_current_kb when the charge is known, else on rss_kb, between the
    latest head row and the one at or before the window's start (None when less than a minute apart).
    """
    latest = db.execute("SELECT id, ts_ms FROM snapshots ORDER BY id DESC LIMIT 1").fetchone()
    if latest is None:
        return []
    sid_now, ts_now = latest
    w = db.execute(
        "SELECT id FROM snapshots WHERE ts_ms <= ? ORDER BY id DESC LIMIT 1",
        (ts_now - round(window_s * 1000),),
    ).fetchone()
    n = len(GROUP_FIELDS)
    out = []
    series = db.execute(
        "SELECT id, name, unit, cgroup FROM series WHERE kind = ? AND last_snap IS NULL ORDER BY name", (by,)
    ).fetchall()
    for sid, name, unit, cgroup in series:
        head = _head(db, sid, n)
        target = _alias_target(db, sid) if by == "unit" else None
        if target is not None:
            head = resolve_alias(head, _head(db, target, n))
        cur = _at_or_before(head, sid_now)
        vals = dict(zip(GROUP_FIELDS, cur[1] if cur else (None,) * n, strict=True))
        growth = None
        if cur is not None and head:
            base = _at_or_before(head, w[0]) if w else None
            base = base or head[0]
            metric = "memory_current_kb" if vals["memory_current_kb"] is not None else "rss_kb"
            b_vals = dict(zip(GROUP_FIELDS, base[1], strict=True))
            b_ts = db.execute("SELECT ts_ms FROM snapshots WHERE id = ?", (base[0],)).fetchone()
            now_v, base_v = vals[metric], b_vals[metric]
            if b_ts is not None and now_v is not None and base_v is not None:
                el = (ts_now - b_ts[0]) / 1000
                if el >= 60:
                    growth = round((now_v - base_v) * 3600 / el, 1)
        col = "cgroup" if by == "cgroup" else "unit"
        members = [
            {"pid": r[0], "start_ticks": r[1], "comm": r[2], "rss_kb": r[3]}
            for r in db.execute(
                "SELECT p.pid, p.start_ticks, p.comm, c.rss_kb"
                f" FROM current c JOIN processes p ON p.id = c.proc WHERE p.{col} = ?"
                " ORDER BY c.rss_kb DESC, p.pid",
                (name,),
            )
        ]
        out.append(
            {
                "group": name,
                "by": by,
                "unit": unit,
                "cgroup": cgroup,
                **vals,
                "growth_kb_per_h": growth,
                "members": members,
            }
        )
    return out


def host_latest(db: sqlite3.Connection) -> dict[str, Any] | None:
    """The host breakdown of the latest snapshot that had one (HOST_FIELDS plus its ts)."""
    row = db.execute(
        f"SELECT h.snap, s.ts_ms, {', '.join('h.' + c for c in SERIES_COLS[: len(HOST_FIELDS)])}"
        " FROM series_head h JOIN series ON series.id = h.series JOIN snapshots s ON s.id = h.snap"
        " WHERE series.kind = 'host' ORDER BY h.snap DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    return {"ts": row[1] / 1000, **dict(zip(HOST_FIELDS, row[2:], strict=True))}


def find_series(db: sqlite3.Connection, kind: str, name: str) -> tuple[int, int, int | None] | None:
    """(id, first_snap, last_snap) of one series, or None."""
    if kind == "host":
        name = HOST_NAME
    row = db.execute(
        "SELECT id, first_snap, last_snap FROM series WHERE kind = ? AND name = ?", (kind, name)
    ).fetchone()
    return (row[0], row[1], row[2]) if row else None


def history(
    db: sqlite3.Connection,
    kind: str,
    name: str,
    since_ms: int,
    until_ms: int,
    tier: int,
    cutoff_ms: int,
    compacted: int,
) -> list[dict[str, Any]]:
    """A series over [since, until], oldest first: a row per change (raw) or per bucket (rollups)."""
    found = find_series(db, kind, name)
    latest = db.execute("SELECT id FROM snapshots ORDER BY id DESC LIMIT 1").fetchone()
    if found is None or latest is None:
        return []
    sid, first_snap, last_snap = found
    end = last_snap if last_snap is not None else latest[0]
    fields = SERIES_FIELDS[kind]
    n = len(fields)
    base: dict[str, Any] = (
        {"tier": TIER_NAMES[tier]}
        if kind == "host"
        else {"by": kind, "group": name, "tier": TIER_NAMES[tier]}
    )
    out: list[dict[str, Any]] = []
    if tier == TIER_RAW:
        rng = db.execute(
            "SELECT id, ts_ms FROM snapshots WHERE ts_ms >= ? AND ts_ms <= ? ORDER BY id",
            (since_ms, until_ms),
        ).fetchall()
        ids = [x[0] for x in rng]
        ts = dict(rng)
        lo, hi = bisect_left(ids, first_snap), bisect_right(ids, end)
        if lo >= hi:
            return []
        first, last = ids[lo], ids[hi - 1]
        entries: list[tuple[int, Vals]] = []
        if first <= compacted:
            entries = _chunks(db, TIER_RAW, sid, ts[first], ts[last], n)
        if last > compacted:
            entries += _head(db, sid, n)
        target = _alias_target(db, sid) if kind == "unit" else None
        if target is not None:
            t_entries: list[tuple[int, Vals]] = []
            if first <= compacted:
                t_entries = _chunks(db, TIER_RAW, target, ts[first], ts[last], n)
            if last > compacted:
                t_entries += _head(db, target, n)
            entries = resolve_alias(entries, t_entries)
        keys = [e[0] for e in entries]
        emit = {first, last}
        emit.update(
            k
            for i, k in enumerate(keys)
            if first <= k <= last and k in ts and (i == 0 or entries[i][1] != entries[i - 1][1])
        )
        for s in sorted(emit):
            i = bisect_right(keys, s) - 1
            if i >= 0:
                out.append({"ts": ts[s] / 1000, **base, **dict(zip(fields, entries[i][1], strict=True))})
        return out
    bm = BUCKET_MS[tier]
    lo_ms = max(since_ms - bm + 1, cutoff_ms)

    def rolled(s_id: int, start: int) -> dict[int, Vals]:
        buckets: dict[int, Vals] = dict(_chunks(db, tier, s_id, lo_ms, until_ms, n))
        if end > compacted:
            head = _head(db, s_id, n)
            if head:
                snaps = db.execute(
                    "SELECT id, ts_ms FROM snapshots WHERE id > ? ORDER BY id", (compacted,)
                ).fetchall()
                ids_h = [x[0] for x in snaps]
                ts_h = [x[1] for x in snaps]
                buckets.update(last_per_bucket(head, ids_h, ts_h, max(head[0][0], start), end, bm))
        return buckets

    buckets = rolled(sid, first_snap)
    target = _alias_target(db, sid) if kind == "unit" else None
    if target is not None:
        buckets = dict(resolve_alias(sorted(buckets.items()), sorted(rolled(target, 0).items())))
    for b in sorted(buckets):
        start = b * bm
        if start + bm <= since_ms or start > until_ms or start < cutoff_ms:
            continue
        out.append({"ts": start / 1000, **base, **dict(zip(fields, buckets[b], strict=True))})
    return out
