"""Memory cgroup limits and headroom, for forecasts ("the unit hits its limit in ~40m").

Reads memory.limit_in_bytes/usage_in_bytes (cgroup v1 memory controller) or memory.max/memory.current
(cgroup v2) of a process's memory cgroup and of every ancestor: the tightest level decides. The root is a
parameter so tests can build a fake tree. Read only when an alert is due, never per scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# v1 reports "no limit" as a huge page-rounded number (PAGE_COUNTER_MAX * page size)
_V1_UNLIMITED = 1 << 62


@dataclass(frozen=True, slots=True)
class CgroupHeadroom:
    """The tightest memory limit on a cgroup path: which level, its limit and what is left under it."""

    cgroup: str
    limit_bytes: int
    usage_bytes: int

    @property
    def free_bytes(self) -> int:
        return max(0, self.limit_bytes - self.usage_bytes)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _level(root: Path, rel: str) -> tuple[int, int] | None:
    """(limit, usage) of one cgroup directory, or None when it has no limit or cannot be read."""
    v1 = root / "memory" / rel
    limit = _read_int(v1 / "memory.limit_in_bytes")
    if limit is not None:
        usage = _read_int(v1 / "memory.usage_in_bytes")
        return (limit, usage or 0) if limit < _V1_UNLIMITED else None
    v2 = root / rel
    limit = _read_int(v2 / "memory.max")
    if limit is None:
        return None
    return limit, _read_int(v2 / "memory.current") or 0


def headroom(cgroup: str | None, root: str = "/sys/fs/cgroup") -> CgroupHeadroom | None:
    """The level of `cgroup` (a path like "/system.slice/api.service") with the least memory left, if any
    level has a limit; None for unlimited or unknown cgroups. Paths with ".." are refused."""
    if not cgroup or ".." in cgroup.split("/"):
        return None
    base = Path(root)
    parts = [p for p in cgroup.split("/") if p]
    best: CgroupHeadroom | None = None
    for depth in range(len(parts), 0, -1):
        rel = "/".join(parts[:depth])
        lv = _level(base, rel)
        if lv is None:
            continue
        h = CgroupHeadroom(cgroup="/" + rel, limit_bytes=lv[0], usage_bytes=lv[1])
        if best is None or h.free_bytes < best.free_bytes:
            best = h
    return best
