"""Pure rule evaluation: windows of points, robust slope fits, growth/leak/threshold tests, forecasts.

No I/O and no clock reads: every time is a monotonic second passed in by the caller.

Why a plain least-squares slope is not enough: a single step (a cache filled once) or a sawtooth (a garbage
collector) can produce a steep slope over a window. A window fires only when all of these hold
(see `growth_verdict`):

- the points cover at least COVERAGE of the window, with at least MIN_POINTS points;
- the least-squares slope is >= min_rate and the line explains the data (R^2 >= MIN_R2);
- cut into up to SLICES equal time slices, the slice medians do not fall in >= MIN_NONFALLING of the steps;
- no single slice step carries MAX_STEP_SHARE or more of the net rise (a one-off jump carries all of it);
- the net rise (last slice median - first) is at least half of min_rate x span.

Slice medians (not single points) make the shape tests robust to per-sample noise, so slow leaks under noisy
RSS still pass while the line fit keeps the rate honest.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

from memwatchd.models import MemInfo, ProcessSnapshot

MAX_POINTS = 60  # per window: points closer than window/MAX_POINTS are merged (bounded memory and CPU)
MIN_POINTS = 6
COVERAGE = 0.8
MIN_R2 = 0.8
SLICES = 10
MIN_NONFALLING = 0.7
MAX_STEP_SHARE = 0.5
MIN_RISE_SHARE = 0.5
CLEAR_RATE_SHARE = 0.5  # hysteresis: a growth alert clears only when the slope is below half of min_rate
THRESHOLD_CLEAR_SHARE = 0.9  # a threshold alert clears only below 90% of the threshold
DEFAULT_LEAK_RATE = 1024 * 1024 / 60.0  # 1MB/min, for leak rules without min_rate
MIN_ALLOC_SHARE = 0.6  # leak: allocation counters rose in at least this share of slice steps


def metric_value(p: ProcessSnapshot, metric: str) -> float | None:
    """The rule metric in bytes, or None when the source did not see it (no BPF, no swap field)."""
    if metric == "rss":
        kb = p.rss_kb
    elif metric == "anon":
        kb = p.anon_kb
    elif metric == "swap":
        kb = p.swap_kb
    elif metric == "mapped":
        mb = p.mapped_bytes
        return None if mb is None else float(mb)
    else:
        raise ValueError(f"unknown metric {metric!r}")
    return None if kb is None else kb * 1024.0


def alloc_count(p: ProcessSnapshot) -> int | None:
    """Cumulative allocation calls seen by eBPF (mmap + brk), or None without BPF."""
    if p.mmap_count is None:
        return None
    return p.mmap_count + (p.brk_count or 0)


class Window:
    """The last window_s seconds (monotonic) of one metric of one process, thinned to about MAX_POINTS.

    The newest point always holds the newest sample: it is overwritten until it is at least `step` after the
    point before it, then kept. Optional third column: a cumulative counter (allocations) for leak rules.
    compact stores values as float32 (4 bytes, ~1e-7 relative precision: 64 bytes in 1 GB), which is what
    the engine uses to stay small with thousands of processes.
    """

    __slots__ = ("window_s", "step", "t", "v", "c")

    def __init__(
        self, window_s: float, with_counter: bool = False, compact: bool = False, max_points: int = MAX_POINTS
    ) -> None:
        self.window_s = window_s
        self.step = window_s / max_points
        self.t = array("d")
        self.v = array("f" if compact else "d")
        self.c: array[float] | None = array("d") if with_counter else None

    def __len__(self) -> int:
        return len(self.t)

    def add(self, mono: float, value: float, counter: float | None = None) -> bool:
        """Add a sample; True when it became a new point (False: it replaced the provisional newest one).

        Samples older than the window are dropped; a time going back resets the window.
        """
        t, v, c = self.t, self.v, self.c
        if t and mono < t[-1]:
            # cannot happen with a monotonic clock; never mix two time bases
            del t[:], v[:]
            if c is not None:
                del c[:]
        appended = not (len(t) >= 2 and t[-1] - t[-2] < self.step)
        if not appended:
            t[-1], v[-1] = mono, value
            if c is not None:
                c[-1] = counter if counter is not None else math.nan
        else:
            t.append(mono)
            v.append(value)
            if c is not None:
                c.append(counter if counter is not None else math.nan)
        self._prune(mono)
        return appended

    def _prune(self, mono: float) -> None:
        t, v, c = self.t, self.v, self.c
        cutoff = mono - self.window_s
        if t and t[0] < cutoff:
            n = 0
            while n < len(t) and t[n] < cutoff:
                n += 1
            del t[:n], v[:n]
            if c is not None:
                del c[:n]

    def add_run(self, times: Sequence[float], i: int, j: int, value: float, counter: float | None) -> None:
        """The same as add(times[k], value, counter) for k in i..j-1 (ascending, after the newest point), in
        O(points kept x log) instead of O(j - i): how a value that did not change is caught up with lazily.
        """
        t, v, c = self.t, self.v, self.c
        cval = counter if counter is not None else math.nan
        while i < j:
            if len(t) >= 2 and t[-1] - t[-2] < self.step:
                # the newest point is provisional: samples overwrite it up to and including the first one at
                # least `step` after the point before it; the sample after that one is appended
                k = bisect_left(times, t[-2] + self.step, i, j)
                last = k if k < j else j - 1
                t[-1], v[-1] = times[last], value
                if c is not None:
                    c[-1] = cval
                i = last + 1
            else:
                t.append(times[i])
                v.append(value)
                if c is not None:
                    c.append(cval)
                i += 1
        if t:
            self._prune(t[-1])

    @property
    def span(self) -> float:
        return self.t[-1] - self.t[0] if self.t else 0.0

    @property
    def last(self) -> float | None:
        return self.v[-1] if self.v else None

    def series(self, wall_now: float, mono_now: float) -> tuple[tuple[float, float], ...]:
        """The points as (wall time, value): wall times are derived from the current offset, not stored."""
        off = wall_now - mono_now
        return tuple((t + off, v) for t, v in zip(self.t, self.v, strict=True))


@dataclass(frozen=True, slots=True)
class Fit:
    """Line fit and shape of one window."""

    n: int
    span_s: float
    slope: float  # bytes per second (least squares)
    r2: float
    steps: int  # slice steps
    nonfalling: int  # slice steps that did not fall
    max_step: float  # largest rise between consecutive slice medians
    rise: float  # last slice median - first slice median

    @property
    def nonfalling_share(self) -> float:
        return self.nonfalling / self.steps if self.steps else 0.0

    def describe(self) -> str:
        return f"R²={self.r2:.2f}, {self.nonfalling}/{self.steps} steps up"


def _median_low(xs: list[float]) -> float:
    xs.sort()
    return xs[(len(xs) - 1) // 2]


def slice_medians(t: Sequence[float], v: Sequence[float], slices: int = SLICES) -> list[float]:
    """Lower medians (always a real sample) of up to `slices` equal time slices; empty slices skipped."""
    n = len(t)
    if n == 0:
        return []
    k = min(slices, n)
    t0, span = t[0], t[-1] - t[0]
    if span <= 0:
        return [_median_low(list(v))]
    buckets: list[list[float]] = [[] for _ in range(k)]
    for ti, vi in zip(t, v, strict=True):
        buckets[min(k - 1, int((ti - t0) / span * k))].append(vi)
    return [_median_low(b) for b in buckets if b]


def fit(t: Sequence[float], v: Sequence[float]) -> Fit | None:
    """Least-squares line and slice shape of the points; None for fewer than 2 points or zero span."""
    n = len(t)
    if n < 2 or t[-1] <= t[0]:
        return None
    t0, v0 = t[0], v[0]  # centre near the data: bytes are large, squares lose precision otherwise
    xs = [x - t0 for x in t]
    ys = [y - v0 for y in v]
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sxy = syy = 0.0
    for x, y in zip(xs, ys, strict=True):
        dx, dy = x - mx, y - my
        sxx += dx * dx
        sxy += dx * dy
        syy += dy * dy
    slope = sxy / sxx if sxx > 0 else 0.0
    r2 = (sxy * sxy) / (sxx * syy) if sxx > 0 and syy > 0 else 0.0
    med = slice_medians(t, v)
    deltas = [b - a for a, b in zip(med, med[1:], strict=False)]
    return Fit(
        n=n,
        span_s=t[-1] - t[0],
        slope=slope,
        r2=r2,
        steps=len(deltas),
        nonfalling=sum(1 for d in deltas if d >= 0),
        max_step=max(deltas, default=0.0),
        rise=(med[-1] - med[0]) if med else 0.0,
    )


def window_ready(w: Window) -> bool:
    """Enough of the window is filled to judge it."""
    return len(w) >= MIN_POINTS and w.span >= COVERAGE * w.window_s


def could_grow(w: Window, min_rate: float) -> bool:
    """Cheap pre-check implied by the rise test: skip the fit for processes that did not move."""
    return max(w.v) - min(w.v) >= MIN_RISE_SHARE * min_rate * w.span


def growth_verdict(f: Fit, min_rate: float) -> bool:
    """True when the fit shows steady growth at >= min_rate (see the module docstring)."""
    return (
        f.n >= MIN_POINTS
        and f.slope >= min_rate
        and f.r2 >= MIN_R2
        and f.steps >= 2
        and f.nonfalling_share >= MIN_NONFALLING
        and f.rise > 0
        and f.rise >= MIN_RISE_SHARE * min_rate * f.span_s
        and f.max_step < MAX_STEP_SHARE * f.rise
    )


def growth_cleared(f: Fit, min_rate: float) -> bool:
    """Hysteresis for growth and leak alerts: the slope is clearly below the firing rate."""
    return f.slope < CLEAR_RATE_SHARE * min_rate


def allocations_continue(w: Window) -> bool:
    """Leak evidence: the allocation counter rose in most slice steps of the window."""
    if w.c is None:
        return False
    pts = [(t, c) for t, c in zip(w.t, w.c, strict=True) if not math.isnan(c)]
    if len(pts) < MIN_POINTS:
        return False
    med = slice_medians([p[0] for p in pts], [p[1] for p in pts])
    steps = [b - a for a, b in zip(med, med[1:], strict=False)]
    return bool(steps) and sum(1 for s in steps if s > 0) >= MIN_ALLOC_SHARE * len(steps)


def leak_rate(min_rate: float) -> float:
    return min_rate if min_rate > 0 else DEFAULT_LEAK_RATE


def threshold_fired(value: float, threshold: float) -> bool:
    return value >= threshold


def threshold_cleared(value: float, threshold: float) -> bool:
    return value < THRESHOLD_CLEAR_SHARE * threshold


def forecast_s(rate: float | None, meminfo: MemInfo | None) -> float | None:
    """Seconds until host MemAvailable is used up at `rate` bytes/s; None when not growing or unknown."""
    if rate is None or rate <= 0 or meminfo is None:
        return None
    return meminfo.mem_available_kb * 1024.0 / rate
