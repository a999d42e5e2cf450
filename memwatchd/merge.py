"""Merge one /proc scan and one BPF poll into a Snapshot. Pure: no I/O, no clock reads.

Processes are matched by PID within one interval (BPF keys by tgid; its map entry is deleted when
the process exits, so a reused PID starts from zero). Identity across snapshots is (pid, start_ticks):
deltas are computed only against the previous snapshot of the same identity, never across PID reuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from memwatchd.models import (
    BpfHealth,
    BpfPoll,
    BpfStats,
    ProcessExit,
    ProcessSnapshot,
    ProcKey,
    ProcSample,
    ProcScan,
    Snapshot,
)


def _delta(cur: int | None, old: int | None) -> int | None:
    if cur is None or old is None:
        return None
    return cur - old


def _counter_delta(cur: int | None, old: int | None) -> int | None:
    """Cumulative counters never go backwards for one identity; a smaller value means tracking restarted."""
    d = _delta(cur, old)
    if d is None:
        return None
    return d if d >= 0 else cur


def _with_deltas(
    p: ProcessSnapshot, prev: ProcessSnapshot | None, mono: float, prev_mono: float | None
) -> ProcessSnapshot:
    if prev is None or prev_mono is None:
        return p
    return replace(
        p,
        d_rss_kb=_delta(p.rss_kb, prev.rss_kb),
        d_mmap_count=_counter_delta(p.mmap_count, prev.mmap_count),
        d_mmap_bytes=_counter_delta(p.mmap_bytes, prev.mmap_bytes),
        d_munmap_bytes=_counter_delta(p.munmap_bytes, prev.munmap_bytes),
        d_brk_bytes=_counter_delta(p.brk_bytes, prev.brk_bytes),
        dt_s=max(mono - prev_mono, 0.0),
    )


_BPF_FIELDS = (
    "mmap_count",
    "mmap_bytes",
    "munmap_count",
    "munmap_bytes",
    "brk_count",
    "brk_bytes",
    "mremap_count",
    "mremap_grow_bytes",
    "mremap_shrink_bytes",
    "mapped_bytes",
)


def _bpf_fields(stats: BpfStats | None) -> dict[str, int | None]:
    """The eBPF counters of a ProcessSnapshot (all None when BPF did not track the process)."""
    return {f: getattr(stats, f) if stats is not None else None for f in _BPF_FIELDS}


def _from_proc(
    s: ProcSample, bpf: BpfStats | None, start_time: float, prev: ProcessSnapshot | None
) -> ProcessSnapshot:
    # Fields the incremental /proc reader did not re-read this time carry forward from the same identity.
    hwm = s.hwm_kb if s.hwm_kb is not None else (prev.hwm_kb if prev else None)
    swap = s.swap_kb if s.swap_kb is not None else (prev.swap_kb if prev else None)
    return ProcessSnapshot(
        pid=s.pid,
        start_ticks=s.start_ticks,
        start_time=start_time,
        comm=s.comm,
        unit=s.unit,
        cgroup=s.cgroup,
        rss_kb=s.rss_kb,
        anon_kb=s.anon_kb,
        swap_kb=swap,
        vm_kb=s.vm_kb,
        hwm_kb=hwm,
        pss_kb=s.pss_kb,
        uss_kb=s.uss_kb,
        **_bpf_fields(bpf),
    )


def _from_bpf(
    stats: BpfStats, prev: ProcessSnapshot | None, comm: str | None = None, exited: bool = False
) -> ProcessSnapshot:
    """A process only BPF saw this interval: /proc fields empty, identity from BPF's start time (or else
    from its last sighting, if any)."""
    return ProcessSnapshot(
        pid=stats.tgid,
        start_ticks=stats.start_ticks or (prev.start_ticks if prev else 0),
        start_time=prev.start_time if prev else None,
        comm=comm or (prev.comm if prev else ""),
        unit=prev.unit if prev else None,
        cgroup=prev.cgroup if prev else None,
        rss_kb=None,
        anon_kb=None,
        swap_kb=None,
        vm_kb=None,
        hwm_kb=None,
        pss_kb=None,
        uss_kb=None,
        **_bpf_fields(stats),
        exited=exited,
    )


def _bpf_fields_of(p: ProcessSnapshot) -> dict[str, int | None]:
    return {f: getattr(p, f) for f in _BPF_FIELDS}


def _prev_of(
    pid: int,
    start_ticks: int,
    prev_by_key: Mapping[ProcKey, ProcessSnapshot],
    prev_by_pid: Mapping[int, ProcessSnapshot],
) -> ProcessSnapshot | None:
    """The previous snapshot of this identity: by (pid, start) when BPF knew the start, else by pid."""
    if start_ticks:
        return prev_by_key.get(ProcKey(pid, start_ticks))
    return prev_by_pid.get(pid)


def merge(
    scan: ProcScan,
    bpf: BpfPoll | None,
    prev: Snapshot | None,
    ts: float,
    mono: float,
    bpf_health: BpfHealth | None = None,
) -> Snapshot:
    """Combine both sources per process identity.

    - every /proc sample appears, with its BPF counters when BPF tracked its PID;
    - a live BPF entry with no /proc sample appears with /proc fields None;
    - a process that exited during the interval appears once more with its final BPF counters and its
      peak RSS at the exit (exited=True);
    - BPF records carry the process's start time when the kernel's BTF was readable: then they join only
      the identity with that start time, never another process that reused the PID;
    - deltas (d_*) and dt_s are against the previous snapshot of the same identity.
    """
    prev_by_key: Mapping[ProcKey, ProcessSnapshot] = {p.key: p for p in prev.processes} if prev else {}
    prev_by_pid: Mapping[int, ProcessSnapshot] = (
        {p.pid: p for p in prev.processes if not p.exited} if prev else {}
    )
    prev_mono = prev.mono if prev else None
    stats = bpf.stats if bpf else {}
    exits: tuple[ProcessExit, ...] = bpf.exits if bpf else ()

    out: dict[ProcKey, ProcessSnapshot] = {}
    by_pid: dict[int, ProcKey] = {}
    for s in scan.samples:
        key = ProcKey(s.pid, s.start_ticks)
        prev_p = prev_by_key.get(key)
        start_time = scan.boot_time + s.start_ticks / scan.clk_tck
        st = stats.get(s.pid)
        if st is not None and st.start_ticks and st.start_ticks != s.start_ticks:
            st = None  # another process's entry under a reused PID
        out[key] = _with_deltas(_from_proc(s, st, start_time, prev_p), prev_p, mono, prev_mono)
        by_pid[s.pid] = key
    for tgid, st in stats.items():
        if tgid in by_pid:
            continue
        prev_p = _prev_of(tgid, st.start_ticks, prev_by_key, prev_by_pid)
        p = _with_deltas(_from_bpf(st, prev_p), prev_p, mono, prev_mono)
        out[p.key] = p
        by_pid[tgid] = p.key
    for e in exits:
        prev_p = _prev_of(e.pid, e.start_ticks, prev_by_key, prev_by_pid)
        live_key = by_pid.get(e.pid)
        if e.start_ticks:
            same = live_key == ProcKey(e.pid, e.start_ticks)
        else:
            same = live_key is not None and (prev_p is None or prev_p.key == live_key)
        hwm = {} if e.hwm_kb is None else {"hwm_kb": e.hwm_kb}
        if same and live_key is not None:
            # /proc still showed this process this interval; it exited after the scan: one row, final counters
            merged = replace(out[live_key], **_bpf_fields(e.final), **hwm, exited=True)
            if e.final is None:  # keep what the live row had
                merged = replace(merged, **_bpf_fields_of(out[live_key]))
            out[live_key] = _with_deltas(merged, prev_by_key.get(live_key), mono, prev_mono)
            continue
        if e.final is None:
            continue
        p = _from_bpf(e.final, prev_p, comm=e.comm, exited=True)
        if e.start_ticks:
            p = replace(p, start_ticks=e.start_ticks)
        p = _with_deltas(replace(p, **hwm), prev_p, mono, prev_mono)
        out.setdefault(p.key, p)

    health = bpf_health or (bpf.health if bpf else BpfHealth(state="disabled"))
    return Snapshot(
        ts=ts,
        mono=mono,
        processes=tuple(out.values()),
        meminfo=scan.meminfo,
        bpf=health,
        ooms=bpf.ooms if bpf else (),
        exits=exits,
        scan_errors=scan.errors,
    )
