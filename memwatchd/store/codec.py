"""Compact encoding of one process's series: the blob in ``chunks.data``.

A chunk is a format byte (1: plain; 2: the same stream zlib-compressed, used when that is smaller), then
entries ``(key, values)`` with strictly increasing keys. Each entry is stored as: varint key delta (the
first one absolute), varint change mask (bit i: field i differs from the previous entry), then for each set
bit one varint code: 0 = None, else zigzag(value - previous) + 1 (a None previous counts as 0). An entry
whose values did not change costs two bytes; a typical RSS change four to eight.

Raw chunks key entries by snapshot id with the RAW_FIELDS values. Rollup chunks key them by bucket number
(minutes or hours since the epoch) with ``Agg`` values stored in a transformed form (min/max/sum relative to
the bucket's last value) so that a steady process's buckets are all-zero deltas.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence

from memwatchd.store.schema import RAW_FIELDS

FORMAT = 1
FORMAT_ZLIB = 2
Values = tuple[int | None, ...]

ROLL_METRICS = ("rss_kb", "anon_kb", "swap_kb")
ROLL_LASTS = tuple(f for f in RAW_FIELDS if f not in ROLL_METRICS)
METRIC_IDX = tuple(RAW_FIELDS.index(m) for m in ROLL_METRICS)  # positions of ROLL_METRICS in raw values
LAST_IDX = tuple(RAW_FIELDS.index(f) for f in ROLL_LASTS)  # positions of ROLL_LASTS in raw values
# Agg layout: [n, (min, max, sum, cnt, last) per metric..., last of each ROLL_LASTS field...]
AGG_LEN = 1 + 5 * len(ROLL_METRICS) + len(ROLL_LASTS)
_STORED_LEN = AGG_LEN


def _put(out: bytearray, v: int) -> None:
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def encode(entries: Iterable[tuple[int, Sequence[int | None]]]) -> bytes:
    """Encode entries with strictly increasing keys; all value tuples have the same length."""
    out = bytearray((FORMAT,))
    prev: Sequence[int | None] | None = None
    prev_key = 0
    for key, vals in entries:
        if prev is None:
            prev = (None,) * len(vals)
        _put(out, key - prev_key)
        prev_key = key
        mask = 0
        codes: list[int] = []
        for i, (v, p) in enumerate(zip(vals, prev, strict=True)):
            if v != p or (v is None) != (p is None):
                mask |= 1 << i
                if v is None:
                    codes.append(0)
                else:
                    d = v - (p or 0)
                    codes.append((d << 1) + 1 if d >= 0 else ((-d) << 1))
        _put(out, mask)
        for c in codes:
            _put(out, c)
        prev = vals
    if len(out) > 64:
        packed = zlib.compress(bytes(out[1:]), 6)
        if len(packed) + 1 < len(out):
            return bytes((FORMAT_ZLIB,)) + packed
    return bytes(out)


def decode(data: bytes, nfields: int) -> list[tuple[int, Values]]:
    """Inverse of encode(); raises ValueError on a malformed blob."""
    if data and data[0] == FORMAT_ZLIB:
        try:
            data = bytes((FORMAT,)) + zlib.decompress(data[1:])
        except zlib.error:
            raise ValueError("corrupt compressed chunk") from None
    if not data or data[0] != FORMAT:
        raise ValueError("unknown chunk format")
    out: list[tuple[int, Values]] = []
    prev: Values = (None,) * nfields
    key = 0
    pos, n = 1, len(data)
    try:
        while pos < n:
            # key delta
            b = data[pos]
            pos += 1
            d = b & 0x7F
            shift = 7
            while b & 0x80:
                b = data[pos]
                pos += 1
                d |= (b & 0x7F) << shift
                shift += 7
            key += d
            # mask
            b = data[pos]
            pos += 1
            mask = b & 0x7F
            shift = 7
            while b & 0x80:
                b = data[pos]
                pos += 1
                mask |= (b & 0x7F) << shift
                shift += 7
            if mask:
                vals = list(prev)
                i = 0
                while mask:
                    if mask & 1:
                        b = data[pos]
                        pos += 1
                        c = b & 0x7F
                        shift = 7
                        while b & 0x80:
                            b = data[pos]
                            pos += 1
                            c |= (b & 0x7F) << shift
                            shift += 7
                        if c == 0:
                            vals[i] = None
                        else:
                            base = vals[i] or 0
                            vals[i] = base + (c >> 1) if c & 1 else base - (c >> 1)
                    mask >>= 1
                    i += 1
                if i > nfields:
                    raise ValueError("chunk field index out of range")
                prev = tuple(vals)
            out.append((key, prev))
    except IndexError:
        raise ValueError("truncated chunk") from None
    return out


# ---- rollup values ----------------------------------------------------------------------------------


def agg_to_stored(a: Sequence[int | None]) -> Values:
    """Agg -> stored tuple: per metric (last, last - min, max - last, sum - last * cnt, n - cnt)."""
    n = a[0]
    assert n is not None
    out: list[int | None] = [n]
    for m in range(len(ROLL_METRICS)):
        mn, mx, sm, cnt, last = a[1 + 5 * m : 6 + 5 * m]
        if not cnt or last is None or mn is None or mx is None or sm is None:
            out += [None, None, None, None, n]
        else:
            out += [last, last - mn, mx - last, sm - last * cnt, n - cnt]
    out += a[1 + 5 * len(ROLL_METRICS) :]
    return tuple(out)


def stored_to_agg(s: Sequence[int | None]) -> Values:
    """Inverse of agg_to_stored()."""
    n = s[0]
    assert n is not None
    out: list[int | None] = [n]
    for m in range(len(ROLL_METRICS)):
        last, lo, hi, sdev, miss = s[1 + 5 * m : 6 + 5 * m]
        cnt = n - (miss or 0)
        if last is None or not cnt:
            out += [None, None, 0, 0, None]
        else:
            out += [last - (lo or 0), last + (hi or 0), last * cnt + (sdev or 0), cnt, last]
    out += s[1 + 5 * len(ROLL_METRICS) :]
    return tuple(out)


def encode_raw(entries: Iterable[tuple[int, Values]]) -> bytes:
    return encode(entries)


def decode_raw(data: bytes) -> list[tuple[int, Values]]:
    return decode(data, len(RAW_FIELDS))


def encode_agg(entries: Iterable[tuple[int, Values]]) -> bytes:
    return encode((k, agg_to_stored(a)) for k, a in entries)


def decode_agg(data: bytes) -> list[tuple[int, Values]]:
    return [(k, stored_to_agg(s)) for k, s in decode(data, _STORED_LEN)]


def encode_period(snaps: Sequence[tuple[int, int]]) -> bytes:
    """The snapshots of a period, (id, ts_ms) in id order, as runs of consecutive ids in one minute (the
    ``periods.data`` blob): entries keyed by a run's first id holding (minute number, snapshot count)."""
    runs: list[tuple[int, list[int]]] = []
    for sid, ts in snaps:
        m = ts // 60_000
        if runs and runs[-1][1][0] == m and runs[-1][0] + runs[-1][1][1] == sid:
            runs[-1][1][1] += 1
        else:
            runs.append((sid, [m, 1]))
    return encode((sid, (m, n)) for sid, (m, n) in runs)


def decode_period(data: bytes) -> list[tuple[int, int, int]]:
    """Inverse of encode_period(): (first id, minute number, count) per run."""
    return [(sid, v[0] or 0, v[1] or 0) for sid, v in decode(data, 2)]
