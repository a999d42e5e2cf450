"""Rule windows of many processes on one shared time axis: a few bytes per point instead of a Window each.

A Window (alerts/fit.py) keeps its own times and values: about 1.2 KB for a full window of 60 points with its
track, times 10,000 processes. The alert engine keeps, per rule, one Axis of point times (thinned exactly as
a Window thins its samples: the newest point is overwritten until it is at least `step` after the point
before it), and per process only a Series: the axis index of its first point and its values, aligned to the
axis. A series whose values are all equal (an idle process: the usual case) keeps one value and a count.
Kinds still judge a Window: `view()` builds one from the series when a judgement needs it.

Points are thinned per rule, not per process: a process that appears mid-step gets its first point at the
step's (moving) newest point, as if it had been there since the step began; from then on it has the points
of every other process of the rule. A value missing for a while (`carry` off) leaves no points in that gap.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left

from memwatchd.alerts.fit import MAX_POINTS, Window

_TRIM_BATCH = 256  # axis points dropped from the front at once (deleting from the front moves the rest)
_F32 = array("f", [0.0])


def f32(x: float) -> float:
    """x rounded to float32, as a compact Window stores values."""
    _F32[0] = x
    return _F32[0]


class Axis:
    """The point times of one rule's windows (monotonic seconds); `base` is the absolute index of t[0]."""

    __slots__ = ("window_s", "step", "t", "base", "new")

    def __init__(self, window_s: float, max_points: int = MAX_POINTS) -> None:
        self.window_s = window_s
        self.step = window_s / max_points
        self.t = array("d")
        self.base = 0
        self.new = False  # the last advance made a new point (False: it moved the newest one)

    @property
    def last(self) -> int:
        """Absolute index of the newest point (-1 before the first advance)."""
        return self.base + len(self.t) - 1

    def advance(self, mono: float) -> None:
        """One snapshot at `mono`: a new newest point, or the provisional newest point moved to `mono`."""
        t = self.t
        if t and mono < t[-1]:  # cannot happen with a monotonic clock; never mix two time bases
            self.base += len(t) + 1  # every series now starts before the axis: all its points are dropped
            del t[:]
        self.new = not (len(t) >= 2 and t[-1] - t[-2] < self.step)
        if self.new:
            t.append(mono)
        else:
            t[-1] = mono
        # points older than a window and a step can be in no series' window any more: dropped in batches
        cut = bisect_left(t, mono - self.window_s - 2 * self.step)
        if cut > _TRIM_BATCH:
            del t[:cut]
            self.base += cut

    def first_in_window(self, end: int) -> int:
        """Absolute index of the oldest point within window_s of point `end` (as Window prunes)."""
        i = end - self.base
        return self.base + bisect_left(self.t, self.t[i] - self.window_s, 0, i + 1)


class Series:
    """The points of one metric of one process on an Axis: values aligned to axis indices first..first+n-1.

    While every value is equal `vals` is None and `val` holds it (stored as float32, like a compact Window);
    `cnt` is the optional second column (leak rules: resident bytes; NaN where unknown). NaN in `vals` marks
    an index with no point (a gap while the value was missing). `carry`: the last value still holds (the
    engine did not show this series the snapshots where its value did not change); off after a gap starts.
    """

    __slots__ = ("first", "n", "val", "vals", "cnt", "carry", "gaps")

    def __init__(self, with_counter: bool) -> None:
        self.first = 0
        self.n = 0
        self.val = 0.0
        self.vals: array[float] | None = None
        self.cnt: array[float] | None = array("d") if with_counter else None
        self.carry = True
        self.gaps = False  # vals may hold NaN (views then keep only the points that have a value)

    def __len__(self) -> int:
        return self.n

    @property
    def last(self) -> float | None:
        if not self.n:
            return None
        return self.val if self.vals is None else self.vals[-1]

    def reset(self) -> None:
        self.n = 0
        self.vals = None
        self.gaps = False
        if self.cnt is not None:
            del self.cnt[:]
        self.carry = True

    def catch_up(self, axis: Axis, end: int) -> None:
        """Extend the last value (and counter) through axis index `end`: the snapshots it was not shown."""
        old_end = self.first + self.n - 1
        if not self.n or not self.carry or end < old_end:
            return
        if end == old_end:  # the newest point may have moved forward in time: older points may leave
            self._prune(axis)
            return
        start = axis.first_in_window(end)
        if start > old_end:  # idle for longer than the window: only the held value is left
            last = self.last
            c = self.cnt[-1] if self.cnt is not None else 0.0
            self.first, self.n, self.vals, self.gaps = start, end - start + 1, None, False
            self.val = last if last is not None else 0.0
            if self.cnt is not None:
                self.cnt = array("d", [c]) * self.n
            return
        k = end - old_end
        if self.vals is not None:
            self.vals.extend(array("f", [self.vals[-1]]) * k)
        if self.cnt is not None:
            self.cnt.extend(array("d", [self.cnt[-1]]) * k)
        self.n += k
        self._prune(axis)

    def add(self, axis: Axis, value: float, counter: float | None) -> bool:
        """The sample of the current snapshot (axis.last); True when it made a new point of this series
        (False: it replaced the newest point, as Window.add returns)."""
        cur = axis.last
        v = f32(value)
        c = counter if counter is not None else math.nan
        if not self.n:
            self.first, self.n, self.val, self.vals, self.carry, self.gaps = cur, 1, v, None, True, False
            if self.cnt is not None:
                self.cnt.append(c)
            return True
        end = self.first + self.n - 1
        if end == cur:  # this snapshot's point already holds a value of ours: the newest sample replaces it
            self._set_last(v)
            if self.cnt is not None:
                self.cnt[-1] = c
            self._prune(axis)
            return False
        appended = axis.new or not self.carry
        if self.carry:
            self.catch_up(axis, cur - 1)
        else:
            gap = cur - 1 - end
            if gap > 0:
                self._materialize()
                assert self.vals is not None
                self.vals.extend(array("f", [math.nan]) * gap)
                self.gaps = True
                if self.cnt is not None:
                    self.cnt.extend(array("d", [math.nan]) * gap)
                self.n += gap
        self._append(v)
        if self.cnt is not None:
            self.cnt.append(c)
        self.carry = True
        self._prune(axis)
        return appended

    def stop_carry(self) -> None:
        """The value went missing: no points until it is back (the caller shows no sample meanwhile)."""
        self.carry = False

    def _set_last(self, v: float) -> None:
        if self.vals is None:
            if v == self.val or self.n == 1:
                self.val = v
                return
            self._materialize()
        assert self.vals is not None
        self.vals[-1] = v

    def _append(self, v: float) -> None:
        if self.vals is None and v != self.val:
            self._materialize()
        if self.vals is not None:
            self.vals.append(v)
        self.n += 1

    def _materialize(self) -> None:
        if self.vals is None:
            self.vals = array("f", [self.val]) * self.n

    def _prune(self, axis: Axis) -> None:
        start = axis.first_in_window(self.first + self.n - 1)
        k = start - self.first
        if k <= 0:
            return
        k = min(k, self.n)
        self.first += k
        self.n -= k
        if self.vals is not None:
            del self.vals[:k]
            v0 = self.vals[0] if self.vals else math.nan
            if self.vals.count(v0) == len(self.vals):  # all equal again (NaN never is): one value suffices
                self.val, self.vals, self.gaps = v0, None, False
        if self.cnt is not None:
            del self.cnt[:k]

    def view(self, axis: Axis) -> Window:
        """The series as the Window a kind judges (same points, times from the axis)."""
        w = Window.__new__(Window)  # filled below: no empty arrays made only to be replaced
        w.window_s, w.step = axis.window_s, axis.step
        if not self.n:
            w.t, w.v, w.c = array("d"), array("f"), array("d") if self.cnt is not None else None
            return w
        i = self.first - axis.base
        t = axis.t[i : i + self.n]
        v = self.vals if self.vals is not None else array("f", [self.val]) * self.n
        c = self.cnt
        if self.gaps and self.vals is not None:  # points only where a value is
            keep = [k for k, x in enumerate(self.vals) if x == x]
            t = array("d", [t[k] for k in keep])
            v = array("f", [v[k] for k in keep])
            c = array("d", [c[k] for k in keep]) if c is not None else None
        w.t, w.v, w.c = t, v, c
        return w
