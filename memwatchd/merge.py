"""Merge one /proc scan and one BPF poll into a Snapshot. Pure: no I/O, no clock reads.

Processes are matched by PID within one interval (BPF keys by tgid; its map entry is deleted when
the process exits, so a reused PID starts from zero). Identity across snapshots is (pid, start_ticks):
deltas are computed only against the previous snapshot of the same identity, never across PID reuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from operator import attrgetter
from typing import TypedDict

from memwatchd.models import (
    NO_IDENT,
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


def _with_deltas(p: ProcessSnapshot, prev: ProcessSnapshot | None, dt: float | None) -> ProcessSnapshot:
    """p with its deltas against prev, dt seconds before (None: no previous snapshot). dt is one float
    object for every record of a pass (a float each cost 24 B per process)."""
    if prev is None or dt is None:
        return p
    return replace(
        p,
        d_rss_kb=_delta(p.rss_kb, prev.rss_kb),
        d_mmap_count=_counter_delta(p.mmap_count, prev.mmap_count),
        d_mmap_bytes=_counter_delta(p.mmap_bytes, prev.mmap_bytes),
        d_munmap_bytes=_counter_delta(p.munmap_bytes, prev.munmap_bytes),
        d_brk_bytes=_counter_delta(p.brk_bytes, prev.brk_bytes),
        dt_s=dt,
    )


class _BpfCounters(TypedDict):
    """The eBPF counter fields of a ProcessSnapshot, as keyword arguments."""

    mmap_count: int | None
    mmap_bytes: int | None
    munmap_count: int | None
    munmap_bytes: int | None
    brk_count: int | None
    brk_bytes: int | None
    mremap_count: int | None
    mremap_grow_bytes: int | None
    mremap_shrink_bytes: int | None
    mapped_bytes: int | None


def _bpf_fields(stats: BpfStats | None) -> _BpfCounters:
    """The eBPF counters of a ProcessSnapshot (all None when BPF did not track the process)."""
    if stats is None:
        return _BpfCounters(
            mmap_count=None,
            mmap_bytes=None,
            munmap_count=None,
            munmap_bytes=None,
            brk_count=None,
            brk_bytes=None,
            mremap_count=None,
            mremap_grow_bytes=None,
            mremap_shrink_bytes=None,
            mapped_bytes=None,
        )
    return _BpfCounters(
        mmap_count=stats.mmap_count,
        mmap_bytes=stats.mmap_bytes,
        munmap_count=stats.munmap_count,
        munmap_bytes=stats.munmap_bytes,
        brk_count=stats.brk_count,
        brk_bytes=stats.brk_bytes,
        mremap_count=stats.mremap_count,
        mremap_grow_bytes=stats.mremap_grow_bytes,
        mremap_shrink_bytes=stats.mremap_shrink_bytes,
        mapped_bytes=stats.mapped_bytes,
    )


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
        ident=prev.ident if prev is not None else NO_IDENT,
    )


def _from_bpf(
    stats: BpfStats,
    prev: ProcessSnapshot | None,
    comm: str | None = None,
    exited: bool = False,
    boot: float = 0.0,
    tck: int = 0,
) -> ProcessSnapshot:
    """A process only BPF saw this interval: /proc fields empty, identity from BPF's start time (or else
    from its last sighting, if any); boot and tck (the scan's btime and clock ticks) date that start."""
    start_time = prev.start_time if prev else None
    if start_time is None and stats.start_ticks and tck:
        start_time = boot + stats.start_ticks / tck
    return ProcessSnapshot(
        pid=stats.tgid,
        start_ticks=stats.start_ticks or (prev.start_ticks if prev else 0),
        start_time=start_time,
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
        ident=prev.ident if prev is not None else NO_IDENT,
    )


def _ended(p: ProcessSnapshot, e: ProcessExit) -> ProcessSnapshot:
    """p as the row of its exit: the final counters (when the exit has them), the exact start time (when
    BPF read it) and the peak RSS at the exit (when known)."""
    f = e.final
    return replace(
        p,
        start_ticks=e.start_ticks or p.start_ticks,
        hwm_kb=p.hwm_kb if e.hwm_kb is None else e.hwm_kb,
        exited=True,
        mmap_count=p.mmap_count if f is None else f.mmap_count,
        mmap_bytes=p.mmap_bytes if f is None else f.mmap_bytes,
        munmap_count=p.munmap_count if f is None else f.munmap_count,
        munmap_bytes=p.munmap_bytes if f is None else f.munmap_bytes,
        brk_count=p.brk_count if f is None else f.brk_count,
        brk_bytes=p.brk_bytes if f is None else f.brk_bytes,
        mremap_count=p.mremap_count if f is None else f.mremap_count,
        mremap_grow_bytes=p.mremap_grow_bytes if f is None else f.mremap_grow_bytes,
        mremap_shrink_bytes=p.mremap_shrink_bytes if f is None else f.mremap_shrink_bytes,
        mapped_bytes=p.mapped_bytes if f is None else f.mapped_bytes,
    )


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


class _Src:
    """The sources one ProcessSnapshot was built from (compared by identity) and the record itself."""

    __slots__ = ("sample", "stats", "snap", "quiet", "seen")

    def __init__(
        self,
        sample: ProcSample | None,
        stats: BpfStats | None,
        snap: ProcessSnapshot,
        quiet: bool,
        seen: ProcSample | None = None,
    ) -> None:
        self.seen = seen  # this pid's sample in the scan the record was built from (None: not in it)
        self.sample = sample
        self.stats = stats
        self.snap = snap
        self.quiet = quiet  # deltas all 0 (or None): the record can stand for an unchanged next interval


_UNSEEN = ProcSample(0, -1, "", 0, "", 0, 0, None, 0, None, None, None)  # matches no real sample


def _is_quiet(p: ProcessSnapshot) -> bool:
    """Its deltas are what a next interval with the same values would give (0 where a value exists)."""

    def zero(d: int | None, v: int | None) -> bool:
        return d == 0 if v is not None else d is None

    return (
        p.dt_s is not None
        and not p.exited
        and zero(p.d_rss_kb, p.rss_kb)
        and zero(p.d_mmap_count, p.mmap_count)
        and zero(p.d_mmap_bytes, p.mmap_bytes)
        and zero(p.d_munmap_bytes, p.munmap_bytes)
        and zero(p.d_brk_bytes, p.brk_bytes)
    )


_SNAP = attrgetter("snap")


class _Part:
    """What one merge pass over some pids produced."""

    __slots__ = ("new", "out", "fresh", "left", "added", "extra")

    def __init__(self) -> None:
        self.new: dict[int, _Src] = {}
        self.out: list[ProcessSnapshot] = []
        self.fresh: list[ProcessSnapshot] = []
        self.left: list[tuple[int, int]] = []  # identities of the previous snapshot that may be gone
        self.added: dict[tuple[int, int], ProcessSnapshot] = {}  # exit rows added
        self.extra: list[ProcessSnapshot] = []  # exit rows whose pid also has a live record


class Merger:
    """merge() with a memory: work in proportion to change.

    The /proc collector hands back the very ProcSample object of a process whose statm did not change, and the
    BPF collector the very BpfStats object of an entry whose counters did not move; for such a process the
    previous ProcessSnapshot (once its deltas are 0) is reused as is: no allocation, no field copies. When the
    scan carries its change set (ProcScan.changed and gone, relative to the scan this merger saw last), only
    the pids it names, the pids whose BPF entry changed or exited and the pids whose last record was not
    quiet are looked at; every other process costs nothing here. Every Snapshot it returns carries `fresh`
    (records built this time) and `gone` (identities that left) relative to the previous one, so the rules
    can skip the rest. Pure: no I/O, no clock reads.
    """

    __slots__ = (
        "_src", "_extra", "prev", "_seq", "_loud", "_loud_peak", "_scan_seq", "_stats", "_procs", "_poll_seq",
    )  # fmt: skip

    def __init__(self) -> None:
        self._src: dict[int, _Src] = {}  # pid -> the latest record of that pid and its sources
        self._extra: list[ProcessSnapshot] = []  # last snapshot's records not held in _src (exit rows)
        self.prev: Snapshot | None = None
        self._seq = 0
        # for change sets: the pids whose record is not quiet or that have an exit row, the seq of the last
        # scan merged (None: unknown) and the BPF stats of the last poll
        self._loud: set[int] = set()
        self._loud_peak = 0  # the most pids _loud held since its table was built
        self._scan_seq: int | None = None
        self._stats: Mapping[int, BpfStats] = {}
        self._poll_seq: int | None = None  # seq of the last BPF poll merged (None: unknown)
        self._procs: tuple[ProcessSnapshot, ...] = ()

    def shrink(self) -> None:
        """Tables sized for the processes there are (a dict or set never shrinks when entries leave: after a
        burst of short-lived processes it stays sized for the burst). Called when a burst of exits settled."""
        self._src = dict(self._src)
        self._loud = set(self._loud)

    @property
    def scan_seq(self) -> int | None:
        """ProcScan.seq of the last scan merged (None: unknown): a scan with this base_seq continues it."""
        return self._scan_seq

    @classmethod
    def after(cls, prev: Snapshot | None) -> Merger:
        """A merger continuing from `prev` without knowing its sources (nothing is reused the first time)."""
        m = cls()
        if prev is None:
            return m
        m.prev = prev
        m._seq = prev.seq
        for p in prev.processes:
            have = m._src.get(p.pid)
            if have is None or not p.exited:
                if have is not None:
                    m._extra.append(have.snap)
                m._src[p.pid] = _Src(_UNSEEN, None, p, False)
            else:
                m._extra.append(p)
        return m

    def merge(
        self, scan: ProcScan, bpf: BpfPoll | None, ts: float, mono: float, bpf_health: BpfHealth | None = None
    ) -> Snapshot:
        """Combine both sources per process identity (see merge())."""
        prev = self.prev
        stats = bpf.stats if bpf else {}
        exits: tuple[ProcessExit, ...] = bpf.exits if bpf else ()
        boot, tck = scan.boot_time, scan.clk_tck
        prev_mono = prev.mono if prev else None
        changed = scan.changed
        if changed is not None and scan.base_seq is not None and scan.base_seq == self._scan_seq:
            moved = bpf.changed if bpf is not None and bpf.base_seq == self._poll_seq is not None else None
            part, processes = self._merge_changes(
                scan, changed, stats, moved, exits, boot, tck, mono, prev_mono
            )
        else:
            part = self._merge_all(scan.samples, stats, exits, boot, tck, mono, prev_mono)
            processes = tuple(part.out)
        self._scan_seq = scan.seq or None
        self._stats = stats
        self._poll_seq = (bpf.seq or None) if bpf is not None else None
        self._procs = processes

        health = bpf_health or (bpf.health if bpf else BpfHealth(state="disabled"))
        self._seq += 1
        snap = Snapshot(
            ts=ts,
            mono=mono,
            processes=processes,
            meminfo=scan.meminfo,
            bpf=health,
            ooms=bpf.ooms if bpf else (),
            exits=exits,
            scan_errors=scan.errors,
            seq=self._seq,
            base_seq=prev.seq if prev is not None else None,
            fresh=tuple(part.fresh),
            gone=tuple(self._gone(part)),
        )
        self.prev = snap
        return snap

    def _gone(self, part: _Part) -> dict[tuple[int, int], None]:
        """What the previous snapshot had and this one has not, among the identities the pass looked at."""
        gone: dict[tuple[int, int], None] = {}
        src = self._src
        for k in part.left:
            now_src = src.get(k[0])
            if (now_src is None or now_src.snap.start_ticks != k[1]) and k not in part.added:
                gone[k] = None
        return gone

    def _merge_all(
        self,
        samples: tuple[ProcSample, ...],
        stats: Mapping[int, BpfStats],
        exits: tuple[ProcessExit, ...],
        boot: float,
        tck: int,
        mono: float,
        prev_mono: float | None,
    ) -> _Part:
        """Every process: the pass over all of them, and the merger's memory rebuilt from it."""
        part = _run(samples, stats, exits, self._src, self._extra, boot, tck, mono, prev_mono)
        self._src = part.new
        self._extra = part.extra
        self._loud = {pid for pid, src in part.new.items() if not src.quiet}
        self._loud.update(p.pid for p in part.extra)
        self._loud_peak = len(self._loud)
        return part

    def _merge_changes(
        self,
        scan: ProcScan,
        changed: tuple[ProcSample, ...],
        stats: Mapping[int, BpfStats],
        moved: tuple[int, ...] | None,
        exits: tuple[ProcessExit, ...],
        boot: float,
        tck: int,
        mono: float,
        prev_mono: float | None,
    ) -> tuple[_Part, tuple[ProcessSnapshot, ...]]:
        """Only the pids a change names; the records of all others are the previous snapshot's objects."""
        src = self._src
        touched: set[int] = set(self._loud)
        touched.update(s.pid for s in changed)
        touched.update(k.pid for k in scan.gone)
        touched.update(e.pid for e in exits)
        old_stats = self._stats
        if moved is not None:
            # the poll names its moved entries; those that left are the exits' when the sizes add up
            touched.update(moved)
            added = sum(1 for t in moved if t not in old_stats)
            ended = {e.pid for e in exits if e.pid in old_stats and e.pid not in stats}
            if len(stats) != len(old_stats) + added - len(ended):
                touched.update(t for t in old_stats if t not in stats)
        elif stats or old_stats:
            # BPF hands back the very object of an entry that did not move: one lookup per entry
            seen = 0
            for tgid, st in stats.items():
                have = src.get(tgid)
                if have is None or have.stats is not st:
                    touched.add(tgid)
                if tgid in old_stats:
                    seen += 1
            if seen != len(old_stats):  # entries removed since the last poll
                touched.update(t for t in old_stats if t not in stats)
        if not touched:
            return _Part(), self._procs
        # each touched pid's sample in this scan: a changed one, else the last one unless it is gone
        now: dict[int, ProcSample] = {}
        gone_pids = {k.pid for k in scan.gone}
        for pid in touched:
            have = src.get(pid)
            if have is not None and have.seen is not None and pid not in gone_pids:
                now[pid] = have.seen
        for s in changed:
            now[s.pid] = s
        old = {pid: src[pid] for pid in touched if pid in src}
        sub_stats = {pid: stats[pid] for pid in touched if pid in stats}
        part = _run(tuple(now.values()), sub_stats, exits, old, self._extra, boot, tck, mono, prev_mono)
        loud = self._loud
        for pid in touched:
            got = part.new.get(pid)
            loud.discard(pid)
            if got is None:
                src.pop(pid, None)
            else:
                src[pid] = got
                if not got.quiet:
                    loud.add(pid)
        for p in part.extra:
            loud.add(p.pid)
        n = len(loud)
        if n > self._loud_peak:
            self._loud_peak = n
        elif n * 4 < self._loud_peak and self._loud_peak > 256:
            # a set keeps the table of its peak: after a first merge (every record new, so loud) or a burst
            # it would hold ~60 B per process of the burst
            self._loud, self._loud_peak = set(loud), n
        self._extra = part.extra
        # a C loop over the records (~15 ns each), instead of a second map pid -> record kept for it
        processes = tuple(map(_SNAP, src.values()))
        return part, processes + tuple(part.extra) if part.extra else processes


def _run(
    samples: tuple[ProcSample, ...],
    stats: Mapping[int, BpfStats],
    exits: tuple[ProcessExit, ...],
    old_src: Mapping[int, _Src],
    old_extra: list[ProcessSnapshot],
    boot: float,
    tck: int,
    mono: float,
    prev_mono: float | None,
) -> _Part:
    """One merge pass over the given samples and stats, against the previous records of their pids."""
    old = dict(old_src)
    dt = None if prev_mono is None else max(mono - prev_mono, 0.0)
    part = _Part()
    new, out, fresh, left = part.new, part.out, part.fresh, part.left
    # exits are rare: the previous records of their pids, looked up before `old` is consumed, and the
    # positions of their live records in `out` (only theirs: an index kept per record cost 36 B per process)
    cands: dict[int, list[ProcessSnapshot]] = {}
    at: dict[int, int] = {}
    for e in exits:
        if e.pid not in cands:
            c = [x for x in old_extra if x.pid == e.pid]
            if e.pid in old:
                c.append(old[e.pid].snap)
            cands[e.pid] = c
    for s in samples:
        pid = s.pid
        st = stats.get(pid)
        if st is not None and st.start_ticks and st.start_ticks != s.start_ticks:
            st = None  # another process's entry under a reused PID
        src = old.pop(pid, None)
        prev_p = None
        if src is not None:
            if src.sample is s and src.stats is st and src.quiet:
                if pid in cands:
                    at[pid] = len(out)
                new[pid] = src
                out.append(src.snap)
                continue
            prev_p = src.snap
            if prev_p.start_ticks != s.start_ticks:
                left.append((prev_p.pid, prev_p.start_ticks))
                prev_p = None
        p = _with_deltas(_from_proc(s, st, boot + s.start_ticks / tck, prev_p), prev_p, dt)
        if pid in cands:
            at[pid] = len(out)
        new[pid] = _Src(s, st, p, _is_quiet(p), s)
        out.append(p)
        fresh.append(p)
    for tgid, st in stats.items():
        if tgid in new:
            continue
        src = old.pop(tgid, None)
        if src is not None and src.sample is None and src.stats is st and src.quiet:
            if tgid in cands:
                at[tgid] = len(out)
            new[tgid] = src
            out.append(src.snap)
            continue
        prev_p = None
        if src is not None:
            if st.start_ticks:
                prev_p = src.snap if src.snap.start_ticks == st.start_ticks else None
            elif not src.snap.exited:
                prev_p = src.snap
            left.append((src.snap.pid, src.snap.start_ticks))
        p = _with_deltas(_from_bpf(st, prev_p, boot=boot, tck=tck), prev_p, dt)
        if tgid in cands:
            at[tgid] = len(out)
        new[tgid] = _Src(None, st, p, _is_quiet(p), None)
        out.append(p)
        fresh.append(p)

    def prev_by_key(pid: int, start: int) -> ProcessSnapshot | None:
        return next((c for c in reversed(cands.get(pid, ())) if c.start_ticks == start), None)

    def prev_of(pid: int, start: int) -> ProcessSnapshot | None:
        if start:
            return prev_by_key(pid, start)
        return next((c for c in reversed(cands.get(pid, ())) if not c.exited), None)

    added = part.added
    replaced: set[int] = set()  # ids of records an exit row took the place of
    for e in exits:
        prev_p = prev_of(e.pid, e.start_ticks)
        i = at.get(e.pid, -1)
        live = new.get(e.pid) if i >= 0 else None  # a live record of this pass, in out[i]
        if e.start_ticks:
            same = live is not None and live.snap.start_ticks == e.start_ticks
        else:
            same = live is not None and (prev_p is None or prev_p.start_ticks == live.snap.start_ticks)
        if same and live is not None:
            # /proc still showed it this interval; it exited after the scan: one row, final counters
            cur = out[i]
            merged = _ended(cur, e)
            merged = _with_deltas(merged, prev_by_key(e.pid, cur.start_ticks), dt)
            replaced.add(id(cur))
            out[i] = merged
            live.snap, live.quiet, live.sample, live.stats = merged, False, _UNSEEN, None
            fresh.append(merged)
            continue
        if e.final is None:
            continue
        p = _ended(_from_bpf(e.final, prev_p, comm=e.comm, boot=boot, tck=tck), e)
        if p.start_time is None and p.start_ticks:
            p = replace(p, start_time=boot + p.start_ticks / tck)
        p = _with_deltas(p, prev_p, dt)
        key = p.ident
        if (live is not None and live.snap.start_ticks == p.start_ticks) or key in added:
            continue
        added[key] = p
        out.append(p)
        fresh.append(p)
    for p in added.values():
        if p.pid in new:
            part.extra.append(p)
        else:
            new[p.pid] = _Src(_UNSEEN, None, p, False, None)
    if replaced:
        part.fresh = [f for f in fresh if id(f) not in replaced]
    left.extend((src.snap.pid, src.snap.start_ticks) for src in old.values())
    left.extend((x.pid, x.start_ticks) for x in old_extra)
    return part


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

    The daemon keeps one Merger instead, which also reuses the records of unchanged processes.
    """
    return Merger.after(prev).merge(scan, bpf, ts, mono, bpf_health)
