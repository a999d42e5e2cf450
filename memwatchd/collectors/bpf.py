"""eBPF collector: per-process allocation counters aggregated in the kernel, final counters of ended
processes, and OOM events.

The kernel side is memwatchd/bpf/memwatch.bpf.c (structs in memwatch.h). The daemon never imports bcc: load()
runs bpf_loader.py in a short-lived child that compiles and attaches with bcc and hands the maps and the
attachments over as file descriptors; this process reads them with plain bpf(2) calls and an mmap of the ring
buffer (bpfsys.py). That keeps libbcc and LLVM (~12 MB anonymous, ~50 MB file-backed) out of the daemon.

Counter semantics (all cumulative since the process was first seen by the probes):
  mmap_count/mmap_bytes      successful mmap calls and their requested lengths
  munmap_count/munmap_bytes  successful munmap calls and their lengths
  brk_count                  every brk call (queries included, as strace counts them)
  brk_bytes                  net heap growth from brk return values since the first brk seen (floored at 0)
  mremap_count               successful mremap calls
  mremap_grow_bytes/_shrink_bytes  sums of their length changes (new_len - old_len, or the reverse)
  mapped_bytes               outstanding bytes from the address-space changes since tracking began or the
                             last exec (MAP_FIXED replaces, never below zero): see memwatch.bpf.c
  start_ticks                the process's start time, exactly /proc/PID/stat field 22 (task start_boottime)
  last_update_ns             CLOCK_MONOTONIC ns, refreshed at creation, on each brk and mremap and on
                             every 64th mmap and munmap (a clock read per call cost ~4 points of the
                             worst-case loop)
32-bit compat syscalls are not counted.

Exits: the kernel keeps one record per ended process (final counters, start time, exit status, OOM mark,
VmHWM at the exit) in a hash map that poll() drains, so a burst of exits waits there instead of
overflowing a ring buffer; a record is lost only when the map (_MAX_EXITS records between two polls:
~10,000 exits a second at a 3 s interval) is full, and counted.
Kernel struct fields are read at offsets taken from the running kernel's BTF (btf.py); without BTF, start
times, exit statuses, OOM marks and peak RSS are unknown (0/None) and only exits of tracked processes are
reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.resources
import json
import logging
import mmap
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from memwatchd.collectors import bpfsys
from memwatchd.collectors.taskscan import TASK_RECORD, TaskIter
from memwatchd.config import BpfConfig
from memwatchd.models import BpfHealth, BpfPoll, BpfStats, OomKill, ProcessExit
from memwatchd.text import from_kernel

log = logging.getLogger("memwatchd.bpf")

# Probe points: (category, event). raw_syscalls:sys_exit stands for the sys_exit raw tracepoint.
_TRACEPOINTS = (
    ("raw_syscalls", "sys_exit"),
    ("sched", "sched_process_exec"),
    ("sched", "sched_process_exit"),
    ("oom", "mark_victim"),
    ("sched", "sched_process_free"),  # raw tracepoint: the task iterator's freed identities
)
_TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
_ARCHES = ("x86_64", "aarch64")
_PAGE = 4096
_BATCH = 1024  # map entries read per BPF_MAP_LOOKUP_BATCH call (buffers of 4,096 held ~0.8 MB more)
_MAX_EXITS = 32768  # exit records the kernel holds until the next poll (fewer when max_pids is smaller)
# handed over by the loader in this order
_MAPS = ("stats", "counters", "events", "exits", "scan_last", "scan_gone", "scan_ctl", "pcpu_off")
_ITER = "bpf_iter__task"  # the task iterator (collectors/taskscan.py)
# Kernel struct fields the probes read, resolved from BTF by the loader (see memwatch.bpf.c).
_BTF_FIELDS = {
    "MW_OFF_TASK_START": "task_struct.start_boottime",
    "MW_OFF_TASK_LEADER": "task_struct.group_leader",
    "MW_OFF_TASK_EXIT_CODE": "task_struct.exit_code",
    "MW_OFF_TASK_MM": "task_struct.mm",
    "MW_OFF_TASK_SIGNAL": "task_struct.signal",
    "MW_OFF_SIGNAL_OOM_MM": "signal_struct.oom_mm",
    "MW_OFF_MM_HIWATER": "mm_struct.hiwater_rss",
    "MW_OFF_MM_RSS_FILE": "mm_struct.rss_stat[MM_FILEPAGES].count",
    "MW_OFF_MM_RSS_ANON": "mm_struct.rss_stat[MM_ANONPAGES].count",
    "MW_OFF_MM_RSS_SHMEM": "mm_struct.rss_stat[MM_SHMEMPAGES].count",
}
# What only the task iterator reads (a kernel without one of them loses the iterator, not the probes).
_BTF_ITER_FIELDS = {
    "MW_OFF_TASK_PID": "task_struct.pid",
    "MW_OFF_TASK_TGID": "task_struct.tgid",
    "MW_OFF_TASK_FLAGS": "task_struct.flags",
    "MW_OFF_TASK_STATE": "task_struct.__state",
    "MW_OFF_TASK_EXIT_STATE": "task_struct.exit_state",
    "MW_OFF_TASK_REAL_PARENT": "task_struct.real_parent",
    "MW_OFF_TASK_COMM": "task_struct.comm",
    "MW_OFF_TASK_CGROUPS": "task_struct.cgroups",
    "MW_OFF_MM_TOTAL_VM": "mm_struct.total_vm",
    "MW_OFF_MM_RSS_SWAP": "mm_struct.rss_stat[MM_SWAPENTS].count",
    "MW_OFF_MM_PCPU_FILE": "mm_struct.rss_stat[MM_FILEPAGES].counters",
    "MW_OFF_MM_PCPU_ANON": "mm_struct.rss_stat[MM_ANONPAGES].counters",
    "MW_OFF_MM_PCPU_SWAP": "mm_struct.rss_stat[MM_SWAPENTS].counters",
    "MW_OFF_MM_PCPU_SHMEM": "mm_struct.rss_stat[MM_SHMEMPAGES].counters",
    "MW_OFF_TASK_CFS_RQ": "task_struct.se.cfs_rq",
    "MW_OFF_CFS_RQ_RQ": "cfs_rq.rq",
    "MW_OFF_RQ_CPU": "rq.cpu",
    "MW_PCPU_THIS_CPU_OFF": "percpu:this_cpu_off-runqueues",  # x86 only: elsewhere no iterator
}
_MAX_SCAN_CPUS = 64  # memwatch.bpf.c MW_MAX_CPUS: the per-CPU sum reads each possible CPU
_LOADER_TIMEOUT_S = 60.0  # a cold compile takes a few seconds; a hung loader must not hang the daemon
_MAX_FDS = 64
# An entry updated this recently is never collected: its process may have started after the caller's
# /proc scan, or its exit event may still be in flight.
_GC_MIN_IDLE_S = 5.0

# ctypes mirrors of memwatch.h; their sizes are passed to the compiler, which asserts they match.
_COMM_LEN = 16
_EVENT_OOM = 2
_EXIT_HAS_STATS, _EXIT_START_KNOWN, _EXIT_STATUS_KNOWN, _EXIT_OOM = 1, 2, 4, 8
_CTR_MAP_FULL = 0
_CTR_LOST_EVENTS = 1
_CTR_SCAN_MAP_FULL, _CTR_SCAN_GONE_LOST = 2, 3


class _Stats(ctypes.Structure):
    _fields_ = [
        ("mmap_count", ctypes.c_uint64),
        ("mmap_bytes", ctypes.c_uint64),
        ("munmap_count", ctypes.c_uint64),
        ("munmap_bytes", ctypes.c_uint64),
        ("brk_count", ctypes.c_uint64),
        ("brk_bytes", ctypes.c_uint64),
        ("mremap_count", ctypes.c_uint64),
        ("mremap_grow_bytes", ctypes.c_uint64),
        ("mremap_shrink_bytes", ctypes.c_uint64),
        ("mapped_net", ctypes.c_int64),
        ("mapped_low", ctypes.c_int64),
        ("start_ns", ctypes.c_uint64),
        ("last_brk", ctypes.c_uint64),
        ("last_update_ns", ctypes.c_uint64),
    ]


class _ExitKey(ctypes.Structure):
    _fields_ = [("start_ns", ctypes.c_uint64), ("tgid", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


class _Exit(ctypes.Structure):
    _fields_ = [
        ("stats", _Stats),
        ("mono_ns", ctypes.c_uint64),
        ("hwm_pages", ctypes.c_uint64),
        ("status", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
        ("comm", ctypes.c_char * _COMM_LEN),
    ]


class _Event(ctypes.Structure):
    _fields_ = [
        ("mono_ns", ctypes.c_uint64),
        ("total_vm_kb", ctypes.c_uint64),
        ("anon_rss_kb", ctypes.c_uint64),
        ("file_rss_kb", ctypes.c_uint64),
        ("shmem_rss_kb", ctypes.c_uint64),
        ("type", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("uid", ctypes.c_uint32),
        ("oom_score_adj", ctypes.c_int32),
        ("comm", ctypes.c_char * _COMM_LEN),
    ]


class BpfUnavailable(Exception):
    """BPF probes cannot be loaded; str() is a one-line human reason."""


_NS_PER_TICK = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def start_ticks_of(start_ns: int) -> int:
    """/proc/PID/stat field 22 from a task's start_boottime: the kernel's nsec_to_clock_t (a plain integer
    division by the tick length when USER_HZ divides 10^9, as on every Linux architecture)."""
    return start_ns // _NS_PER_TICK


def _to_stats(tgid: int, v: Any) -> BpfStats:
    return BpfStats(
        tgid=tgid,
        mmap_count=v.mmap_count,
        mmap_bytes=v.mmap_bytes,
        munmap_count=v.munmap_count,
        munmap_bytes=v.munmap_bytes,
        brk_count=v.brk_count,
        brk_bytes=v.brk_bytes,
        last_update_ns=v.last_update_ns,
        mremap_count=v.mremap_count,
        mremap_grow_bytes=v.mremap_grow_bytes,
        mremap_shrink_bytes=v.mremap_shrink_bytes,
        mapped_bytes=v.mapped_net - min(v.mapped_low, 0),
        start_ticks=start_ticks_of(v.start_ns),
    )


def _to_exit(k: Any, v: Any) -> ProcessExit:
    """One exits-map record as a ProcessExit (see memwatch.h for the flags)."""
    flags, status = v.flags, v.status
    known = bool(flags & _EXIT_STATUS_KNOWN)
    signal = status & 0x7F if known else 0
    code = -signal if signal else (status >> 8) & 0xFF
    return ProcessExit(
        pid=k.tgid,
        comm=_comm(v.comm),
        exit_code=code,
        final=_to_stats(k.tgid, v.stats) if flags & _EXIT_HAS_STATS else None,
        mono_ns=v.mono_ns,
        start_ticks=start_ticks_of(k.start_ns) if flags & _EXIT_START_KNOWN else 0,
        exit_signal=signal,
        oom_killed=bool(flags & _EXIT_OOM) and signal == 9,
        hwm_kb=v.hwm_pages * (_PAGE // 1024) if known else None,
    )


def _comm(raw: bytes) -> str:
    return from_kernel(raw.split(b"\0", 1)[0])


def _tracefs() -> Path | None:
    for p in _TRACEFS:
        if os.path.isdir(os.path.join(p, "events")):
            return Path(p)
    return None


_NEEDED_CAPS = ((39, "CAP_BPF"), (38, "CAP_PERFMON"))
_CAP_SYS_ADMIN = 21


def _effective_caps() -> int:
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def _has_cap(bit: int) -> bool:
    caps = _effective_caps()
    # kernels before 5.8 have no CAP_BPF/CAP_PERFMON: CAP_SYS_ADMIN covers both
    return bool(caps & (1 << bit) or caps & (1 << _CAP_SYS_ADMIN))


def _check_environment() -> Path:
    """Reasons that make loading pointless, checked before the (slow) compile."""
    missing = [name for bit, name in _NEEDED_CAPS if not _has_cap(bit)]
    if missing:
        raise BpfUnavailable(
            f"missing capabilities {', '.join(missing)} (run as root or grant them, as the unit does)"
        )
    if platform.machine() not in _ARCHES:
        raise BpfUnavailable(f"unsupported architecture {platform.machine()} (x86_64 and arm64 only)")
    tracefs = _tracefs()
    if tracefs is None:
        raise BpfUnavailable("tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)")
    build = Path("/lib/modules", os.uname().release, "build")
    if not build.exists():
        raise BpfUnavailable(f"no kernel headers at {build} (run scripts/setup)")
    return tracefs


def _cflags(
    cfg: BpfConfig, pages: int, include_dir: Path, tracefs: Path, extra: tuple[str, ...]
) -> list[str]:
    cflags = [
        f"-I{include_dir}",
        f"-DMAX_PIDS={cfg.max_pids}",
        f"-DMAX_EXITS={min(cfg.max_pids, _MAX_EXITS)}",
        f"-DRINGBUF_PAGES={pages}",
        f"-DMW_PAGE_SIZE={mmap.PAGESIZE}",
        f"-DMW_STATS_SIZE={ctypes.sizeof(_Stats)}",
        f"-DMW_EXIT_SIZE={ctypes.sizeof(_Exit)}",
        f"-DMW_EVENT_SIZE={ctypes.sizeof(_Event)}",
        f"-DMW_TASK_SIZE={TASK_RECORD.size}",
        f"-DMW_NR_CPUS={bpfsys.possible_cpus()}",
    ]
    if "group_dead" in (tracefs / "events/sched/sched_process_exit/format").read_text():
        cflags.append("-DMW_HAVE_GROUP_DEAD")
    cflags.extend(extra)
    return cflags


def _run_loader(request: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
    """Run bpf_loader in a child with the daemon's interpreter; returns its reply and the fds it sent."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # the child must import this very package, installed or not
    path = [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    with ours, tempfile.TemporaryFile() as errlog:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "memwatchd.collectors.bpf_loader", str(theirs.fileno())],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=errlog,
                pass_fds=(theirs.fileno(),),
                env=env,
            )
        except OSError as e:
            raise BpfUnavailable(f"cannot start the BPF loader: {e}") from None
        finally:
            theirs.close()  # the child's end: EOF on ours when the child dies without answering
        try:
            msg, fds = _receive(proc, ours, json.dumps(request).encode())
        finally:
            _reap(proc)
        if not msg:
            errlog.seek(0)
            lines = [ln.strip() for ln in errlog.read().decode(errors="replace").splitlines() if ln.strip()]
            detail = lines[-1] if lines else "no output"
            raise BpfUnavailable(f"BPF loader exited with status {proc.returncode}: {detail}")
    reply: dict[str, Any] = json.loads(msg)
    if "error" in reply:
        _close_all(fds)
        raise BpfUnavailable(reply["error"])
    return reply, fds


def _receive(proc: subprocess.Popen[bytes], sock: socket.socket, request: bytes) -> tuple[bytes, list[int]]:
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):  # the child died early: reported from its stderr
        proc.stdin.write(request)
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    sock.settimeout(_LOADER_TIMEOUT_S)
    try:
        msg, fds, flags, _ = socket.recv_fds(sock, 1 << 16, _MAX_FDS, socket.MSG_CMSG_CLOEXEC)
    except TimeoutError:
        proc.kill()
        raise BpfUnavailable(f"the BPF loader did not answer within {_LOADER_TIMEOUT_S:.0f} s") from None
    if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
        _close_all(fds)
        raise BpfUnavailable("the BPF loader's reply was truncated")
    return msg, fds


def _reap(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(timeout=5)  # it exits right after sending, or has been killed
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class BpfCollector:
    """Attached probes held as file descriptors. Create with BpfCollector.load(cfg); close() when done."""

    def __init__(self, fds: list[int], links: list[list[str]] | None = None) -> None:
        """fds: the maps in _MAPS order, then the attachments (closing those detaches the probes), whose
        [kind, name] are in links."""
        self._fds = fds
        stats_fd, counters_fd, events_fd, exits_fd, last_fd, gone_fd, ctl_fd, pcpu_fd = fds[: len(_MAPS)]
        # the layout as the kernel sees it, not as the loader reported it
        stats, counters, events, exits = (
            bpfsys.map_info(fd) for fd in (stats_fd, counters_fd, events_fd, exits_fd)
        )
        expected = [
            (bpfsys.MAP_TYPE_HASH, 4, ctypes.sizeof(_Stats)),
            (bpfsys.MAP_TYPE_PERCPU_ARRAY, 4, 8),
            (bpfsys.MAP_TYPE_RINGBUF, 0, 0),
            (bpfsys.MAP_TYPE_HASH, ctypes.sizeof(_ExitKey), ctypes.sizeof(_Exit)),
        ]
        if [(m.type, m.key_size, m.value_size) for m in (stats, counters, events, exits)] != expected:
            raise ValueError("the maps differ from memwatch.bpf.c's stats, counters, events and exits")
        self._stats_fd, self._counters_fd = stats_fd, counters_fd
        self._reader = bpfsys.HashBatchReader(stats_fd, _Stats, min(stats.max_entries, _BATCH))
        self._exit_reader = bpfsys.HashBatchReader(
            exits_fd, _Exit, min(exits.max_entries, _BATCH), _ExitKey, drain=True
        )
        self.btf_error: str | None = None  # why start times and exit statuses are unknown, if they are
        self.iter_error: str | None = None  # why there is no task iterator, if there is none
        iter_fd = next(
            (fd for fd, (kind, _) in zip(fds[len(_MAPS) :], links or [], strict=False) if kind == "iter"), -1
        )
        self.task_iter: TaskIter | None = None  # the /proc scan in the kernel (collectors/taskscan.py)
        if iter_fd >= 0:
            last = bpfsys.map_info(last_fd)
            self.task_iter = TaskIter(
                link_fd=iter_fd,
                last_fd=last_fd,
                gone_fd=gone_fd,
                ctl_fd=ctl_fd,
                counters_fd=counters_fd,
                pcpu_fd=pcpu_fd,
                max_pids=last.max_entries,
            )
        self._ncpus = bpfsys.possible_cpus()
        self._ring = bpfsys.RingBuffer(events_fd, events.max_entries)
        self._ooms: list[OomKill] = []
        self._last: dict[
            int, BpfStats
        ] = {}  # the previous poll's records, reused while an entry is unchanged
        self._poll_seq = 0  # map reads done (BpfPoll.seq)
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def load(cls, cfg: BpfConfig, *, extra_cflags: tuple[str, ...] = (), btf: bool = True) -> BpfCollector:
        """Compile and attach the probes (in a child); BpfUnavailable(reason) when that cannot be done here.

        extra_cflags is for benchmarks (e.g. -DMW_EMPTY_SYS_EXIT to measure the hook's floor); btf=False
        builds the probes as on a kernel without BTF (tests of that fallback).
        """
        tracefs = _check_environment()
        pages = max(1, cfg.ringbuf_kb * 1024 // _PAGE)
        if pages & (pages - 1):
            raise BpfUnavailable(f"ringbuf_kb {cfg.ringbuf_kb} is not a power-of-two number of pages")
        src = importlib.resources.files("memwatchd.bpf").joinpath("memwatch.bpf.c")
        with importlib.resources.as_file(src) as path:
            request = {
                "source": str(path),
                "cflags": _cflags(cfg, pages, path.parent, tracefs, extra_cflags),
                "tracepoints": _TRACEPOINTS,
                "maps": _MAPS,
                "btf": _BTF_FIELDS if btf else {},
                "btf_iter": _BTF_ITER_FIELDS if btf else {},
                "iters": [_ITER] if bpfsys.possible_cpus() <= _MAX_SCAN_CPUS else [],
            }
            reply, fds = _run_loader(request)
        try:
            if reply["maps"] != list(_MAPS) or len(fds) != len(_MAPS) + len(reply["links"]):
                raise ValueError(f"unexpected reply from the loader: {len(fds)} fds for {reply}")
            collector = cls(fds, reply["links"])
        except (OSError, ValueError) as e:
            _close_all(fds)
            raise BpfUnavailable(f"cannot open BPF maps: {_first_line(e)}") from None
        collector.btf_error = reply.get("btf_error")
        if collector.task_iter is None:
            collector.iter_error = reply.get("iter_error") or (
                "no kernel BTF"
                if collector.btf_error
                else f"more than {_MAX_SCAN_CPUS} possible CPUs"
                if bpfsys.possible_cpus() > _MAX_SCAN_CPUS
                else "not loaded"
            )
        if collector.btf_error:
            log.warning(
                "BPF: no kernel BTF (%s): start times, exit statuses and OOM marks of exits unknown",
                collector.btf_error,
            )
        return collector

    def attach_reader(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver ring-buffer events inside the event loop: the map fd is pollable, no thread needed."""
        if self._loop is not None:
            self._loop.remove_reader(self._ring.fileno())
        self._loop = loop
        loop.add_reader(self._ring.fileno(), self._consume)

    @property
    def pending_events(self) -> int:
        """OOM events received and not yet returned by poll() (exits wait in the kernel's exits map)."""
        return len(self._ooms)

    def poll(self) -> BpfPoll:
        """Current map contents plus the exits and OOM events since the previous poll.

        The stats map is read before the exits are drained: a process that ends between the two reads
        shows up in both (merge keeps its final counters), never in neither.
        """
        self._consume()
        last = self._last
        changed: list[int] = []  # tgids whose entry is new or moved (BpfPoll.changed)

        def convert(tgid: int, v: Any) -> BpfStats:
            # every event bumps one of the four call counters: an entry whose counters did not move is
            # unchanged, and the same object goes back, so merge sees it unchanged without comparing fields
            old = last.get(tgid)
            if (
                old is not None
                and old.mmap_count == v.mmap_count
                and old.munmap_count == v.munmap_count
                and old.brk_count == v.brk_count
                and old.mremap_count == v.mremap_count
                and old.last_update_ns == v.last_update_ns
            ):
                return old
            changed.append(tgid)
            return _to_stats(tgid, v)

        stats = self._last = self._reader.read(convert)
        self._poll_seq += 1  # the next poll's change set is relative to this map read
        seq = self._poll_seq
        exits = tuple(self._exit_reader.values(_to_exit))
        ooms, self._ooms = tuple(self._ooms), []
        map_full, lost = self._counter_sums()
        health = BpfHealth(state="active", tracked=len(stats), map_full=map_full, lost_events=lost)
        return BpfPoll(
            stats=stats,
            exits=exits,
            ooms=ooms,
            health=health,
            seq=seq,
            base_seq=seq - 1 if seq > 1 else None,
            changed=tuple(changed),
        )

    def gc(self, live_tgids: set[int], min_idle_s: float = _GC_MIN_IDLE_S) -> int:
        """Delete entries of processes not in live_tgids and idle for min_idle_s; returns how many.

        A safety net only: exits normally remove entries in the kernel. Entries can outlive their process
        when the leader-only exit check is in use, or when an exit event raced with an update.
        """
        cutoff = time.monotonic_ns() - int(min_idle_s * 1e9)  # same clock as bpf_ktime_get_ns
        stale = [
            s.tgid
            for s in self._reader.read(_to_stats).values()
            if s.tgid not in live_tgids and s.last_update_ns < cutoff
        ]
        # an entry the kernel removed meanwhile (its exit) is not counted
        return sum(bpfsys.delete_u32(self._stats_fd, tgid) for tgid in stale)

    def close(self) -> None:
        """Remove the reader, unmap the ring buffer and close every fd.

        That detaches the probes and frees the maps: nothing else holds them once the loader has exited.
        """
        if self._loop is not None:
            self._loop.remove_reader(self._ring.fileno())
            self._loop = None
        if self._fds:
            self._ring.close()
            _close_all(self._fds)
            self._fds = []

    def _counter_sums(self) -> tuple[int, int]:
        def total(idx: int) -> int:
            return sum(bpfsys.lookup_percpu_u64(self._counters_fd, idx, self._ncpus))

        # the task iterator's own (scan_last full; a freed process not reported) count the same way
        return total(_CTR_MAP_FULL) + total(_CTR_SCAN_MAP_FULL), total(_CTR_LOST_EVENTS) + total(
            _CTR_SCAN_GONE_LOST
        )

    def _consume(self) -> None:
        self._ring.consume(self._on_record)

    def _on_record(self, buf: mmap.mmap, offset: int, size: int) -> None:
        if size < ctypes.sizeof(_Event):
            return
        e = _Event.from_buffer_copy(buf, offset)
        if e.type == _EVENT_OOM:
            self._ooms.append(
                OomKill(
                    pid=e.pid,
                    comm=_comm(e.comm),
                    total_vm_kb=e.total_vm_kb,
                    anon_rss_kb=e.anon_rss_kb,
                    file_rss_kb=e.file_rss_kb,
                    shmem_rss_kb=e.shmem_rss_kb,
                    uid=e.uid,
                    oom_score_adj=e.oom_score_adj,
                    mono_ns=e.mono_ns,
                )
            )


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]
