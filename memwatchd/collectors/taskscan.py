"""The /proc scan done by the kernel: a BPF task iterator that reports only the processes that changed.

ProcfsCollector (procfs.py) must touch every process every scan: one os.listdir("/proc") entry and one
pread(2) of a held statm fd per process, ~3.2 µs of CPU per process in a tight loop (4.5 µs per process for
its whole scan), most of the daemon's cost on an idle host. This collector asks the kernel instead.
memwatch.bpf.c's bpf_iter__task program runs over every task when the daemon read()s an iterator fd
(BPF_ITER_CREATE on the link the loader child handed over, collectors/bpf_loader.py); for each thread-group
leader that is not a kernel thread it builds a 104-byte record from the fields /proc/PID/stat, statm and
status derive from (start time, comm, ppid, the state letter's inputs, the rss_stat counters, total_vm,
hiwater_rss, MM_SWAPENTS, and the css_set pointer as a cgroup-membership token), and writes it only when its
64-bit digest differs from the last one written for that tgid (map scan_last). A scan of idle processes is one
read() that returns nothing.

Costs (measured on this 2-CPU VM, 10,000 idle sleepers plus ~4,000 other processes, the same scans
interleaved): 0.65-0.96 µs of CPU per process per scan, against 4.5 µs for procfs.py's scan. The kernel walk
alone costs ~0.17 µs per task; the reads of task_struct and mm_struct fields (cache misses, fetched in a few
windows; the parent's tgid and the start time only for a record written out) most of the rest; user space
parses only the records that arrive, plus /proc/PID/cgroup for a new identity or a cgroup move and, with smaps
on, smaps_rollup for a process whose sizes moved. An unchanged process costs nothing in Python: its ProcSample
is the very object of the previous scan, as procfs.py gives it, so merge's reuse applies. A full pass (every
full_rescan_s) costs ~0.9 µs per process plus a comparison of each record's bytes. Kernel memory: scan_last is
preallocated for [bpf] max_pids tgids (~64 bytes each with the hash table's overhead: ~4 MB at 65,536) and
scan_gone for the exits map's size.

Exits: every pass stamps its generation (scan_ctl[1]) in the scan_last entry of each leader it visits, and
when the walk completes (the iterator calls the program once more, without a task, only at the end of a
complete walk) the kernel publishes how many entries it stamped and starts the next generation. When that
count equals the identities tracked here (one map lookup per scan), nobody left; otherwise the entries the
pass did not stamp are read from scan_last (a batch read: 0.17 / 0.13 µs of CPU per tracked process at
2,000 / 8,000 idle sleepers, mostly the kernel's copy, paid only by a scan that follows an exit), dropped
here and deleted there. A process reaped
since the previous pass is off the task list, so it is gone at the first scan after its reap, whenever its
task struct is freed (the free event, sched_process_free, comes an RCU grace period later or later still:
waiting for it kept some exited processes "alive" until the next full pass). The free event still removes
the entry of a freed tgid and reports it in scan_gone, which each scan drains. A zombie stays, as /proc
shows it (state Z, sizes 0), until it is reaped. Every full_rescan_s a full pass (scan_ctl[0] = 1) makes
the kernel emit every process: the live set is reconciled against it and scan_last entries of processes
not seen are deleted. A full pass also comes when scan_gone overflowed.

Values equal what procfs.py reads: rss_kb = (file + anon + shmem) pages, each counter the sum of its central
count and its per-CPU parts clamped at 0, as this kernel's statm and status do (get_mm_counter_sum; the
central count alone was off by up to 31 pages per CPU); vm_kb = total_vm; hwm_kb = max(hiwater_rss, rss)
(VmHWM); anon_kb = RssAnon; swap_kb = VmSwap; state from task_state_index() as fs/proc/array.c; ppid =
real_parent's tgid; start_ticks = start_boottime in clock ticks. A process without an mm (a zombie, or one
past exit_mm) has sizes 0, hwm_kb and swap_kb None, as /proc shows it.

Limits:
* The initial PID namespace and the live /proc only: the iterator reports kernel pids (the daemon checks
  NSpid and the root before choosing this source: collectors/source.py).
* scan_last holds [bpf] max_pids tgids. A process that finds it full is emitted on every pass (marked
  untracked: correct, just slower) and counted (scan_map_full); it is dropped when a pass misses it.
* x86_64 only for now: /proc sums each rss_stat counter's per-CPU parts, and the per-CPU area offsets come
  from x86's this_cpu_off (learnt at start from each CPU's runqueue, checked for every online CPU); at most
  64 possible CPUs (the sum reads one 16-byte part per CPU). Elsewhere "auto" scans /proc.
* The task iterator of this kernel (6.18) never visits PID 1; the collector reads PID 1 through procfs.py.
* A new process in the same css_set as its live, tracked parent takes the parent's unit and cgroup without
  reading /proc/PID/cgroup (a fork storm reads no file; see _witness for why the pointer identifies the
  same cgroups), and reads the file at the next full pass to confirm, or at the first scan that sees the
  parent's css_set change (a parent moved between the pass and the read of its file held its new labels
  under its old css_set; _confirm_borrowed). A parent that moved and came back to a css_set at the same
  address between two scans, or a css_set freed and reused at the same address in the microseconds
  between the iterator's visits of parent and child, could still mislabel a child until the full pass.
  The children waiting for that confirmation are remembered per parent until the full pass; a child whose
  labels were borrowed lends them on to its own children, who are confirmed with it.
* A zombie keeps the unit and cgroup it ran under (its css_set stays; cgroup v1's /proc/PID/cgroup shows
  "/" for a zombie, which relabelled every exiting process in the stored history): it is not re-read when it
  turns zombie nor at a full pass. One first seen as a zombie borrows its live parent's labels when they
  share the css_set, else reads the file.
* Between full passes an identity's cgroup path is re-read only when its css_set changes, which every
  cgroup move does; a
  cgroup renamed in place keeps its old path until the process's next change of identity (procfs.py has
  the same lag until its full rescan).
* Reading the iterator holds no lock across tasks; a process that forks or exits during the walk is seen in
  this pass or the next, as with a listdir of /proc.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import compress
from typing import TypeVar

from memwatchd.collectors import bpfsys
from memwatchd.collectors.procfs import (
    _SYSTEMIC_ERRNOS,
    ProcfsCollector,
    _read_all,
    parse_smaps_rollup,
    read_boot_time,
    read_meminfo,
    unit_from_cgroup,
)
from memwatchd.models import ProcKey, ProcSample, ProcScan
from memwatchd.text import from_kernel

# struct mw_task of memwatch.h: start_ns, cgroup_token, file, anon, shmem, swap, total_vm, hiwater, tgid,
# ppid, state, flags, _pad, comm, emit, _pad2. Its size is passed to the compiler, which asserts it matches.
TASK_RECORD = struct.Struct("<QQQQQQQQIIHHI16sII")
_CMP_LEN = 96  # the compared words (emit excluded)
_TGID_AT, _EMIT_AT = 64, 96
_U32 = struct.Struct("<I")
_NO_MM = 1  # enum mw_task_flags
_UNTRACKED = 1  # enum mw_task_emit
_STATES = "RSDTtXZPI"  # task_state_array of fs/proc/array.c
_CTR_SCAN_MAP_FULL, _CTR_SCAN_GONE_LOST = 2, 3  # enum mw_counter
_SCAN_FULL, _SCAN_CALIBRATE = 1, 2  # scan_ctl[0] bits
_CTL_GEN, _CTL_DONE = 1, 3  # enum mw_scan_ctl: the pass under way; entries stamped by the last complete one
_SEEN_U32S, _SEEN_GEN_AT = 6, 4  # struct mw_task_seen: task, digest, gen, _pad as u32 words
_READ_CHUNK = 1 << 16  # the kernel fills at most its 8-page seq buffer per read()
_GONE_BATCH = 1024
_NS_PER_TICK = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TaskIter:
    """The kernel objects of the task iterator, owned (and closed) by the BpfCollector that loaded them."""

    link_fd: int  # BPF_ITER_CREATE on it gives an fd whose read() runs bpf_iter__task
    last_fd: int  # scan_last: tgid -> digest of the last record emitted
    gone_fd: int  # scan_gone: (start_ns, tgid) of freed processes the iterator had reported
    ctl_fd: int  # scan_ctl: slot 0 != 0 asks for a full pass; the pass generations (enum mw_scan_ctl)
    counters_fd: int  # the per-CPU counters (scan_map_full, gone records lost)
    pcpu_fd: int  # pcpu_off: each CPU's per-CPU area offset, learnt by the iterator
    max_pids: int  # scan_last's capacity


class _GoneKey(ctypes.Structure):
    _fields_ = [("start_ns", ctypes.c_uint64), ("tgid", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


class _GoneValue(ctypes.Structure):
    _fields_ = [("mono_ns", ctypes.c_uint64)]


class _Seen(ctypes.Structure):
    _fields_ = [
        ("task", ctypes.c_uint64),
        ("digest", ctypes.c_uint64),
        ("gen", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


class _Entry:
    """What the collector remembers about one identity between scans."""

    __slots__ = ("raw", "start_ns", "token", "borrowed", "unit", "cgroup", "pss", "uss", "sample")

    def __init__(self, start_ns: int, token: int) -> None:
        self.raw = 0  # hash of the compared part of the last record (a copy took ~100 B per process)
        self.start_ns = start_ns
        self.token = token  # css_set pointer when unit and cgroup were read
        self.borrowed = False  # unit and cgroup copied from the parent (_witness): read at the next full pass
        self.unit: str | None = None
        self.cgroup: str | None = None
        self.pss: int | None = None
        self.uss: int | None = None
        self.sample: ProcSample | None = None


class TaskScanCollector:
    """ProcfsCollector's contract (scan() -> ProcScan, live_pids, set_smaps, close) on the task iterator.

    root is the procfs the per-process files (cgroup, smaps_rollup) and meminfo are read from: the live
    /proc of the initial PID namespace, as the iterator reports kernel pids.
    """

    def __init__(
        self, it: TaskIter, root: str = "/proc", smaps: bool = False, full_rescan_s: float = 60.0
    ) -> None:
        self._it = it
        self._root = root.rstrip("/") or "/"
        self._smaps = smaps
        self._full_rescan_s = full_rescan_s
        self._cache: dict[int, _Entry] = {}
        self._samples: tuple[ProcSample, ...] = ()
        self._side_samples: tuple[ProcSample, ...] = ()
        self._pending: set[int] = set()  # tgids whose record in the pass being applied is still to come
        self._freed: set[tuple[int, int]] = set()  # (tgid, start_ns) the kernel reported freed, this scan
        # the change sets of the scan being built (ProcScan.changed and .gone)
        self._changed: list[ProcSample] = []
        self._gone_keys: list[ProcKey] = []
        self._seq = 0  # scans returned (ProcScan.seq)
        self._chained = False  # the cache holds exactly what the last returned scan saw
        self._untracked: set[int] = set()  # tgids emitted as untracked (scan_last full): seen every pass
        # parent tgid -> the children that borrowed its cgroup since the last full pass (_witness), and the
        # children to confirm from their own file in this scan (their parent's css_set changed since)
        self._borrowers: dict[int, list[int]] = {}
        self._labels: dict[str, str] = {}  # units and cgroup paths read, each once (_read_cgroup)
        self._tokens: dict[int, int] = {}  # css_set tokens, each once (entries share the object)
        self._confirm: list[int] = []
        self._next_full = float("-inf")
        self._gone = bpfsys.HashBatchReader(it.gone_fd, _GoneValue, _GONE_BATCH, _GoneKey, drain=True)
        self._last = bpfsys.HashBatchReader(it.last_fd, _Seen, _GONE_BATCH)
        self._ncpus = bpfsys.possible_cpus()
        self._gone_lost = self._counter(_CTR_SCAN_GONE_LOST)
        self._buf = bytearray(_READ_CHUNK)
        self.uncalibrated = self.calibrate()
        self._page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
        self._clk_tck = os.sysconf("SC_CLK_TCK")
        self._boot_time = read_boot_time(self._root)
        self._boot_time_read = time.monotonic()
        # cumulative, for tests and benchmarks: what the scans cost in user space
        # Processes the iterator does not visit (here: PID 1, which the kernel's task iterator skips on
        # this 6.18 kernel), found on the first full pass, are read from /proc by procfs.py.
        self._side: ProcfsCollector | None = None
        self.records_parsed = 0  # records whose bytes differed from the identity's previous record
        self.last_parsed: list[int] = []  # their tgids in the last scan
        self.files_read = 0  # per-process files opened (cgroup, smaps_rollup)
        self.last_read: list[int] = []  # the tgids whose files the last scan opened
        self.full_passes = 0

    @property
    def smaps(self) -> bool:
        """Whether PSS/USS are read from smaps_rollup ([procfs] smaps)."""
        return self._smaps

    def set_smaps(self, on: bool) -> None:
        """Turn PSS/USS reading on or off (reload): the next scan is a full pass that re-reads everything."""
        if on == self._smaps:
            return
        self._smaps = on
        self._next_full = float("-inf")
        if self._side is not None:
            self._side.set_smaps(on)
        for e in self._cache.values():
            e.raw = 0
            if not on:
                e.pss = e.uss = None

    @property
    def live_pids(self) -> set[int]:
        """TGIDs of the processes of the last scan, zombies included (kernel threads are never reported)."""
        return set(self._cache).union(s.pid for s in self._side_samples)

    def calibrate(self) -> list[int]:
        """Run a calibration pass (the kernel learns each CPU's per-CPU offset from the kernel threads);
        returns the online CPUs still without one (their part of the rss counters would be missing)."""
        bpfsys.update_u32(self._it.ctl_fd, 0, _SCAN_CALIBRATE)
        try:
            fd = bpfsys.iter_create(self._it.link_fd)
            try:
                while os.readv(fd, [self._buf]):
                    pass
            finally:
                os.close(fd)
        finally:
            bpfsys.update_u32(self._it.ctl_fd, 0, 0)
        online = bpfsys.cpu_list("/sys/devices/system/cpu/online")
        return [c for c in online if c >= self._ncpus or not bpfsys.lookup_u64(self._it.pcpu_fd, c)]

    @property
    def scan_map_full(self) -> int:
        """Times the iterator met a process it could not track (scan_last full: emitted on every pass)."""
        return self._counter(_CTR_SCAN_MAP_FULL)

    def close(self) -> None:
        """Forget all identities (the kernel objects belong to the BpfCollector)."""
        if self._side is not None:
            self._side.close()
            self._side = None
        self._cache = {}
        self._samples = ()
        self._chained = False

    def __enter__(self) -> TaskScanCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def scan(self, now_mono: float) -> ProcScan:
        """Read what changed since the previous scan; now_mono is time.monotonic() from the caller."""
        lost = self._counter(_CTR_SCAN_GONE_LOST)
        # a freed identity that could not be reported is found by a full pass
        full = now_mono >= self._next_full or lost != self._gone_lost
        self._gone_lost = lost
        first = not self.full_passes
        if full:
            self._next_full = now_mono + self._full_rescan_s
            self.full_passes += 1
            self._labels = {}  # labels of groups gone leave with it; this pass reads the live ones again
            self._tokens = {}
        chained, self._chained = self._chained, False  # stays False if this scan fails half way
        changed: list[ProcSample] = []
        gone: list[ProcKey] = []
        self._changed, self._gone_keys = changed, gone
        self.last_read = []
        try:
            data = self._read_pass(full)
            # freed identities are read before the records are applied (_witness needs them) and
            # applied after (a record of a task whose free already ran must not bring it back)
            self._freed = set(self._gone.values(_gone_key))
            seen = self._apply_records(data, full)
            removed = self._drain_gone() + self._reconcile(seen, full)
            removed += self._unvisited()
            if full:
                self._borrowers.clear()  # a full pass read every borrowed label from its file
            elif self._confirm:
                self._confirm_borrowed()
        except BaseException:
            # the kernel took what it emitted as reported: only a full pass brings the cache back in step
            self._next_full = float("-inf")
            raise
        if first and 1 not in seen and os.path.exists(f"{self._root}/1"):
            self._side = ProcfsCollector(self._root, self._smaps, self._full_rescan_s, pids=(1,))
        side: tuple[ProcSample, ...] = ()
        if self._side is not None:
            side_scan = self._side.scan(now_mono)
            side = side_scan.samples
            changed.extend(side if side_scan.changed is None else side_scan.changed)
            gone.extend(side_scan.gone)
        if data or removed or changed or gone or len(side) != len(self._side_samples):
            self._side_samples = side
            self._samples = side + tuple([e.sample for e in self._cache.values() if e.sample is not None])
        self._seq += 1
        self._chained = True
        if now_mono - self._boot_time_read >= self._full_rescan_s:
            # btime follows wall-clock steps; refreshed now and then, it keeps start times in step.
            self._boot_time = read_boot_time(self._root)
            self._boot_time_read = now_mono
        return ProcScan(
            samples=self._samples,
            meminfo=read_meminfo(self._root),
            boot_time=self._boot_time,
            clk_tck=self._clk_tck,
            errors=0,
            seq=self._seq,
            base_seq=self._seq - 1 if chained else None,
            changed=tuple(changed) if chained else None,
            gone=tuple(gone),
        )

    def shrink(self) -> None:
        """The cache sized for the processes there are (see Merger.shrink); not during a scan."""
        self._cache = dict(self._cache)
        self._untracked = set(self._untracked)
        self._borrowers = dict(self._borrowers)
        self._pending = set(self._pending)
        self._freed = set(self._freed)
        self._labels = dict(self._labels)
        self._tokens = dict(self._tokens)

    def _counter(self, idx: int) -> int:
        return sum(bpfsys.lookup_percpu_u64(self._it.counters_fd, idx, self._ncpus))

    def _read_pass(self, full: bool) -> bytes:
        """One run of the iterator: every record it emitted (all of them when full)."""
        if full:
            bpfsys.update_u32(self._it.ctl_fd, 0, _SCAN_FULL)
        try:
            fd = bpfsys.iter_create(self._it.link_fd)
            try:
                buf, chunks = self._buf, []
                while n := os.readv(fd, [buf]):
                    chunks.append(bytes(buf[:n]))
            finally:
                os.close(fd)
        finally:
            if full:
                bpfsys.update_u32(self._it.ctl_fd, 0, 0)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _apply_records(self, data: bytes, full: bool) -> set[int]:
        """Update the cache from the records; returns the tgids they hold."""
        seen: set[int] = set()
        if not data:
            self.last_parsed = []
            return seen
        size = TASK_RECORD.size
        if len(data) % size:
            raise OSError(errno.EIO, f"task iterator returned {len(data)} bytes, not records of {size}")
        cache, untracked = self._cache, self._untracked
        parsed = self.last_parsed = []
        u32 = _U32.unpack_from
        offsets = range(0, len(data), size)
        tgids = [u32(data, off + _TGID_AT)[0] for off in offsets]
        seen.update(tgids)
        self._pending = pending = set(seen)  # records of this pass not applied yet (see _witness)
        for off, tgid in zip(offsets, tgids, strict=True):
            pending.discard(tgid)
            if u32(data, off + _EMIT_AT)[0] == _UNTRACKED:
                untracked.add(tgid)
            elif untracked:
                untracked.discard(tgid)
            raw = hash(data[off : off + _CMP_LEN])
            e = cache.get(tgid)
            if e is not None and e.raw == raw and not (full and e.borrowed):
                if full and self._smaps and e.sample is not None:
                    self._refresh_smaps(tgid, e)
                continue
            self.records_parsed += 1
            parsed.append(tgid)
            before = e.sample if e is not None else None
            cache[tgid] = e = self._parse(data, off, raw, e, full, tgid)
            after = e.sample
            if after is not before:
                if after is not None:
                    self._changed.append(after)
                if before is not None and (after is None or after.start_ticks != before.start_ticks):
                    self._gone_keys.append(before.key)
        return seen

    def _drain_gone(self) -> int:
        """Drop the identities the kernel reported freed (read by _read_gone); returns how many."""
        cache, n = self._cache, 0
        for tgid, start_ns in self._freed:
            e = cache.get(tgid)
            if e is not None and e.start_ns == start_ns:  # else the pid was reused: the new one stays
                del cache[tgid]
                if e.sample is not None:
                    self._gone_keys.append(e.sample.key)
                self._untracked.discard(tgid)
                n += 1
        return n

    def _parse(self, data: bytes, off: int, raw: int, e: _Entry | None, full: bool, tgid: int) -> _Entry:
        """The entry of the record at `off`; tgid is the caller's object for its pid (the cache's key: the
        sample shares it instead of holding an equal int of its own)."""
        (
            start_ns, token, file, anon, shmem, swap, total_vm, hiwater,
            _tgid, ppid, state_idx, flags, _pad, comm_raw, _emit, _pad2,
        ) = TASK_RECORD.unpack_from(data, off)  # fmt: skip
        fresh = e is None or e.start_ns != start_ns
        state = _STATES[state_idx] if state_idx < len(_STATES) else "?"
        if e is None or fresh or token != e.token:
            # one int per css_set, not one per process (~32 B each)
            token = self._tokens.setdefault(token, token)
        if e is None or fresh:
            e = _Entry(start_ns, token)
            w = self._witness(ppid, token)
            if w is not None:
                e.unit, e.cgroup, e.borrowed = w.unit, w.cgroup, True
                self._borrowers.setdefault(ppid, []).append(tgid)
            else:
                e.unit, e.cgroup = self._read_cgroup(tgid)
        elif token != e.token or (full and e.borrowed and state != "Z"):
            # (a zombie keeps the labels it ran under: cgroup v1's file shows "/" for it)
            if token != e.token and (kids := self._borrowers.pop(tgid, None)):
                self._confirm += kids  # a parent that moves may have been in another cgroup at their fork
            e.token, e.borrowed = token, False
            e.unit, e.cgroup = self._read_cgroup(tgid)
        e.raw = raw
        pk = self._page_kb
        if flags & _NO_MM:
            rss_kb = vm_kb = anon_kb = 0
            hwm_kb: int | None = None
            swap_kb: int | None = None
            e.pss = e.uss = None
        else:
            rss = file + anon + shmem
            rss_kb, vm_kb, anon_kb, swap_kb = rss * pk, total_vm * pk, anon * pk, swap * pk
            hwm_kb = max(hiwater, rss) * pk
        old = e.sample
        if (
            self._smaps
            and not flags & _NO_MM
            and (fresh or full or old is None or (old.rss_kb, old.vm_kb) != (rss_kb, vm_kb))
        ):
            e.pss, e.uss = self._read_smaps(tgid)
        comm = from_kernel(comm_raw.split(b"\0", 1)[0])
        start_ticks = start_ns // _NS_PER_TICK
        if (
            old is None
            or (old.start_ticks, old.rss_kb, old.vm_kb, old.state, old.ppid, old.comm)
            != (start_ticks, rss_kb, vm_kb, state, ppid, comm)
            or (old.hwm_kb, old.anon_kb, old.swap_kb) != (hwm_kb, anon_kb, swap_kb)
            or (old.unit, old.cgroup, old.pss_kb, old.uss_kb) != (e.unit, e.cgroup, e.pss, e.uss)
        ):
            e.sample = ProcSample(
                pid=tgid, start_ticks=start_ticks, comm=comm, ppid=ppid, state=state, rss_kb=rss_kb,
                vm_kb=vm_kb, hwm_kb=hwm_kb, anon_kb=anon_kb, swap_kb=swap_kb, unit=e.unit, cgroup=e.cgroup,
                pss_kb=e.pss, uss_kb=e.uss,
            )  # fmt: skip
        return e

    def _witness(self, ppid: int, token: int) -> _Entry | None:
        """The parent's entry when it vouches for a new child's cgroup: same css_set, labels from the file.

        Its token is current (its record is not waiting later in this pass, which a move would have
        produced) and it is alive (not freed: a freed parent's css_set may have been freed and its memory
        reused). A css_set is freed only after every task in it has been freed, and the kernel writes a
        task's scan_gone record before it drops the task's reference; so a live parent in css_set T and a
        child in T share one object, with one set of cgroups. Fork storms then read no cgroup file. A parent
        that borrowed its own labels vouches as well (they came from a file read for the same css_set, through
        its own witness); when they turn out wrong (_confirm_borrowed), its borrowers are read again with it.
        """
        p = self._cache.get(ppid)
        if (
            p is None
            or p.token != token
            or p.cgroup is None
            or ppid in self._pending
            or (ppid, p.start_ns) in self._freed
            or (p.sample is not None and p.sample.state == "Z")  # a leader gone before its threads: "/"
        ):
            return None
        return p

    def _unvisited(self) -> int:
        """Drop the tracked identities the pass just completed did not visit; returns how many.

        The kernel stamps the pass's generation in the scan_last entry of every leader it visits and, at
        the end of a complete walk, publishes how many entries it stamped. Equal to the tracked identities
        here (the common case: one lookup), nobody went; otherwise the entries not stamped are read from
        scan_last (a process reaped since the previous pass is no longer on the task list, whenever its
        task struct is freed) and deleted there.
        """
        tracked = len(self._cache) - len(self._untracked)
        if bpfsys.lookup_u64(self._it.ctl_fd, _CTL_DONE) == tracked:
            return 0
        done = (bpfsys.lookup_u64(self._it.ctl_fd, _CTL_GEN) - 1) & 0xFFFFFFFF
        unstamped: set[int] = set()
        for keys, values in self._last.raw():
            gens = values.cast("I")[_SEEN_GEN_AT::_SEEN_U32S]
            unstamped.update(compress(keys.cast("I"), map(done.__ne__, gens)))
        cache, untracked, n = self._cache, self._untracked, 0
        # A tracked identity the kernel no longer holds was freed: its scan_gone record comes with the next
        # scan. Every unstamped entry goes, also one this collector does not know (left by a scan that
        # failed half way): the pass did not meet its task, which left the task list before the pass did.
        for pid in unstamped:
            bpfsys.delete_u32(self._it.last_fd, pid)
            if pid in cache and pid not in untracked:
                e = cache.pop(pid)
                if e.sample is not None:
                    self._gone_keys.append(e.sample.key)
                n += 1
        return n

    def _confirm_borrowed(self) -> None:
        """Read the cgroup file of the children whose parent's css_set changed since they borrowed its
        labels. The parent's token is read during the pass and its file after it: a parent that moved in
        between holds its new cgroup's labels under its old css_set until its next record, and a child
        forked in the old css_set borrows them (a parent moving between cgroups while it forks). The
        children that borrowed from a confirmed child are confirmed with it."""
        confirm, self._confirm = self._confirm, []
        while confirm:
            tgid = confirm.pop()
            e = self._cache.get(tgid)
            if e is None or not e.borrowed:
                continue
            e.borrowed = False
            confirm += self._borrowers.pop(tgid, ())
            if e.sample is not None and e.sample.state == "Z":
                continue  # its file shows "/" now: the borrowed labels are the best there are
            e.unit, e.cgroup = self._read_cgroup(tgid)
            old = e.sample
            if old is not None and (old.unit, old.cgroup) != (e.unit, e.cgroup):
                e.sample = dataclasses.replace(old, unit=e.unit, cgroup=e.cgroup)
                self._changed.append(e.sample)

    def _reconcile(self, seen: set[int], full: bool) -> int:
        """Drop untracked processes a pass missed and, on a full pass, every process it missed."""
        cache = self._cache
        if full:
            stale = [pid for pid in cache if pid not in seen]
        elif self._untracked:
            stale = [pid for pid in self._untracked if pid not in seen]
        else:
            return 0
        for pid in stale:
            e = cache.pop(pid)
            if e.sample is not None:
                self._gone_keys.append(e.sample.key)
            self._untracked.discard(pid)
            if full:
                # a leftover entry (a pass met a task whose free had already run) would hide a new
                # process with this pid: deleting is always safe, the next pass just reports it again
                bpfsys.delete_u32(self._it.last_fd, pid)
        return len(stale)

    def _read_smaps(self, tgid: int) -> tuple[int | None, int | None]:
        return self._read_file(tgid, "smaps_rollup", parse_smaps_rollup)

    def _refresh_smaps(self, tgid: int, e: _Entry) -> None:
        """A full pass with smaps on: PSS moves when a sharer changes, even if this process did not."""
        pss, uss = self._read_smaps(tgid)
        if (pss, uss) != (e.pss, e.uss) and e.sample is not None:
            e.pss, e.uss = pss, uss
            e.sample = dataclasses.replace(e.sample, pss_kb=pss, uss_kb=uss)
            self._changed.append(e.sample)
        else:
            e.pss, e.uss = pss, uss

    def _read_cgroup(self, tgid: int) -> tuple[str | None, str | None]:
        unit, cgroup = self._read_file(tgid, "cgroup", lambda d: unit_from_cgroup(from_kernel(d)))
        # one string per distinct label, not one per process that read it from its file
        labels = self._labels
        return (
            None if unit is None else labels.setdefault(unit, unit),
            None if cgroup is None else labels.setdefault(cgroup, cgroup),
        )

    def _read_file(
        self, tgid: int, name: str, parse: Callable[[bytes], tuple[T | None, T | None]]
    ) -> tuple[T | None, T | None]:
        self.files_read += 1
        self.last_read.append(tgid)
        try:
            return parse(_read_all(f"{self._root}/{tgid}/{name}"))
        except OSError as exc:
            if exc.errno in _SYSTEMIC_ERRNOS:
                raise
            return None, None


def _gone_key(k: _GoneKey, _v: _GoneValue) -> tuple[int, int]:
    return int(k.tgid), int(k.start_ns)
