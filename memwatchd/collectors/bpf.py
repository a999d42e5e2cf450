"""eBPF collector: per-process allocation counters aggregated in the kernel, plus exit and OOM events.

The kernel side is memwatchd/bpf/memwatch.bpf.c (structs in memwatch.h). bcc is imported only inside
BpfCollector.load(), so modules that merely import this one (the CLI, tests without root) never pull it in.

Counter semantics (all cumulative since the process was first seen by the probes):
  mmap_count/mmap_bytes      successful mmap calls and their requested lengths
  munmap_count/munmap_bytes  successful munmap calls and their lengths
  brk_count                  every brk call (queries included, as strace counts them)
  brk_bytes                  net heap growth from brk return values since the first brk seen (floored at 0)
  last_update_ns             CLOCK_MONOTONIC ns, refreshed at creation, on each brk and on every 64th mmap
                             and munmap (a clock read per call cost ~4 points of the worst-case loop)
mremap and 32-bit compat syscalls are not counted. Exit codes are reported as 0 (not in the tracepoint).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import importlib.resources
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from memwatchd.config import BpfConfig
from memwatchd.models import BpfHealth, BpfPoll, BpfStats, OomKill, ProcessExit

# Probe points: (category, event). raw_syscalls:sys_exit stands for the sys_exit raw tracepoint.
_TRACEPOINTS = (
    ("raw_syscalls", "sys_exit"),
    ("sched", "sched_process_exec"),
    ("sched", "sched_process_exit"),
    ("oom", "mark_victim"),
)
_TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
_ARCHES = ("x86_64", "aarch64")
_PAGE = 4096
_BATCH = 4096  # map entries read per BPF_MAP_LOOKUP_BATCH call
# An entry updated this recently is never collected: its process may have started after the caller's
# /proc scan, or its exit event may still be in flight.
_GC_MIN_IDLE_S = 5.0

# ctypes mirrors of memwatch.h; their sizes are passed to the compiler, which asserts they match.
_COMM_LEN = 16
_EVENT_EXIT = 1
_EVENT_OOM = 2
_CTR_MAP_FULL = 0
_CTR_LOST_EVENTS = 1


class _Stats(ctypes.Structure):
    _fields_ = [
        ("mmap_count", ctypes.c_uint64),
        ("mmap_bytes", ctypes.c_uint64),
        ("munmap_count", ctypes.c_uint64),
        ("munmap_bytes", ctypes.c_uint64),
        ("brk_count", ctypes.c_uint64),
        ("brk_bytes", ctypes.c_uint64),
        ("last_brk", ctypes.c_uint64),
        ("last_update_ns", ctypes.c_uint64),
    ]


class _Event(ctypes.Structure):
    _fields_ = [
        ("mono_ns", ctypes.c_uint64),
        ("stats", _Stats),
        ("total_vm_kb", ctypes.c_uint64),
        ("anon_rss_kb", ctypes.c_uint64),
        ("file_rss_kb", ctypes.c_uint64),
        ("shmem_rss_kb", ctypes.c_uint64),
        ("type", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("exit_code", ctypes.c_int32),
        ("uid", ctypes.c_uint32),
        ("oom_score_adj", ctypes.c_int32),
        ("_pad", ctypes.c_uint32),
        ("comm", ctypes.c_char * _COMM_LEN),
    ]


class _BatchReader:
    """Reads the whole stats map with BPF_MAP_LOOKUP_BATCH into one buffer allocated once.

    bcc 0.26's items_lookup_batch() allocates max_entries keys and values (4 MB at 65,536 entries) on every
    call and shares one c_uint32 between the batch token and the count, which breaks resumption when one
    call does not return everything. This calls the same libbpf function with a fixed-size chunk.
    """

    def __init__(self, lib: Any, map_fd: int, chunk: int) -> None:
        self._lib, self._fd = lib, map_fd
        self._keys = (ctypes.c_uint32 * chunk)()
        self._values = (_Stats * chunk)()
        self._chunk = chunk

    def read(self) -> dict[int, BpfStats]:
        out: dict[int, BpfStats] = {}
        token_in, token_out = ctypes.c_uint32(0), ctypes.c_uint32(0)
        first = True
        while True:
            count = ctypes.c_uint32(self._chunk)
            res = self._lib.bpf_lookup_batch(
                self._fd,
                None if first else ctypes.byref(token_in),
                ctypes.byref(token_out),
                self._keys,
                self._values,
                ctypes.byref(count),
            )
            err = ctypes.get_errno()
            for i in range(count.value):
                tgid = self._keys[i]
                out[tgid] = _to_stats(tgid, self._values[i])
            if res != 0:
                if err == errno.ENOENT:  # end of map
                    return out
                raise OSError(err, f"BPF_MAP_LOOKUP_BATCH: {os.strerror(err)}")
            token_in.value, first = token_out.value, False


class BpfUnavailable(Exception):
    """BPF probes cannot be loaded; str() is a one-line human reason."""


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
    )


def _comm(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


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
        raise BpfUnavailable(f"missing capabilities {', '.join(missing)} (run as root or grant them, as the unit does)")
    if platform.machine() not in _ARCHES:
        raise BpfUnavailable(f"unsupported architecture {platform.machine()} (x86_64 and arm64 only)")
    tracefs = _tracefs()
    if tracefs is None:
        raise BpfUnavailable("tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)")
    build = Path("/lib/modules", os.uname().release, "build")
    if not build.exists():
        raise BpfUnavailable(f"no kernel headers at {build} (run scripts/setup)")
    return tracefs


def _compile_error_summary(stderr_text: str) -> str:
    for line in stderr_text.splitlines():
        if "error:" in line:
            return line.strip()
    lines = [ln.strip() for ln in stderr_text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no compiler output"


def _malloc_trim() -> None:
    # bcc's LLVM compile leaves ~46 MB of freed heap; give it back to the OS.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class BpfCollector:
    """Loaded and attached probes. Create with BpfCollector.load(cfg); call close() when done."""

    def __init__(self, bpf: Any, lib: Any) -> None:
        self._bpf = bpf
        self._stats = bpf[b"stats"]
        self._reader = _BatchReader(lib, self._stats.map_fd, min(self._stats.max_entries, _BATCH))
        self._counters = bpf[b"counters"]
        self._exits: list[ProcessExit] = []
        self._ooms: list[OomKill] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events_fd = bpf[b"events"].map_fd
        bpf[b"events"].open_ring_buffer(self._on_event)

    @classmethod
    def load(cls, cfg: BpfConfig, *, extra_cflags: tuple[str, ...] = ()) -> BpfCollector:
        """Compile and attach the probes; BpfUnavailable(reason) when that cannot be done here.

        extra_cflags is for benchmarks (e.g. -DMW_EMPTY_SYS_EXIT to measure the hook's floor).
        """
        tracefs = _check_environment()
        try:
            import bcc  # noqa: PLC0415 - lazy on purpose: bcc pulls in LLVM (~130 MB)
        except ImportError as e:
            raise BpfUnavailable(f"bcc Python module not found (install python3-bpfcc): {e}") from None
        for category, event in _TRACEPOINTS:
            if not bcc.BPF.tracepoint_exists(category, event):
                raise BpfUnavailable(f"tracepoint {category}:{event} does not exist on this kernel")

        pages = max(1, cfg.ringbuf_kb * 1024 // _PAGE)
        if pages & (pages - 1):
            raise BpfUnavailable(f"ringbuf_kb {cfg.ringbuf_kb} is not a power-of-two number of pages")
        src = importlib.resources.files("memwatchd.bpf").joinpath("memwatch.bpf.c")
        with importlib.resources.as_file(src) as path:
            cflags = [
                f"-I{path.parent}",
                f"-DMAX_PIDS={cfg.max_pids}",
                f"-DRINGBUF_PAGES={pages}",
                f"-DMW_STATS_SIZE={ctypes.sizeof(_Stats)}",
                f"-DMW_EVENT_SIZE={ctypes.sizeof(_Event)}",
            ]
            exit_fmt = tracefs / "events/sched/sched_process_exit/format"
            if "group_dead" in exit_fmt.read_text():
                cflags.append("-DMW_HAVE_GROUP_DEAD")
            cflags.extend(extra_cflags)
            bpf = _compile(bcc, str(path), cflags)
        try:
            collector = cls(bpf, bcc.lib)
        except Exception as e:
            bpf.cleanup()
            raise BpfUnavailable(f"cannot open BPF maps: {_first_line(e)}") from None
        _malloc_trim()
        return collector

    def attach_reader(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver ring-buffer events inside the event loop: the map fd is pollable, no thread needed."""
        if self._loop is not None:
            self._loop.remove_reader(self._events_fd)
        self._loop = loop
        loop.add_reader(self._events_fd, self._bpf.ring_buffer_consume)

    @property
    def pending_events(self) -> int:
        """Exit and OOM events received and not yet returned by poll()."""
        return len(self._exits) + len(self._ooms)

    def poll(self) -> BpfPoll:
        """Current map contents plus the exit/OOM events received since the previous poll."""
        self._bpf.ring_buffer_consume()
        stats = self._reader.read()
        exits, self._exits = tuple(self._exits), []
        ooms, self._ooms = tuple(self._ooms), []
        map_full, lost = self._counter_sums()
        health = BpfHealth(state="active", tracked=len(stats), map_full=map_full, lost_events=lost)
        return BpfPoll(stats=stats, exits=exits, ooms=ooms, health=health)

    def gc(self, live_tgids: set[int], min_idle_s: float = _GC_MIN_IDLE_S) -> int:
        """Delete entries of processes not in live_tgids and idle for min_idle_s; returns how many.

        A safety net only: exits normally remove entries in the kernel. Entries can outlive their process
        when the leader-only exit check is in use, or when an exit event raced with an update.
        """
        cutoff = time.monotonic_ns() - int(min_idle_s * 1e9)  # same clock as bpf_ktime_get_ns
        stale = [
            s.tgid
            for s in self._reader.read().values()
            if s.tgid not in live_tgids and s.last_update_ns < cutoff
        ]
        if not stale:
            return 0
        try:
            self._stats.items_delete_batch((self._stats.Key * len(stale))(*stale))
        except Exception:  # noqa: BLE001 - the batch stops at a key the kernel removed meanwhile
            for tgid in stale:
                with contextlib.suppress(KeyError):
                    del self._stats[self._stats.Key(tgid)]
        return len(stale)

    def close(self) -> None:
        """Remove the reader, detach the probes and free the maps."""
        if self._loop is not None:
            self._loop.remove_reader(self._events_fd)
            self._loop = None
        self._bpf.cleanup()

    def _counter_sums(self) -> tuple[int, int]:
        def total(idx: int) -> int:
            return int(sum(self._counters[self._counters.Key(idx)]))

        return total(_CTR_MAP_FULL), total(_CTR_LOST_EVENTS)

    def _on_event(self, _ctx: Any, data: Any, _size: int) -> None:
        e = ctypes.cast(data, ctypes.POINTER(_Event)).contents
        if e.type == _EVENT_EXIT:
            self._exits.append(
                ProcessExit(
                    pid=e.pid,
                    comm=_comm(e.comm),
                    exit_code=e.exit_code,
                    final=_to_stats(e.pid, e.stats),
                    mono_ns=e.mono_ns,
                )
            )
        elif e.type == _EVENT_OOM:
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


def _compile(bcc: Any, path: str, cflags: list[str]) -> Any:
    """bcc.BPF(src_file=...) with the compiler's stderr captured, so a failure becomes one readable line."""
    with tempfile.TemporaryFile(mode="w+") as err:
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            return bcc.BPF(src_file=path.encode(), cflags=cflags)
        except Exception as e:  # bcc raises bare Exception for compile and attach failures
            os.dup2(saved, 2)
            err.seek(0)
            detail = _compile_error_summary(err.read())
            raise BpfUnavailable(f"{_first_line(e)}: {detail}") from None
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]
