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

Stepped leaks (1 MiB kept every 20 s): while the window holds three steps each carries a third of the rise;
when the window slides so that its slice medians see only two, each carries half and the test above fails for
part of every step period, which reset `for`. So there is weaker evidence (`growth_holds`) that starts and
keeps the `for` clock of a pending condition: the largest step may carry up to HOLD_STEP_SHARE of the rise as
long as the middle half of the rise is spread over at least MIN_RISE_SPREAD of the slices (two steps a period
apart; a jump smeared over two neighbouring slices is still one jump). The engine fires only once the full
verdict has also held while pending, so two jumps alone never fire.

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
HOLD_STEP_SHARE = 0.65  # holding: two equal steps carry 0.5 each; one jump with noise ~0.8 or more
MIN_RISE_SPREAD = 0.2  # holding: share of the slice steps between 25 % and 75 % of the rise
MIN_RISE_SHARE = 0.5
CLEAR_RATE_SHARE = 0.5  # hysteresis: a growth alert clears only when the slope is below half of min_rate
RECENT_SHARE = 1 / 3  # ... over the whole window, or over its newest third (a plateau after a warm-up)
THRESHOLD_CLEAR_SHARE = 0.9  # a threshold alert clears only below 90% of the threshold
DEFAULT_LEAK_RATE = 1024 * 1024 / 60.0  # 1MB/min, for leak rules without min_rate
RESIDENT_SHARE = 0.5  # leak: resident memory grows at >= this share of the leak rate (pages fault in late)
RESIDENT_R2 = 0.5  # leak: ... along a line that explains at least this much (a sawtooth does not)


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


def resident_value(p: ProcessSnapshot) -> float | None:
    """Resident memory that a leak makes grow, in bytes: anonymous RSS, or RSS when anon is unknown."""
    kb = p.anon_kb if p.anon_kb is not None else p.rss_kb
    return None if kb is None else kb * 1024.0


class Window:
    """The last window_s seconds (monotonic) of one metric of one process, thinned to about MAX_POINTS.

    The newest point always holds the newest sample: it is overwritten until it is at least `step` after the
    point before it, then kept. Optional third column: a second metric (leak rules: resident bytes).
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
    spread: float = 0.0  # share of the slice steps between reaching 25 % and 75 % of the rise

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
        spread=rise_spread(med),
    )


def rise_spread(med: Sequence[float]) -> float:
    """How spread out in time the rise of the slice medians is: the share of slice steps between the first
    slice at >= 25 % of the net rise and the first at >= 75 % (0 for one jump, about 0.5 for a straight line,
    1/3 for two equal steps a third of the window apart)."""
    if len(med) < 3:
        return 0.0
    rise = med[-1] - med[0]
    if rise <= 0:
        return 0.0
    q1 = next(i for i, m in enumerate(med) if m - med[0] >= 0.25 * rise)
    q3 = next(i for i, m in enumerate(med) if m - med[0] >= 0.75 * rise)
    return (q3 - q1) / (len(med) - 1)


def window_ready(w: Window) -> bool:
    """Enough of the window is filled to judge it."""
    return len(w) >= MIN_POINTS and w.span >= COVERAGE * w.window_s


def could_grow(w: Window, min_rate: float) -> bool:
    """Cheap pre-check implied by the rise test: skip the fit for processes that did not move."""
    return max(w.v) - min(w.v) >= MIN_RISE_SHARE * min_rate * w.span


def growth_verdict(f: Fit, min_rate: float) -> bool:
    """True when the fit shows steady growth at >= min_rate (see the module docstring)."""
    return _grows(f, min_rate) and f.max_step < MAX_STEP_SHARE * f.rise


def growth_holds(f: Fit, min_rate: float) -> bool:
    """The weaker evidence that starts and keeps a pending condition: as growth_verdict, but two regular
    steps (each carrying half of the rise, a step period apart) are enough (see the module docstring)."""
    return _grows(f, min_rate) and f.max_step < HOLD_STEP_SHARE * f.rise and f.spread >= MIN_RISE_SPREAD


def _grows(f: Fit, min_rate: float) -> bool:
    return (
        f.n >= MIN_POINTS
        and f.slope >= min_rate
        and f.r2 >= MIN_R2
        and f.steps >= 2
        and f.nonfalling_share >= MIN_NONFALLING
        and f.rise > 0
        and f.rise >= MIN_RISE_SHARE * min_rate * f.span_s
    )


def growth_cleared(f: Fit, min_rate: float) -> bool:
    """Hysteresis for growth and leak alerts: the slope is clearly below the firing rate."""
    return f.slope < CLEAR_RATE_SHARE * min_rate


def growth_stopped_recently(w: Window, min_rate: float) -> bool:
    """The newest RECENT_SHARE of the window is flat (slope below CLEAR_RATE_SHARE of min_rate).

    Lets a warm-up that plateaued resolve within a window: the whole-window slope stays high until the
    ramp has left the window. A stepped leak keeps a step in its newest third most of the time, and the
    engine holds the clear condition for at least half a window before resolving, so it does not resolve.
    """
    cutoff = w.t[-1] - RECENT_SHARE * w.window_s if w.t else 0.0
    n = sum(1 for t in w.t if t >= cutoff)
    if n < MIN_POINTS // 2:
        return False
    f = fit(w.t[-n:], w.v[-n:])
    return f is not None and f.slope < CLEAR_RATE_SHARE * min_rate


def resident_corroborates(w: Window, min_rate: float) -> bool:
    """Leak evidence from /proc: resident memory (the window's second column) grows with the mappings.

    Mapped bytes alone can grow with nothing behind them (address space reserved, a raw figure that
    counts in-place recommits); a leak also makes pages resident. Resident memory must rise at
    >= RESIDENT_SHARE of the leak rate, mostly without falling, along a line (RESIDENT_R2): a GC or
    commit/uncommit sawtooth does not. Rare allocators pass: nothing here asks how often they allocate.
    """
    if w.c is None:
        return False
    pts = [(t, c) for t, c in zip(w.t, w.c, strict=True) if not math.isnan(c)]
    if len(pts) < MIN_POINTS:
        return False
    f = fit([p[0] for p in pts], [p[1] for p in pts])
    rate = RESIDENT_SHARE * min_rate
    return (
        f is not None
        and f.slope >= rate
        and f.r2 >= RESIDENT_R2
        and f.nonfalling_share >= MIN_NONFALLING
        and f.rise >= MIN_RISE_SHARE * rate * f.span_s
    )


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
