"""The two clocks the daemon reads, behind one small interface so tests can drive time."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Wall time (timestamps people read) and monotonic time (intervals, never steps)."""

    def wall(self) -> float: ...

    def mono(self) -> float: ...


class SystemClock:
    """time.time() and time.monotonic()."""

    def wall(self) -> float:
        return time.time()

    def mono(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK = SystemClock()
