"""The daemon's own heap: fewer malloc arenas, memory handed back after bursts, a frozen startup heap.

Why: the /proc scan runs in a short-lived thread each cycle, and glibc gives threads their own malloc arenas
(up to 8 per core); after a burst of process churn the freed memory stays spread over those arenas and the
daemon's anonymous memory does not come back down. Two arenas are enough for a loop and a scan thread,
and malloc_trim(0) after a burst returns the free pages at the top of each arena and the whole free pages
inside them to the kernel (madvise), which is what the churn test measures.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import math

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # mallopt parameter (malloc.h)
ARENA_MAX = 2
# Cyclic GC: young collections after this many new container objects instead of 700. The steady cycle
# allocates little (unchanged processes reuse their records) and what is alive after the first cycle is
# frozen out of the collector's sight, so a collection no longer walks every live record.
GC_THRESHOLDS = (20_000, 20, 10)
TRIM_AFTER_GONE = 1000  # processes gone since the last malloc_trim that make the next one due ...
TRIM_EVERY_S = 10.0  # ... at most this often
SETTLED_S = 10.0  # a burst of exits is over when none came for this long: one more trim then ...
SETTLED_MIN_GONE = 200  # ... when at least this many went since the last one


@functools.cache
def _c() -> ctypes.CDLL | None:
    """The C library, loaded once (None where there is none to load)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def limit_arenas(n: int = ARENA_MAX) -> bool:
    """mallopt(M_ARENA_MAX, n) before threads start; False where the C library has no such call (musl)."""
    libc = _c()
    fn = getattr(libc, "mallopt", None)
    return bool(fn is not None and fn(M_ARENA_MAX, n) == 1)


def trim() -> bool:
    """Hand free heap pages back to the kernel (glibc malloc_trim(0)); False where unavailable."""
    libc = _c()
    fn = getattr(libc, "malloc_trim", None)
    if fn is None:
        return False
    fn(0)
    return True


def freeze() -> None:
    """Move what is alive now out of the cyclic collector's generations (it is never scanned again)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class TrimPolicy:
    """When to hand free heap pages back: during a burst of exits, and once more when it is over.

    Trimming only during the burst (every TRIM_AFTER_GONE exits) missed what the burst's last exits freed:
    their records are released only after the store commits them, when no more exits come to trigger a
    trim, so that memory stayed with the daemon. Pure: the caller passes the exits it saw and the time.
    """

    __slots__ = ("gone", "burst", "trimmed_at", "last_gone_at")

    def __init__(self) -> None:
        self.gone = 0  # exits since the last trim
        self.burst = 0  # exits since the last trim after a burst settled
        self.trimmed_at = -math.inf
        self.last_gone_at = -math.inf

    def due(self, gone: int, mono: float) -> bool:
        """Count `gone` exits seen at monotonic `mono`; True when a trim is due now (then counted as done)."""
        if gone:
            self.gone += gone
            self.burst += gone
            self.last_gone_at = mono
        if mono - self.trimmed_at < TRIM_EVERY_S:
            return False
        if self.gone >= TRIM_AFTER_GONE:
            self.gone = 0
        elif self.burst >= SETTLED_MIN_GONE and mono - self.last_gone_at >= SETTLED_S:
            self.gone = self.burst = 0
        else:
            return False
        self.trimmed_at = mono
        return True
