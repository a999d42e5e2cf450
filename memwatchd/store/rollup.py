"""Rollups of a carried-forward series into per-minute / per-hour buckets. Pure functions, no I/O.

A process's raw series is a list of change entries ``(snap_id, values)``; its value at any snapshot is the
latest entry at or before it (carry forward). A bucket aggregates the values at every snapshot in which the
process was present and whose wall time falls in the bucket: ``n`` snapshots; per metric (rss, anon, swap)
min, max, sum and count of the non-missing values and the last one; for the other fields the last non-missing.
Runs of unchanged values are aggregated as a whole, so the cost is O(changes + buckets), not O(snapshots).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence

from memwatchd.store.codec import AGG_LEN, LAST_IDX, METRIC_IDX, ROLL_LASTS, ROLL_METRICS, Values

_MIDX = METRIC_IDX
_LIDX = LAST_IDX
_NM = len(ROLL_METRICS)


class Buckets:
    """Snapshot positions of one range grouped into maximal runs of the same bucket."""

    def __init__(self, snap_ids: Sequence[int], snap_ts_ms: Sequence[int], bucket_ms: int) -> None:
        self.snap_ids = list(snap_ids)
        self.run_starts: list[int] = []
        self.run_ends: list[int] = []
        self.run_bucket: list[int] = []
        prev = None
        for pos, t in enumerate(snap_ts_ms):
            b = t // bucket_ms
            if b != prev:
                if self.run_starts:
                    self.run_ends.append(pos)
                self.run_starts.append(pos)
                self.run_bucket.append(b)
                prev = b
        if self.run_starts:
            self.run_ends.append(len(self.snap_ids))


def _new() -> list[int | None]:
    acc: list[int | None] = [0]
    for _ in range(_NM):
        acc += [None, None, 0, 0, None]
    acc += [None] * len(_LIDX)
    return acc


def _add(acc: list[int | None], vals: Values, c: int) -> None:
    acc[0] += c  # type: ignore[operator]
    for m, vi in enumerate(_MIDX):
        v = vals[vi]
        if v is None:
            continue
        o = 1 + 5 * m
        mn, mx = acc[o], acc[o + 1]
        if mn is None or v < mn:
            acc[o] = v
        if mx is None or v > mx:
            acc[o + 1] = v
        acc[o + 2] += v * c  # type: ignore[operator]
        acc[o + 3] += c  # type: ignore[operator]
        acc[o + 4] = v
    base = 1 + 5 * _NM
    for j, vi in enumerate(_LIDX):
        v = vals[vi]
        if v is not None:
            acc[base + j] = v


def rollup(
    entries: Sequence[tuple[int, Values]], buckets: Buckets, start_snap: int, end_snap: int
) -> list[tuple[int, Values]]:
    """Aggregate one process's change entries over its presence [start_snap, end_snap] (inclusive)."""
    ids = buckets.snap_ids
    p_lo, p_hi = bisect_left(ids, start_snap), bisect_right(ids, end_snap)
    out: dict[int, list[int | None]] = {}
    starts, ends, bnum = buckets.run_starts, buckets.run_ends, buckets.run_bucket
    for i, (snap, vals) in enumerate(entries):
        a = max(bisect_left(ids, snap), p_lo)
        b = min(bisect_left(ids, entries[i + 1][0]), p_hi) if i + 1 < len(entries) else p_hi
        if a >= b:
            continue
        r = bisect_right(starts, a) - 1
        while r < len(starts) and starts[r] < b:
            lo, hi = max(a, starts[r]), min(b, ends[r])
            if hi > lo:
                acc = out.get(bnum[r])
                if acc is None:
                    acc = out[bnum[r]] = _new()
                _add(acc, vals, hi - lo)
            r += 1
    return [(k, tuple(out[k])) for k in sorted(out)]


def constant(
    vals: Values, runs: Sequence[tuple[int, int, int]], lo: int, hi: int, bucket_ms: int
) -> list[tuple[int, Values]]:
    """Buckets of a process that held ``vals`` over snapshots [lo, hi] (inclusive) of a period given as runs
    of consecutive snapshot ids in one minute: (first id, minute number, count); see codec.encode_period."""
    out: dict[int, list[int | None]] = {}
    for first, minute, count in runs:
        n = min(first + count - 1, hi) - max(first, lo) + 1
        if n <= 0:
            continue
        b = minute * 60_000 // bucket_ms
        acc = out.get(b)
        if acc is None:
            acc = out[b] = _new()
        _add(acc, vals, n)
    return [(k, tuple(out[k])) for k in sorted(out)]


def merge(a: Values, b: Values) -> Values:
    """Combine two aggregates of the same bucket; b holds the later samples."""
    out: list[int | None] = [(a[0] or 0) + (b[0] or 0)]
    for m in range(_NM):
        o = 1 + 5 * m
        amn, amx, asm, acn, ala = a[o : o + 5]
        bmn, bmx, bsm, bcn, bla = b[o : o + 5]
        mn = amn if bmn is None else bmn if amn is None else min(amn, bmn)
        mx = amx if bmx is None else bmx if amx is None else max(amx, bmx)
        out += [mn, mx, (asm or 0) + (bsm or 0), (acn or 0) + (bcn or 0), bla if bla is not None else ala]
    for j in range(1 + 5 * _NM, AGG_LEN):
        out.append(b[j] if b[j] is not None else a[j])
    return tuple(out)


def coarsen(aggs: Sequence[tuple[int, Values]], factor: int) -> list[tuple[int, Values]]:
    """Combine buckets into buckets ``factor`` times longer (minutes -> hours); input in time order."""
    out: dict[int, Values] = {}
    for k, a in aggs:
        kk = k // factor
        prev = out.get(kk)
        out[kk] = a if prev is None else merge(prev, a)
    return [(k, out[k]) for k in sorted(out)]


def merge_sorted(parts: Sequence[Sequence[tuple[int, Values]]]) -> list[tuple[int, Values]]:
    """Union of bucket lists given oldest part first; equal buckets (a wall-clock step) are merged."""
    out: dict[int, Values] = {}
    for part in parts:
        for k, a in part:
            prev = out.get(k)
            out[k] = a if prev is None else merge(prev, a)
    return [(k, out[k]) for k in sorted(out)]


def stats(a: Values, metric: str) -> tuple[int | None, int | None, float | None, int | None]:
    """(min, max, avg, last) of a metric in an aggregate."""
    o = 1 + 5 * ROLL_METRICS.index(metric)
    mn, mx, sm, cnt, last = a[o : o + 5]
    avg = (sm or 0) / cnt if cnt else None
    return mn, mx, avg, last


def last_of(a: Values, field: str) -> int | None:
    """Last value of any raw field in an aggregate."""
    if field in ROLL_METRICS:
        return a[1 + 5 * ROLL_METRICS.index(field) + 4]
    return a[1 + 5 * _NM + ROLL_LASTS.index(field)]
