"""Parsing of human units, in one place: durations ("30m"), sizes ("512MB"), rates ("10MB/h").

Sizes use binary multiples (KB = KiB = 1024 bytes), as /proc and ps do.
All parsers raise ValueError with a message fit to show a user.
"""

from __future__ import annotations

import math
import re

_DURATION_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}
MAX_DURATION_S = 100 * 365.25 * 86400  # 100 years: longer spans are typos, and overflow time arithmetic
_NUM = r"(\d+(?:\.\d+)?|\.\d+)"
_DURATION_RE = re.compile(rf"^{_NUM}\s*([a-z]*)$")
_SIZE_RE = re.compile(rf"^{_NUM}\s*([a-z]*)$")


def parse_duration(text: str | int | float) -> float:
    """Return seconds for "90s", "30m", "2h", "7d", "1w", "1h30m" or a bare number of seconds."""
    if isinstance(text, bool):
        raise ValueError(f"expected a duration like '30m', got {_short(text)}")
    if isinstance(text, int | float):
        value = _float(text)
    else:
        s = text.strip().lower()
        if not s:
            raise ValueError("empty duration")
        value = 0.0
        pos = 0
        for m in re.finditer(r"(\d+(?:\.\d+)?)\s*([a-z]*)\s*", s):
            if m.start() != pos:
                break
            unit = m.group(2) or "s"
            if unit not in _DURATION_UNITS:
                raise ValueError(
                    f"unknown duration unit {_short(unit)} in {_short(text)} (use ms, s, m, h, d, w)"
                )
            value += float(m.group(1)) * _DURATION_UNITS[unit]
            pos = m.end()
        if pos != len(s) or pos == 0:
            raise ValueError(f"expected a duration like '30s', '5m', '2h', '7d', got {_short(text)}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"duration must be a finite non-negative number, got {_short(text)}")
    if value > MAX_DURATION_S:
        raise ValueError(f"duration must be at most 100 years, got {_short(text)}")
    return value


def _float(v: int | float) -> float:
    try:
        return float(v)
    except OverflowError:  # an integer beyond float's range
        return math.inf


def _short(v: object) -> str:
    """repr of a value for an error message, cut so that a huge input cannot make a huge message."""
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def parse_size(text: str | int | float) -> int:
    """Return bytes for "512MB", "2GB", "4k", or a bare number of bytes."""
    if isinstance(text, bool):
        raise ValueError(f"expected a size like '512MB', got {_short(text)}")
    if isinstance(text, int | float):
        value = _float(text)
    else:
        m = _SIZE_RE.match(text.strip().lower())
        if not m or m.group(2) not in _SIZE_UNITS:
            raise ValueError(f"expected a size like '512MB' or '2GB', got {_short(text)}")
        value = float(m.group(1)) * _SIZE_UNITS[m.group(2)]
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"size must be a finite non-negative number, got {_short(text)}")
    return int(value)


def parse_rate(text: str) -> float:
    """Return bytes per second for "10MB/h", "5MB/min", "100KB/s"."""
    if not isinstance(text, str) or "/" not in text:
        raise ValueError(f"expected a rate like '10MB/h' or '5MB/min', got {_short(text)}")
    size, _, per = text.partition("/")
    per = per.strip()
    seconds = parse_duration(per if per[:1].isdigit() else "1" + per)
    if seconds <= 0:
        raise ValueError(f"rate period must be positive in {_short(text)}")
    return parse_size(size) / seconds


def format_size(n_bytes: float | None) -> str:
    """Human size with binary units: 1.5G, 320M, 12K, 512B."""
    if n_bytes is None:
        return "-"
    sign = "-" if n_bytes < 0 else ""
    v = abs(float(n_bytes))
    for unit in ("B", "K", "M", "G", "T"):
        if v < 1024 or unit == "T":
            if unit == "B":
                return f"{sign}{int(v)}B"
            return f"{sign}{v:.1f}{unit}" if v < 10 else f"{sign}{v:.0f}{unit}"
        v /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """Compact duration: 45s, 12m, 3h05m, 2d04h."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s % 60 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def format_rate(bytes_per_s: float) -> str:
    """Rate in the unit a person reads best: per hour for slow growth, per second for fast."""
    per_h = bytes_per_s * 3600
    if abs(per_h) < 1024**3 * 10 and abs(bytes_per_s) < 1024**2:
        return f"{format_size(per_h)}/h"
    return f"{format_size(bytes_per_s)}/s"
