"""Human output for memwatchctl: rich tables, local times, human sizes, and a terminal chart."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from memwatchd.store.rows import TopRow, TopSummary
from memwatchd.text import shown
from memwatchd.units import format_duration, format_size

# Sort orders of `top`, shared by the table and the live view.
SORT_KEYS: dict[str, Callable[[TopRow], Any]] = {
    "rss": lambda r: r.rss_kb or 0,
    "anon": lambda r: r.anon_kb or 0,
    "swap": lambda r: r.swap_kb or 0,
    "growth": lambda r: r.growth_kb_per_h if r.growth_kb_per_h is not None else float("-inf"),
    "mmap": lambda r: (r.mmap_bytes_per_s or 0, r.mmap_bytes or 0),
}

_BLOCKS = " ▁▂▃▄▅▆▇█"


UNLIMITED_WIDTH = 1 << 20  # "no limit" for rich: tables are as wide as their widest values


def console() -> Console:
    """A console writing to the current stdout. On a terminal, tables fit its width (cut with '…'); into a
    pipe or a file, values are never cut, whatever COLUMNS says (as ps and sqlite-utils do)."""
    width = None if sys.stdout.isatty() else UNLIMITED_WIDTH
    return Console(width=width, markup=False, emoji=False, highlight=False, soft_wrap=False)


def clean(s: str | None) -> str:
    """A process name, unit or cgroup made safe to print (text.shown: controls escaped); None is '-'."""
    return "-" if s is None else shown(s)


def when(ts: float | None) -> str:
    """Local date and time of a unix timestamp."""
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def kb(v: float | None) -> str:
    return "-" if v is None else format_size(v * 1024)


def size(v: float | None) -> str:
    return "-" if v is None else format_size(v)


def rate(v: float | None, unit: str = "/s") -> str:
    if v is None:
        return "-"
    return f"{format_size(v)}{unit}"


def num(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}" if abs(v) >= 100 or v == int(v) else f"{v:.2f}"


def growth(kb_per_h: float | None) -> str:
    if kb_per_h is None:
        return "-"
    sign = "+" if kb_per_h > 0 else ""
    return f"{sign}{format_size(kb_per_h * 1024)}/h"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[str] | None = None) -> Table:
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, expand=False)
    for h in headers:
        t.add_column(
            h, justify="right" if right and h in right else "left", no_wrap=True, overflow="ellipsis"
        )
    for r in rows:
        t.add_row(*(Text(c) for c in r))
    return t


TOP_HEADERS = ("PID", "COMM", "UNIT", "RSS", "ANON", "SWAP", "GROWTH", "MMAP/S", "MMAP B/S", "MEAN MAP")


def top_cells(r: TopRow) -> list[str]:
    """One `top` row as display strings, in TOP_HEADERS order (the plain table and the live view)."""
    return [
        str(r.pid),
        clean(r.comm),
        clean(r.unit),
        kb(r.rss_kb),
        kb(r.anon_kb),
        kb(r.swap_kb),
        growth(r.growth_kb_per_h),
        num(r.mmaps_per_s),
        rate(r.mmap_bytes_per_s),
        size(r.mean_mmap_bytes),
    ]


def top_summary(s: TopSummary) -> str:
    parts = [
        when(s.ts),
        f"mem {kb(s.mem_total_kb)} total, {kb(s.mem_available_kb)} available",
        f"swap {kb(s.swap_used_kb)} used of {kb(s.swap_total_kb)}",
        f"{s.processes} processes",
        f"alloc {num(s.mmaps_per_s)} mmaps/s {rate(s.mmap_bytes_per_s)} mmap {rate(s.brk_bytes_per_s)} brk",
    ]
    return "  ".join(parts)


def span(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(seconds)


def chart(series: Sequence[tuple[float, float]], width: int, height: int) -> list[str]:
    """An area chart of (ts, value) points, one column per time slice (last value in it, carried forward)."""
    if not series:
        return ["(no data in range)"]
    t0, t1 = series[0][0], series[-1][0]
    cols: list[float | None] = [None] * width
    step = (t1 - t0) / width if t1 > t0 else 1.0
    for ts, v in series:
        c = min(width - 1, int((ts - t0) / step)) if t1 > t0 else 0
        cols[c] = v
    last: float | None = None
    for i, col in enumerate(cols):
        if col is None:
            cols[i] = last
        last = cols[i]
    vals = [v for v in cols if v is not None]
    lo, hi = min(vals), max(vals)
    if hi == lo:
        lo = 0.0 if hi > 0 else hi - 1
    levels = height * 8
    label_w = 7
    lines = []
    heights = [None if v is None else round((v - lo) / (hi - lo) * (levels - 1)) + 1 for v in cols]
    for row in range(height - 1, -1, -1):
        base = row * 8
        chars = []
        for h in heights:
            if h is None:
                chars.append(" ")
            else:
                chars.append(_BLOCKS[max(0, min(8, h - base))])
        if row == height - 1:
            label = size(hi)
        elif row == 0:
            label = size(lo)
        elif row == height // 2:
            label = size((hi + lo) / 2)
        else:
            label = ""
        lines.append(f"{label:>{label_w}} ┤{''.join(chars)}")
    left, right = when(t0), when(t1)
    pad = max(1, width - len(left) - len(right))
    lines.append(" " * label_w + " └" + "─" * width)
    lines.append(" " * (label_w + 2) + left + " " * pad + right)
    return lines
