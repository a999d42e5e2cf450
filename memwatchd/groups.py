"""Groups and host accounting, pure: sums per memory cgroup and per systemd unit, and the host breakdown.

No I/O: the cgroup charges (collectors/cgroupfs.py) and /proc/meminfo (collectors/procfs.py) are read by
the caller and passed in. Kernel threads (no address space) belong to no group.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from functools import lru_cache

from memwatchd.models import (
    GroupCharge,
    GroupMember,
    GroupSample,
    HostMemory,
    MemInfo,
    ProcessSnapshot,
)

LARGEST_KEPT = 3  # members named in a group's alert message


@lru_cache(maxsize=8192)  # pure; a host has few distinct (cgroup, unit) pairs and this runs per process
def unit_cgroup(cgroup: str | None, unit: str | None) -> str | None:
    """The cgroup of a systemd unit: the prefix of the process's cgroup path ending at the unit's component.

    "/system.slice/nginx.service/worker" with unit nginx.service -> "/system.slice/nginx.service"; None when
    the memory cgroup path does not name the unit (v1 hierarchies that differ from name=systemd).
    """
    if not cgroup or not unit:
        return None
    parts = cgroup.split("/")
    for i in range(len(parts) - 1, 0, -1):
        comp = parts[i]
        if comp == unit or comp == "_" + unit:
            return "/".join(parts[: i + 1])
    return None


def charge_paths(placements: Iterable[tuple[str | None, str | None]]) -> set[str]:
    """Every cgroup path whose charge the groups need: each (cgroup, unit) pair's cgroup and unit's cgroup."""
    out: set[str] = set()
    for cgroup, unit in placements:
        if cgroup:
            out.add(cgroup)
            uc = unit_cgroup(cgroup, unit)
            if uc:
                out.add(uc)
    return out


class _Acc:
    """Running sums of one group during the single pass."""

    __slots__ = ("n", "rss", "anon", "swap", "procs", "places")

    def __init__(self) -> None:
        self.n = self.rss = self.anon = self.swap = 0
        self.procs: list[ProcessSnapshot] = []
        self.places: set[str | None] = set()  # units of a cgroup group; unit cgroups of a unit group


def _sample(
    by: str, group: str, a: _Acc, cgroup: str | None, unit: str | None, charge: GroupCharge | None
) -> GroupSample:
    largest = heapq.nsmallest(LARGEST_KEPT, a.procs, key=lambda p: (-(p.rss_kb or 0), p.pid))
    return sample_of(by, group, a.n, a.rss, a.anon, a.swap, largest, cgroup, unit, charge)


def sample_of(
    by: str,
    group: str,
    n: int,
    rss_kb: int,
    anon_kb: int,
    swap_kb: int,
    largest: Iterable[ProcessSnapshot],
    cgroup: str | None,
    unit: str | None,
    charge: GroupCharge | None,
) -> GroupSample:
    """One group's GroupSample from its sums, its largest members (in order) and its charge."""
    cur = charge.current_bytes if charge is not None else None
    lim = charge.limit_bytes if charge is not None else None
    free = charge.free_bytes if charge is not None else None
    return GroupSample(
        by=by,
        group=group,
        unit=unit,
        cgroup=cgroup,
        processes=n,
        rss_kb=rss_kb,
        anon_kb=anon_kb,
        swap_kb=swap_kb,
        memory_current_kb=None if cur is None else cur // 1024,
        memory_limit_kb=None if lim is None else lim // 1024,
        limit_cgroup=charge.limit_cgroup if charge is not None else None,
        free_kb=None if free is None else free // 1024,
        largest=tuple(GroupMember(p.pid, p.start_ticks, p.comm, p.rss_kb or 0) for p in largest),
    )


def summarize(
    processes: Iterable[ProcessSnapshot], charges: Mapping[str, GroupCharge], meminfo: MemInfo | None
) -> tuple[tuple[GroupSample, ...], HostMemory | None]:
    """The groups (one GroupSample per memory cgroup and per systemd unit holding a live process, cgroups
    first) and the host breakdown, in one pass over the processes."""
    by_cg: dict[str, _Acc] = {}
    by_unit: dict[str, _Acc] = {}
    rss_total = anon_total = 0
    for p in processes:
        rss = p.rss_kb
        if p.exited or rss is None or not p.vm_kb:
            continue  # kernel threads (no address space) and exited processes belong to no group
        anon, swap = p.anon_kb or 0, p.swap_kb or 0
        rss_total += rss
        anon_total += anon
        cg, unit = p.cgroup, p.unit
        if cg:
            a = by_cg.get(cg)
            if a is None:
                a = by_cg[cg] = _Acc()
            a.n += 1
            a.rss += rss
            a.anon += anon
            a.swap += swap
            a.procs.append(p)
            a.places.add(unit)
        if unit:
            a = by_unit.get(unit)
            if a is None:
                a = by_unit[unit] = _Acc()
            a.n += 1
            a.rss += rss
            a.anon += anon
            a.swap += swap
            a.procs.append(p)
            a.places.add(unit_cgroup(cg, unit))
    out: list[GroupSample] = []
    for cg in sorted(by_cg):
        a = by_cg[cg]
        unit = next(iter(a.places)) if len(a.places) == 1 else None
        out.append(_sample("cgroup", cg, a, cg, unit, charges.get(cg)))
    for unit in sorted(by_unit):
        a = by_unit[unit]
        ucg = next(iter(a.places)) if len(a.places) == 1 else None
        out.append(_sample("unit", unit, a, ucg, unit, charges.get(ucg) if ucg else None))
    return tuple(out), host_from_sums(meminfo, rss_total, anon_total)


def aggregate_groups(
    processes: Iterable[ProcessSnapshot], charges: Mapping[str, GroupCharge]
) -> tuple[GroupSample, ...]:
    """One GroupSample per memory cgroup and per systemd unit holding a live process (cgroups first)."""
    return summarize(processes, charges, None)[0]


def host_memory(meminfo: MemInfo | None, processes: Iterable[ProcessSnapshot]) -> HostMemory | None:
    """The host breakdown (see HostMemory for the formula); None when /proc/meminfo lacks a needed line."""
    return summarize(processes, {}, meminfo)[1]


def host_from_sums(meminfo: MemInfo | None, rss: int, anon: int) -> HostMemory | None:
    """The host breakdown from /proc/meminfo and the processes' RSS and anonymous sums."""
    if meminfo is None:
        return None
    mi = meminfo
    parts = (
        mi.mem_free_kb,
        mi.buffers_kb,
        mi.cached_kb,
        mi.shmem_kb,
        mi.slab_reclaimable_kb,
        mi.slab_unreclaimable_kb,
        mi.kernel_stack_kb,
        mi.page_tables_kb,
    )
    if any(v is None for v in parts):
        return None
    free, buffers, cached, shmem, sreclaim, sunreclaim, kstack, ptables = (int(v or 0) for v in parts)
    anon_part = min(anon, mi.anon_pages_kb) if mi.anon_pages_kb is not None else anon
    page_cache = max(0, cached + buffers - shmem)
    used = mi.mem_total_kb - free
    named = anon_part + page_cache + shmem + sreclaim + sunreclaim + kstack + ptables
    return HostMemory(
        total_kb=mi.mem_total_kb,
        available_kb=mi.mem_available_kb,
        processes_rss_kb=rss,
        processes_anon_kb=anon,
        page_cache_kb=page_cache,
        shmem_kb=shmem,
        slab_reclaimable_kb=sreclaim,
        slab_unreclaimable_kb=sunreclaim,
        kernel_stack_kb=kstack,
        page_tables_kb=ptables,
        unaccounted_kb=max(0, used - named),
    )
