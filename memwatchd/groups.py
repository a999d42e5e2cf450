"""Groups and host accounting, pure: sums per memory cgroup and per systemd unit, and the host breakdown.

No I/O: the cgroup charges (collectors/cgroupfs.py) and /proc/meminfo (collectors/procfs.py) are read by
the caller and passed in. Kernel threads (no address space) belong to no group.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from memwatchd.models import (
    GroupCharge,
    GroupMember,
    GroupSample,
    HostMemory,
    MemInfo,
    ProcessSnapshot,
)

LARGEST_KEPT = 3  # members named in a group's alert message


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


def _members(processes: Iterable[ProcessSnapshot]) -> list[ProcessSnapshot]:
    return [p for p in processes if not p.exited and p.rss_kb is not None and (p.vm_kb or 0) > 0]


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


def _sample(
    by: str,
    group: str,
    unit: str | None,
    cgroup: str | None,
    procs: Sequence[ProcessSnapshot],
    charge: GroupCharge | None,
) -> GroupSample:
    largest = sorted(procs, key=lambda p: (-(p.rss_kb or 0), p.pid))[:LARGEST_KEPT]
    cur = charge.current_bytes if charge is not None else None
    lim = charge.limit_bytes if charge is not None else None
    free = charge.free_bytes if charge is not None else None
    return GroupSample(
        by=by,
        group=group,
        unit=unit,
        cgroup=cgroup,
        processes=len(procs),
        rss_kb=sum(p.rss_kb or 0 for p in procs),
        anon_kb=sum(p.anon_kb or 0 for p in procs),
        swap_kb=sum(p.swap_kb or 0 for p in procs),
        memory_current_kb=None if cur is None else cur // 1024,
        memory_limit_kb=None if lim is None else lim // 1024,
        limit_cgroup=charge.limit_cgroup if charge is not None else None,
        free_kb=None if free is None else free // 1024,
        largest=tuple(GroupMember(p.pid, p.start_ticks, p.comm, p.rss_kb or 0) for p in largest),
    )


def aggregate_groups(
    processes: Iterable[ProcessSnapshot], charges: Mapping[str, GroupCharge]
) -> tuple[GroupSample, ...]:
    """One GroupSample per memory cgroup and per systemd unit holding a live process (cgroups first)."""
    by_cg: dict[str, list[ProcessSnapshot]] = {}
    by_unit: dict[str, list[ProcessSnapshot]] = {}
    for p in _members(processes):
        if p.cgroup:
            by_cg.setdefault(p.cgroup, []).append(p)
        if p.unit:
            by_unit.setdefault(p.unit, []).append(p)
    out: list[GroupSample] = []
    for cg in sorted(by_cg):
        procs = by_cg[cg]
        units = {p.unit for p in procs}
        unit = units.pop() if len(units) == 1 else None
        out.append(_sample("cgroup", cg, unit, cg, procs, charges.get(cg)))
    for unit in sorted(by_unit):
        procs = by_unit[unit]
        cgs = {unit_cgroup(p.cgroup, unit) for p in procs}
        ucg = cgs.pop() if len(cgs) == 1 else None
        out.append(_sample("unit", unit, unit, ucg, procs, charges.get(ucg) if ucg else None))
    return tuple(out)


def host_memory(meminfo: MemInfo | None, processes: Iterable[ProcessSnapshot]) -> HostMemory | None:
    """The host breakdown (see HostMemory for the formula); None when /proc/meminfo lacks a needed line."""
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
    rss = anon = 0
    for p in _members(processes):
        rss += p.rss_kb or 0
        anon += p.anon_kb or 0
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
