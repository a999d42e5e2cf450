"""Record builders shared by the tests: every field defaulted, the ones a test cares about overridden."""

from __future__ import annotations

from typing import Any

from memwatchd.models import ProcessSnapshot

_EMPTY: dict[str, Any] = {
    "pid": 10,
    "start_ticks": 100,
    "start_time": None,
    "comm": "x",
    "unit": None,
    "cgroup": None,
    "rss_kb": None,
    "anon_kb": None,
    "swap_kb": None,
    "vm_kb": None,
    "hwm_kb": None,
    "pss_kb": None,
    "uss_kb": None,
    "mmap_count": None,
    "mmap_bytes": None,
    "munmap_count": None,
    "munmap_bytes": None,
    "brk_count": None,
    "brk_bytes": None,
}


def process_snapshot(**fields: Any) -> ProcessSnapshot:
    """A ProcessSnapshot with every field not given left empty (None), as a source that saw nothing."""
    unknown = set(fields) - set(_EMPTY) - set(ProcessSnapshot.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown ProcessSnapshot fields: {sorted(unknown)}")
    return ProcessSnapshot(**{**_EMPTY, **fields})
