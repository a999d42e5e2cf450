"""Typed rows returned by StoreReader: frozen records whose field names are the `--json` keys.

`memwatchctl ... --json` prints `dataclasses.asdict(row)`, so a field's name and position here are the
contract with users' scripts: rename nothing. tests/test_cli.py pins every key set.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One point of a process's history: a stored change (raw tier) or a minute/hour bucket (rollups).

    Raw rows have samples = 1 and min = max = avg = the value; rollup rows carry the last values of the
    bucket and min/max/avg of rss, anon and swap.
    """

    ts: float
    pid: int
    start_ticks: int
    start_time: float | None
    comm: str
    unit: str | None
    tier: str
    samples: int
    rss_kb: int | None
    anon_kb: int | None
    swap_kb: int | None
    vm_kb: int | None
    hwm_kb: int | None
    pss_kb: int | None
    uss_kb: int | None
    mmap_count: int | None
    mmap_bytes: int | None
    munmap_count: int | None
    munmap_bytes: int | None
    brk_count: int | None
    brk_bytes: int | None
    rss_min_kb: int | None
    rss_max_kb: int | None
    rss_avg_kb: float | None
    anon_min_kb: int | None
    anon_max_kb: int | None
    anon_avg_kb: float | None
    swap_min_kb: int | None
    swap_max_kb: int | None
    swap_avg_kb: float | None
    mapped_bytes: int | None
    mremap_count: int | None
    mremap_grow_bytes: int | None
    mremap_shrink_bytes: int | None


@dataclass(frozen=True, slots=True)
class TopRow:
    """One live process in the latest snapshot, with its growth over the window and eBPF rates."""

    pid: int
    start_ticks: int
    start_time: float | None
    comm: str
    unit: str | None
    rss_kb: int | None
    anon_kb: int | None
    vm_kb: int | None
    mmap_count: int | None
    mmap_bytes: int | None
    munmap_count: int | None
    munmap_bytes: int | None
    swap_kb: int | None
    hwm_kb: int | None
    brk_count: int | None
    brk_bytes: int | None
    pss_kb: int | None
    uss_kb: int | None
    mapped_bytes: int | None
    mremap_count: int | None
    mremap_grow_bytes: int | None
    mremap_shrink_bytes: int | None
    growth_kb_per_h: float | None
    mmaps_per_s: float | None
    mmap_bytes_per_s: float | None
    brk_bytes_per_s: float | None
    mean_mmap_bytes: int | None


@dataclass(frozen=True, slots=True)
class TopSummary:
    """The host at the latest snapshot."""

    ts: float
    interval_s: float | None
    mem_total_kb: int | None
    mem_available_kb: int | None
    swap_used_kb: int | None
    swap_total_kb: int | None
    processes: int | None
    mmaps_per_s: float
    mmap_bytes_per_s: float
    brk_bytes_per_s: float


@dataclass(frozen=True, slots=True)
class Top:
    """`memwatchctl top`: the summary (None before the first snapshot) and the process rows."""

    summary: TopSummary | None
    processes: tuple[TopRow, ...]


@dataclass(frozen=True, slots=True)
class ProcessRow:
    """A process seen in a range (exited ones too), with first/last seen and how it ended."""

    pid: int
    start_ticks: int
    start_time: float | None
    comm: str
    unit: str | None
    cgroup: str | None
    first_seen: float | None
    last_seen: float | None
    exit_time: float | None
    exit_code: int | None
    exit_signal: int | None
    oom_killed: bool | None
    live: bool


@dataclass(frozen=True, slots=True)
class AlertRow:
    """One alert episode as stored (the columns of the alerts table)."""

    rule: str
    pid: int
    start_ticks: int
    since: float
    kind: str
    comm: str
    unit: str | None
    state: str
    fired_at: float | None
    resolved_at: float | None
    notified_state: str | None
    notified_at: float | None
    value: float | None
    rate: float | None
    summary: str


HISTORY_FIELDS = tuple(f.name for f in fields(HistoryRow))  # JSON keys and CSV columns, in order
