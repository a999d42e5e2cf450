"""Records that cross module boundaries: frozen, slotted dataclasses.

Data flow: collectors (procfs, bpf) -> merge -> store -> rules -> notify.
A process is identified by (pid, start_ticks): start_ticks is field 22 of /proc/PID/stat
(clock ticks after boot), exact and stable for the life of the process, unlike PIDs which are reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, order=True)
class ProcKey:
    """Identity of one process: PID plus its start time in clock ticks after boot."""

    pid: int
    start_ticks: int


@dataclass(frozen=True, slots=True)
class ProcSample:
    """One process as read from /proc at one moment (sizes in KiB)."""

    pid: int
    start_ticks: int
    comm: str
    ppid: int
    state: str
    rss_kb: int
    vm_kb: int
    hwm_kb: int | None  # VmHWM (last value read; status is re-read when sizes change); None if unknown
    anon_kb: int
    swap_kb: int | None
    unit: str | None  # systemd unit (e.g. "nginx.service") or None
    cgroup: str | None  # memory cgroup path (v1 memory controller or v2 unified)
    pss_kb: int | None = None  # only with [procfs] smaps = true
    uss_kb: int | None = None

    @property
    def key(self) -> ProcKey:
        return ProcKey(self.pid, self.start_ticks)


@dataclass(frozen=True, slots=True)
class MemInfo:
    """Host totals from /proc/meminfo (KiB)."""

    mem_total_kb: int
    mem_available_kb: int
    swap_total_kb: int
    swap_free_kb: int
    # the parts of the host breakdown (None when the kernel does not report the line)
    mem_free_kb: int | None = None
    buffers_kb: int | None = None
    cached_kb: int | None = None  # page cache, shmem/tmpfs included
    shmem_kb: int | None = None
    anon_pages_kb: int | None = None
    slab_reclaimable_kb: int | None = None
    slab_unreclaimable_kb: int | None = None
    kernel_stack_kb: int | None = None
    page_tables_kb: int | None = None


@dataclass(frozen=True, slots=True)
class ProcScan:
    """Result of one /proc scan."""

    samples: tuple[ProcSample, ...]
    meminfo: MemInfo | None
    boot_time: float  # unix seconds of boot (btime), to turn start_ticks into wall time
    clk_tck: int
    errors: int = 0  # processes that vanished or were unreadable (ENOENT/ESRCH/EACCES), counted not logged
    # What changed since scan `base_seq` of the same collector (its previous one), so consumers work in
    # proportion to change: `changed` holds the samples that are not the very objects of that scan (new
    # identities, changed values); every other sample is that scan's object for its pid, unchanged. `gone`
    # holds the identities that scan had and this one has not (exits, PID reuse, unreadable now).
    # changed None: unknown (a first scan, or a collector that does not track it), consumers look at all.
    seq: int = 0
    base_seq: int | None = None
    changed: tuple[ProcSample, ...] | None = None
    gone: tuple[ProcKey, ...] = ()


@dataclass(frozen=True, slots=True)
class BpfStats:
    """Per-process (tgid) allocation counters aggregated in the kernel, cumulative since tracking began."""

    tgid: int
    mmap_count: int
    mmap_bytes: int
    munmap_count: int
    munmap_bytes: int
    brk_count: int
    brk_bytes: int  # heap growth from brk return values (shrinks subtract, floored at 0 per call pair)
    last_update_ns: int  # CLOCK_MONOTONIC ns of the last update (bpf_ktime_get_ns)
    mremap_count: int = 0  # successful mremap calls
    mremap_grow_bytes: int = 0  # sum of new_len - old_len over growing mremaps
    mremap_shrink_bytes: int = 0  # sum of old_len - new_len over shrinking mremaps
    # Outstanding bytes mapped since tracking began or the last exec, from the process's own address-space
    # changes: mmap adds (a MAP_FIXED mmap replaces and adds nothing), munmap subtracts, mremap and brk add
    # their growth and subtract their shrink; never below zero. See memwatchd/bpf/memwatch.bpf.c.
    mapped_bytes: int = 0
    start_ticks: int = 0  # the process's start time as /proc/PID/stat field 22; 0 = unknown


@dataclass(frozen=True, slots=True)
class OomKill:
    """oom:mark_victim, delivered through the ring buffer."""

    pid: int
    comm: str
    total_vm_kb: int
    anon_rss_kb: int
    file_rss_kb: int
    shmem_rss_kb: int
    uid: int
    oom_score_adj: int
    mono_ns: int


@dataclass(frozen=True, slots=True)
class ProcessExit:
    """A whole process (thread group) ended; carries its final BPF counters once.

    exit_code: the status passed to exit() (0-255), or -N when signal N ended the process (as Python's
    subprocess reports it); 0 with exit_signal 0 also when the kernel's layout was unknown (no BTF).
    """

    pid: int
    comm: str
    exit_code: int
    final: BpfStats | None  # None: the process never mapped memory while tracked
    mono_ns: int
    start_ticks: int = 0  # /proc/PID/stat field 22 of that process (exact); 0 = unknown
    exit_signal: int = 0  # the signal that ended it (9 for SIGKILL), 0 for a normal exit
    oom_killed: bool = False  # chosen by the OOM killer (global or memory cgroup) and killed
    hwm_kb: int | None = None  # VmHWM at the exit: peak RSS including the last moments; None = unknown


@dataclass(frozen=True, slots=True)
class BpfHealth:
    """Counters the daemon shows in status and metrics."""

    state: str  # "active", "disabled: <why>", "unavailable: <why>"
    tracked: int = 0  # entries currently in the stats map
    map_full: int = 0  # updates refused because the stats map was full
    lost_events: int = 0  # ring-buffer reservations that failed


@dataclass(frozen=True, slots=True)
class BpfPoll:
    """Result of one BPF poll: map contents plus events received since the previous poll."""

    stats: dict[int, BpfStats]
    exits: tuple[ProcessExit, ...]
    ooms: tuple[OomKill, ...]
    health: BpfHealth
    # What moved since poll `base_seq` of the same collector (its previous map read): `changed` holds the
    # tgids whose entry is not that poll's very object (new or moved); every other entry is. Entries that
    # left are not listed (consumers compare sizes). changed None: unknown, consumers look at every entry.
    seq: int = 0
    base_seq: int | None = None
    changed: tuple[int, ...] | None = None


NO_IDENT: tuple[int, int] = (0, -1)  # ProcessSnapshot.ident not given: built from the record's own fields


@dataclass(frozen=True, slots=True)
class ProcessSnapshot:
    """One process in one merged snapshot. Fields of a source that did not see the process are None."""

    pid: int
    start_ticks: int
    start_time: float | None  # unix seconds
    comm: str
    unit: str | None
    cgroup: str | None
    # from /proc
    rss_kb: int | None
    anon_kb: int | None
    swap_kb: int | None
    vm_kb: int | None
    hwm_kb: int | None
    pss_kb: int | None
    uss_kb: int | None
    # from eBPF (cumulative since tracking began)
    mmap_count: int | None
    mmap_bytes: int | None
    munmap_count: int | None
    munmap_bytes: int | None
    brk_count: int | None
    brk_bytes: int | None
    # deltas since the previous snapshot of the same identity (None for a first sighting)
    d_rss_kb: int | None = None
    d_mmap_count: int | None = None
    d_mmap_bytes: int | None = None
    d_munmap_bytes: int | None = None
    d_brk_bytes: int | None = None
    # monotonic seconds since that previous snapshot; a record carried over unchanged (deltas 0) keeps the
    # dt_s of the snapshot it was built in
    dt_s: float | None = None
    exited: bool = False  # final counters of a process that ended during this interval
    # from eBPF, added later (hence after the defaulted fields); see BpfStats
    mremap_count: int | None = None
    mremap_grow_bytes: int | None = None
    mremap_shrink_bytes: int | None = None
    mapped_bytes: int | None = None  # outstanding mapped bytes (BpfStats.mapped_bytes)
    # (pid, start_ticks), one tuple per identity: replace() and the merger hand the previous record's on, so
    # the per-process tables of the store, the rules and the groups all key on the same object (a tuple of
    # their own in each cost 56 B per process and table); set in __post_init__ when not given or not this
    # record's identity
    ident: tuple[int, int] = field(default=NO_IDENT, compare=False, repr=False)

    def __post_init__(self) -> None:
        ident = self.ident
        if ident[1] != self.start_ticks or ident[0] != self.pid:
            object.__setattr__(self, "ident", (self.pid, self.start_ticks))

    @property
    def key(self) -> ProcKey:
        return ProcKey(self.pid, self.start_ticks)


@dataclass(frozen=True, slots=True)
class GroupCharge:
    """What the kernel charges a memory cgroup, read from cgroupfs (bytes).

    limit_bytes is the tightest limit on the cgroup or any ancestor (None: unlimited everywhere);
    free_bytes the least headroom over the limited levels (an ancestor's limit is shared with its siblings).
    """

    cgroup: str
    current_bytes: int | None  # memory.current (v2) / memory.usage_in_bytes (v1); None when unreadable
    limit_bytes: int | None
    limit_cgroup: str | None  # the level that sets limit_bytes
    free_bytes: int | None


@dataclass(frozen=True, slots=True)
class GroupMember:
    """One of a group's largest processes, named in alert messages."""

    pid: int
    start_ticks: int
    comm: str
    rss_kb: int


@dataclass(frozen=True, slots=True)
class GroupSample:
    """One memory cgroup or systemd unit in one snapshot: the sums over its processes and its charge.

    by: "cgroup" (group = the cgroup path) or "unit" (group = the unit name). unit is the systemd unit the
    cgroup belongs to (for unit groups: the group itself); cgroup is the path whose charge is reported
    (for unit groups: the unit's own cgroup, when the process's memory cgroup path names it).
    """

    by: str
    group: str
    unit: str | None
    cgroup: str | None
    processes: int
    rss_kb: int
    anon_kb: int
    swap_kb: int
    memory_current_kb: int | None
    memory_limit_kb: int | None  # None: unlimited (or unknown)
    limit_cgroup: str | None = None
    free_kb: int | None = None  # headroom under the tightest limited level
    largest: tuple[GroupMember, ...] = ()  # by rss, the largest few (groups.LARGEST_KEPT)


@dataclass(frozen=True, slots=True)
class HostMemory:
    """The host's memory broken into named parts (KiB); unaccounted_kb is what none of them explains.

    used = total - MemFree; unaccounted = used - (anon + page cache + shmem + slab reclaimable +
    slab unreclaimable + kernel stacks + page tables), floored at 0, where anon is the processes' anonymous
    sum capped by the kernel's AnonPages (forked processes share copy-on-write pages that each one's RssAnon
    counts) and page cache = Cached + Buffers - Shmem. What remains is kernel memory no counter names
    (vmalloc, driver and network buffers, hugetlb pools, ...).
    """

    total_kb: int
    available_kb: int
    processes_rss_kb: int
    processes_anon_kb: int
    page_cache_kb: int
    shmem_kb: int
    slab_reclaimable_kb: int
    slab_unreclaimable_kb: int
    kernel_stack_kb: int
    page_tables_kb: int
    unaccounted_kb: int


HOST_FIELDS = (
    "total_kb",
    "available_kb",
    "processes_rss_kb",
    "processes_anon_kb",
    "page_cache_kb",
    "shmem_kb",
    "slab_reclaimable_kb",
    "slab_unreclaimable_kb",
    "kernel_stack_kb",
    "page_tables_kb",
    "unaccounted_kb",
)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One merged snapshot per interval."""

    ts: float  # wall clock unix seconds (for storage and display)
    mono: float  # monotonic seconds (for intervals and rates)
    processes: tuple[ProcessSnapshot, ...]
    meminfo: MemInfo | None
    bpf: BpfHealth
    ooms: tuple[OomKill, ...] = ()
    exits: tuple[ProcessExit, ...] = ()
    scan_errors: int = 0
    # What changed since snapshot `base_seq` (the previous one), so consumers work in proportion to change:
    # `fresh` holds the records that are not the very objects of that snapshot (new identities, changed
    # values, exit rows); every other record of `processes` is that snapshot's object, unchanged. `gone`
    # holds the identities (pid, start_ticks) it had that this one has not. fresh None: unknown, consumers
    # look at all.
    seq: int = 0
    base_seq: int | None = None
    fresh: tuple[ProcessSnapshot, ...] | None = None
    gone: tuple[tuple[int, int], ...] = ()
    groups: tuple[GroupSample, ...] = ()  # memory cgroups and units holding a monitored process
    host: HostMemory | None = None  # the host breakdown (None without a full /proc/meminfo)


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One alert episode of one rule for one process identity (or the host: pid 0, start_ticks 0).

    An episode is (rule, pid, start_ticks, since); its state moves pending -> firing -> resolved.
    notified_state records the last state a notification was delivered for, so a restart neither
    forgets an open alert nor re-sends it.
    """

    rule: str
    kind: str
    pid: int
    start_ticks: int
    comm: str
    unit: str | None
    state: str  # "pending" | "firing" | "resolved"
    since: float  # wall time the condition first held
    fired_at: float | None = None
    resolved_at: float | None = None
    notified_state: str | None = None
    notified_at: float | None = None
    value: float | None = None  # current metric value, bytes
    rate: float | None = None  # bytes per second (growth and leak rules)
    summary: str = ""
