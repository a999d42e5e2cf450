"""Memory cgroup limits and headroom, for forecasts ("the unit hits its limit in ~40m").

Reads memory.limit_in_bytes/usage_in_bytes (cgroup v1 memory controller) or memory.max/memory.current
(cgroup v2) of a process's memory cgroup and of every ancestor: the tightest level decides. The root is a
parameter so tests can build a fake tree. headroom() is read only when an alert is due; ChargeReader reads
the charge and limits of every cgroup holding a monitored process once per cycle (group series).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from memwatchd.models import GroupCharge

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


# ---- per-cycle charges of many cgroups ----------------------------------------------------------------


class ChargeReader:
    """Reads the charge and limits of memory cgroups, once per path and ancestor per call.

    v1 (the memory controller mounted at ROOT/memory): memory.usage_in_bytes and memory.limit_in_bytes;
    v2 (unified at ROOT): memory.current and memory.max ("max" = unlimited). The version is detected once
    per reader. A file that cannot be read (the cgroup went away, no permission) leaves the value None: the
    cycle goes on without it.
    """

    def __init__(self, root: str = "/sys/fs/cgroup") -> None:
        base = Path(root)
        if (base / "memory" / "memory.usage_in_bytes").exists():
            self.version: int | None = 1
            self._base = base / "memory"
            self._usage, self._limit = "memory.usage_in_bytes", "memory.limit_in_bytes"
        elif (base / "cgroup.controllers").exists() and "memory" in _read_text(base / "cgroup.controllers"):
            self.version = 2
            self._base = base
            self._usage, self._limit = "memory.current", "memory.max"
        else:
            self.version = None  # no memory controller here: every charge is unknown
            self._base = base
            self._usage, self._limit = "memory.current", "memory.max"

    def read(self, paths: Iterable[str]) -> dict[str, GroupCharge]:
        """The charge of each cgroup path ("/system.slice/x.service"); paths with ".." are skipped."""
        if self.version is None:
            return {}
        levels: dict[str, tuple[int | None, int | None]] = {}  # rel -> (limit or None, usage)
        out: dict[str, GroupCharge] = {}
        for path in paths:
            if not path or ".." in path.split("/"):
                continue
            parts = [p for p in path.split("/") if p]
            limit: int | None = None
            limit_cg: str | None = None
            free: int | None = None
            current: int | None = None
            for depth in range(len(parts), -1, -1):
                rel = "/".join(parts[:depth])
                lv = levels.get(rel)
                if lv is None:
                    lv = levels[rel] = self._level(rel)
                lim, usage = lv
                if depth == len(parts):
                    current = usage
                if lim is None:
                    continue
                if limit is None or lim < limit:
                    limit, limit_cg = lim, "/" + rel
                f = max(0, lim - (usage or 0))
                if free is None or f < free:
                    free = f
            out[path] = GroupCharge(path, current, limit, limit_cg, free)
        return out

    def _level(self, rel: str) -> tuple[int | None, int | None]:
        d = self._base / rel if rel else self._base
        lim = _read_int(d / self._limit)
        if lim is not None and lim >= _V1_UNLIMITED:
            lim = None
        return lim, _read_int(d / self._usage)


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


# ---- OOM kills: cgroup-local or host-wide ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OomScope:
    """Where an OOM kill came from: a memory cgroup that hit its limit (local), or the whole host."""

    local: bool
    cgroup: str | None = None  # the level whose limit was hit (local kills)
    limit_bytes: int | None = None
    known: bool = True  # False: the victim's memory cgroup was never seen

    def describe(self) -> str:
        """The message line: "cgroup-local: cgroup /x reached its limit (32M)" or "host-wide: ..."."""
        from memwatchd.units import format_size

        if not self.known:
            return "unknown: the victim's memory cgroup was not seen before the kill"
        if self.local and self.cgroup is not None and self.limit_bytes is not None:
            return f"cgroup-local: cgroup {self.cgroup} reached its limit ({format_size(self.limit_bytes)})"
        return "host-wide: no memory cgroup of the victim was at its limit (the host ran out of memory)"


def _oom_events(path: Path) -> int | None:
    try:
        for line in path.read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == "oom":
                return int(v)
    except (OSError, ValueError):
        return None
    return None


def oom_scope(cgroup: str | None, root: str = "/sys/fs/cgroup") -> OomScope:
    """Whether a kill of a process in `cgroup` was cgroup-local, and which level's limit it hit.

    The oom:mark_victim tracepoint does not say, so cgroupfs is asked, innermost level first: on v2 a level
    whose memory.events counts an "oom" (only memory-cgroup OOMs count there); on v1 a limited level whose
    peak charge (memory.max_usage_in_bytes) reached its limit (within 1 %). Otherwise the kill was host-wide.
    """
    if not cgroup or ".." in cgroup.split("/"):
        return OomScope(False, known=False)
    base = Path(root)
    parts = [p for p in cgroup.split("/") if p]
    v1 = (base / "memory" / "memory.usage_in_bytes").exists()
    for depth in range(len(parts), 0, -1):
        rel = "/".join(parts[:depth])
        if v1:
            d = base / "memory" / rel
            limit = _read_int(d / "memory.limit_in_bytes")
            peak = _read_int(d / "memory.max_usage_in_bytes")
            if limit is not None and limit < _V1_UNLIMITED and peak is not None and peak >= 0.99 * limit:
                return OomScope(True, "/" + rel, limit)
        else:
            d = base / rel
            limit = _read_int(d / "memory.max")
            if limit is not None and (_oom_events(d / "memory.events") or 0) > 0:
                return OomScope(True, "/" + rel, limit)
    return OomScope(False)
