"""The /proc collector: per-process memory of every process, cheap enough to run every few seconds.

Cost design (figures from scripts/bench_scan.py on this host, CPU time per process in Python, ~1,100
processes): open + read + close of /proc/PID/stat costs ~10 µs, statm ~7-9 µs, status ~14-17 µs, cgroup
~10-12 µs; a pread(2) at offset 0 on an fd kept open from the previous scan ~5 µs for stat and ~1-2 µs
for statm (procfs regenerates the content on each read at offset 0). So, per process and scan:

* statm (sizes only) is read through an fd held open between scans. A held fd is bound to the process, not
  to the number: once the process is gone its reads fail with ESRCH, even when the PID has been reused, so
  an identity change cannot slip through and the fast path need not read the start time.
* When the statm bytes equal the previous scan's and no full rescan is due, the previous ProcSample
  (immutable) is reused as is. Otherwise stat is read by path (comm, state, ppid, flags, start time) and,
  when rss or vsize changed, status (VmHWM, RssAnon, VmSwap) and, with smaps on, smaps_rollup. A new
  identity reads everything; cgroup is read only for a new identity or at a full rescan.
* Full rescans (stat, status, cgroup, smaps_rollup) come every full_rescan_s per identity, the first one
  staggered by a hash of the PID so they do not all land on one scan. Between them, comm, state and ppid of a
  process whose sizes did not move may lag (an exec or exit changes the sizes, so those are seen at once);
  VmHWM may lag when rss rose and fell back to the same value; PSS may lag when only a sharer changed.
* The price of held fds is kernel memory charged to the daemon's cgroup: ~1.2 KB per fd plus the 4 KB
  seq_file buffer procfs keeps after the first read (~5.3 KB per process). Their number is capped
  (max_held_fds, by default the RLIMIT_NOFILE soft limit minus a reserve); processes beyond the cap, and all
  of them when root is not this process's live procfs (fake trees in tests), are read by path each scan,
  comparing stat bytes instead (start time included, so PID reuse is still seen).

Decisions:
* Kernel threads (PF_KTHREAD in the stat flags) are left out of the samples. PF_KTHREAD alone decides:
  "ppid == 2" would drop ordinary processes in a PID namespace, where PID 2 is a user process.
* Zombies are included (state "Z", rss_kb 0, vm_kb 0, hwm_kb and swap_kb None, anon_kb 0): their memory is
  gone, but a pile of them is worth seeing; status is not read for them (it has no Vm* lines). A zombie
  keeps the unit and cgroup it ran under (cgroup v1's /proc/PID/cgroup shows "/" for a zombie); one first
  seen as a zombie has only that file to go by.
* A process whose stat or status cannot be read (ENOENT, ESRCH, EACCES and other per-process errors, or
  unparseable stat) is skipped and counted in ProcScan.errors, never logged. An unreadable cgroup or
  smaps_rollup only leaves unit/cgroup or pss/uss as None. Errors that are not about one process (EMFILE,
  ENFILE, ENOMEM, an unreadable root) propagate.
* comm and the cgroup file are decoded with text.from_kernel: UTF-8 as is, a backslash doubled, other bytes
  as \\xHH, so arbitrary bytes survive and a name holding byte 0xff differs from one spelling "\\xff".
"""

from __future__ import annotations

import errno
import os
import resource
import time
from typing import NamedTuple

from memwatchd.models import MemInfo, ProcKey, ProcSample, ProcScan
from memwatchd.text import from_kernel

PF_KTHREAD = 0x00200000
_SYSTEMIC_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})
_FD_RESERVE = 512  # fds left for the rest of the daemon (database, sockets, BPF maps and perf buffers)
_READ_MAX = 4096  # stat is at most ~1.1 KB (52 numbers and a 16-byte comm), statm ~100 bytes
_UNIT_SUFFIXES = (".service", ".scope", ".socket", ".mount", ".swap")


class _Unparseable(Exception):
    """A per-process file whose content does not have the expected shape."""


class StatFields(NamedTuple):
    """The fields of /proc/PID/stat the collector uses (sizes as the kernel gives them).

    A NamedTuple, not a frozen dataclass: it is built on the scan's slow path, where a frozen dataclass's
    __init__ (object.__setattr__ per field) cost as much as parsing the line.
    """

    pid: int
    comm: str
    state: str
    ppid: int
    flags: int
    start_ticks: int  # field 22, clock ticks after boot
    vsize: int  # field 23, bytes
    rss_pages: int  # field 24, pages


def _split_stat(data: bytes) -> tuple[int, bytes, list[bytes]]:
    """pid, raw comm and the fields after comm; comm may hold spaces and ')', so split at the last ')'."""
    lp = data.find(b"(")
    rp = data.rfind(b")")
    if lp < 0 or rp < lp:
        raise ValueError("no (comm) in stat")
    rest = data[rp + 1 :].split()
    if len(rest) < 22:
        raise ValueError(f"stat has {len(rest) + 2} fields, expected at least 24")
    return int(data[:lp]), data[lp + 1 : rp], rest


def parse_stat(data: bytes) -> StatFields:
    """Parse /proc/PID/stat content; raises ValueError when it does not have the shape of a stat line."""
    pid, comm, f = _split_stat(data)
    # positional: the scan's slow path calls this for every changed process
    return StatFields(
        pid,
        from_kernel(comm),
        f[0].decode("ascii", "backslashreplace"),
        int(f[1]),
        int(f[6]),
        int(f[19]),
        int(f[20]),
        int(f[21]),
    )


def _kb_field(data: bytes, key: bytes) -> int | None:
    """Value of a "\\nKey:   1234 kB" line, or None when absent or malformed."""
    i = data.find(key)
    if i < 0:
        return None
    start = i + len(key)
    end = data.find(b"\n", start)
    words = data[start : end if end >= 0 else len(data)].split()
    if not words:
        return None
    try:
        return int(words[0])
    except ValueError:
        return None


def parse_status(data: bytes) -> tuple[int | None, int | None, int | None]:
    """(VmHWM, RssAnon, VmSwap) in KiB from /proc/PID/status; None for a field absent (zombies, kthreads)."""
    return _kb_field(data, b"\nVmHWM:"), _kb_field(data, b"\nRssAnon:"), _kb_field(data, b"\nVmSwap:")


def parse_smaps_rollup(data: bytes) -> tuple[int | None, int | None]:
    """(PSS, USS) in KiB from /proc/PID/smaps_rollup; USS = Private_Clean + Private_Dirty."""
    pss = _kb_field(data, b"\nPss:")
    clean = _kb_field(data, b"\nPrivate_Clean:")
    dirty = _kb_field(data, b"\nPrivate_Dirty:")
    uss = clean + dirty if clean is not None and dirty is not None else None
    return pss, uss


def _unit_from_path(path: str) -> str | None:
    # The innermost unit: for "user@1000.service/app.slice/foo.scope" that is foo.scope, the unit a user
    # would name in a rule; the enclosing user@1000.service remains visible in the cgroup path.
    for part in reversed(path.split("/")):
        # systemd escapes names that could clash with cgroupfs files
        comp = part[1:] if part.startswith("_") else part
        if comp.endswith(_UNIT_SUFFIXES):
            return comp
    return None


def unit_from_cgroup(text: str) -> tuple[str | None, str | None]:
    """(systemd unit, memory cgroup path) from /proc/PID/cgroup content, cgroup v1, v2 or hybrid.

    The memory cgroup is the v1 memory controller's path, else the unified ("0::") path. The unit comes from
    the v1 name=systemd hierarchy when present (legacy and hybrid systemd), else the unified path, else the
    memory path.
    """
    memory = unified = named = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        if hier == "0" and controllers == "":
            unified = path
        elif controllers == "name=systemd":
            named = path
        elif "memory" in controllers.split(","):
            memory = path
    for source in (named, unified, memory):
        if source is not None:
            unit = _unit_from_path(source)
            if unit is not None:
                return unit, memory if memory is not None else unified
    return None, memory if memory is not None else unified


def _read_all(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


_MEMINFO_PARTS = (
    ("mem_free_kb", b"\nMemFree:"),
    ("buffers_kb", b"\nBuffers:"),
    ("cached_kb", b"\nCached:"),
    ("shmem_kb", b"\nShmem:"),
    ("anon_pages_kb", b"\nAnonPages:"),
    ("slab_reclaimable_kb", b"\nSReclaimable:"),
    ("slab_unreclaimable_kb", b"\nSUnreclaim:"),
    ("kernel_stack_kb", b"\nKernelStack:"),
    ("page_tables_kb", b"\nPageTables:"),
)


def read_meminfo(root: str) -> MemInfo | None:
    """Host totals from ROOT/meminfo; None when it is unreadable or a needed line is missing or garbled.

    The parts of the host breakdown (MemFree, Cached, Shmem, slab, ...) are optional: a missing one is None.
    """
    try:
        data = _read_all(f"{root}/meminfo")
    except OSError:
        return None
    data = b"\n" + data
    values = [
        _kb_field(data, k) for k in (b"\nMemTotal:", b"\nMemAvailable:", b"\nSwapTotal:", b"\nSwapFree:")
    ]
    if any(v is None for v in values):
        return None
    total, avail, swap_total, swap_free = values
    assert total is not None and avail is not None and swap_total is not None and swap_free is not None
    parts = {name: _kb_field(data, key) for name, key in _MEMINFO_PARTS}
    return MemInfo(
        mem_total_kb=total, mem_available_kb=avail, swap_total_kb=swap_total, swap_free_kb=swap_free, **parts
    )


def read_boot_time(root: str) -> float:
    """Boot time in unix seconds from ROOT/stat btime, or from CLOCK_BOOTTIME when that is unreadable."""
    try:
        data = _read_all(f"{root}/stat")
        i = data.find(b"\nbtime ")
        if i >= 0:
            return float(int(data[i + 7 : data.find(b"\n", i + 7)]))
    except (OSError, ValueError):
        pass
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def _is_live_procfs(root: str) -> bool:
    """Held fds rely on procfs semantics (reads of a dead process fail); a fake tree has none."""
    try:
        return os.readlink(f"{root}/self") == str(os.getpid())
    except OSError:
        return False


def _default_max_held_fds() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(0, soft - _FD_RESERVE)


class _Entry:
    """What the collector remembers about one identity between scans."""

    __slots__ = (
        "fd", "raw", "pid", "start_ticks", "kthread", "status_rss", "status_vsize", "hwm", "anon", "swap",
        "unit", "cgroup", "pss", "uss", "next_full", "sample",
    )  # fmt: skip

    def __init__(self, pid: int, start_ticks: int, fd: int) -> None:
        self.fd = fd  # held fd on statm, or -1 (read stat by path)
        self.raw = b""  # what the fast path compares: statm (held fd) or stat (by path)
        self.pid = pid
        self.start_ticks = start_ticks
        self.kthread = False
        self.status_rss = -1  # rss_kb and vm_kb when status was last read
        self.status_vsize = -1
        self.hwm: int | None = None
        self.anon = 0
        self.swap: int | None = None
        self.unit: str | None = None
        self.cgroup: str | None = None
        self.pss: int | None = None
        self.uss: int | None = None
        self.next_full = 0.0
        self.sample: ProcSample | None = None


class ProcfsCollector:
    """Scans ROOT for processes, re-reading only what may have changed since the previous scan.

    Holds file descriptors between scans: call close() (or use it as a context manager) when done.
    """

    def __init__(
        self,
        root: str = "/proc",
        smaps: bool = False,
        full_rescan_s: float = 60.0,
        *,
        hold_fds: bool | None = None,
        max_held_fds: int | None = None,
        pids: tuple[int, ...] | None = None,
    ) -> None:
        """pids: scan only these processes instead of listing root (taskscan.py's complement)."""
        self._root = root.rstrip("/") or "/"
        self._smaps = smaps
        self._full_rescan_s = full_rescan_s
        self._hold = _is_live_procfs(self._root) if hold_fds is None else hold_fds
        self._max_held = _default_max_held_fds() if max_held_fds is None else max_held_fds
        self._held = 0
        self._cache: dict[int, _Entry] = {}
        self._pids = pids
        self._page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
        self._clk_tck = os.sysconf("SC_CLK_TCK")
        self._boot_time = read_boot_time(self._root)
        self._boot_time_read = time.monotonic()
        self._seq = 0  # scans returned (ProcScan.seq)
        self._chained = False  # the cache holds exactly what the last returned scan saw (change sets valid)

    @property
    def smaps(self) -> bool:
        """Whether PSS/USS are read from smaps_rollup ([procfs] smaps)."""
        return self._smaps

    def set_smaps(self, on: bool) -> None:
        """Turn PSS/USS reading on or off (reload): every identity gets a full re-read at the next scan."""
        if on == self._smaps:
            return
        self._smaps = on
        for e in self._cache.values():
            e.next_full = 0.0
            if not on:
                e.pss = e.uss = None

    def shrink(self) -> None:
        """Nothing to do: every scan builds its cache afresh, sized for the processes it found."""

    @property
    def live_pids(self) -> set[int]:
        """TGIDs read successfully in the last scan, kernel threads and zombies included."""
        return set(self._cache)

    @property
    def held_fds(self) -> int:
        return self._held

    def close(self) -> None:
        """Close every held fd and forget all identities."""
        for e in self._cache.values():
            self._release(e)
        self._cache = {}
        self._chained = False

    def __enter__(self) -> ProcfsCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def scan(self, now_mono: float) -> ProcScan:
        """Read every process once; now_mono is time.monotonic() from the caller (drives full rescans)."""
        old = self._cache
        new: dict[int, _Entry] = {}
        samples: list[ProcSample] = []
        changed: list[ProcSample] = []  # samples that are not the previous scan's objects
        gone: list[ProcKey] = []  # identities of the previous scan's samples that are not in this one
        errors = 0
        pread = os.pread
        root = self._root
        chained, self._chained = self._chained, False  # stays False if this scan fails half way
        try:
            for name in os.listdir(root) if self._pids is None else [str(p) for p in self._pids]:
                if not (name.isdigit() and name.isascii()):
                    continue  # self, sys, meminfo, ...
                pid = int(name)
                e = old.pop(pid, None)
                raw = None
                before = e.sample if e is not None else None
                if e is not None:
                    try:
                        raw = pread(e.fd, _READ_MAX, 0) if e.fd >= 0 else _read_all(f"{root}/{name}/stat")
                    except OSError as exc:
                        if exc.errno in _SYSTEMIC_ERRNOS:
                            old[pid] = e  # closed with the rest below
                            raise
                        # The held identity is gone; the listed PID may be gone too, or reused.
                        self._release(e)
                        e = None
                    else:
                        if raw == e.raw and now_mono < e.next_full:
                            new[pid] = e
                            if e.sample is not None:
                                samples.append(e.sample)
                            continue
                try:
                    e = self._refresh(pid, name, e, raw, now_mono)
                except (OSError, _Unparseable) as exc:
                    if isinstance(exc, OSError) and exc.errno in _SYSTEMIC_ERRNOS:
                        raise
                    errors += 1
                    if before is not None:
                        gone.append(before.key)
                    continue
                new[pid] = e
                after = e.sample
                if after is not before:
                    if after is not None:
                        samples.append(after)
                        changed.append(after)
                    if before is not None and (after is None or after.start_ticks != before.start_ticks):
                        gone.append(before.key)
                elif after is not None:
                    samples.append(after)
        finally:
            for left in old.values():
                if left.sample is not None:
                    gone.append(left.sample.key)
                self._release(left)
            self._cache = new
        self._seq += 1
        seq = self._seq
        self._chained = True
        if now_mono - self._boot_time_read >= self._full_rescan_s:
            # btime follows wall-clock steps; refreshed now and then, it keeps start times in step.
            self._boot_time = read_boot_time(root)
            self._boot_time_read = now_mono
        return ProcScan(
            samples=tuple(samples),
            meminfo=read_meminfo(root),
            boot_time=self._boot_time,
            clk_tck=self._clk_tck,
            errors=errors,
            seq=seq,
            base_seq=seq - 1 if chained else None,
            changed=tuple(changed) if chained else None,
            gone=tuple(gone),
        )

    def _release(self, e: _Entry) -> None:
        if e.fd >= 0:
            os.close(e.fd)
            e.fd = -1
            self._held -= 1

    def _refresh(self, pid: int, name: str, e: _Entry | None, raw: bytes | None, now: float) -> _Entry:
        """Slow path: a new identity, a change seen in raw, or a full rescan due.

        raw is what the fast path read: statm through the held fd, or stat by path (None for a new PID).
        """
        base = f"{self._root}/{name}"
        fresh = e is None
        if e is None:
            fd = -1
            if self._hold and self._held < self._max_held:
                fd = os.open(f"{base}/statm", os.O_RDONLY)
                self._held += 1
            e = _Entry(pid, -1, fd)
        try:
            stat = raw if e.fd < 0 and raw is not None else _read_all(f"{base}/stat")
            try:
                st = parse_stat(stat)
                state, ppid, flags, start = st.state, st.ppid, st.flags, st.start_ticks
                if e.fd >= 0:
                    # Read after stat: the statm fd was opened first, so a successful read proves the process
                    # behind it was alive all along and the stat just read is its own.
                    statm = raw if raw is not None else os.pread(e.fd, _READ_MAX, 0)
                    m = statm.split()
                    vm_kb, rss_kb = int(m[0]) * self._page_kb, int(m[1]) * self._page_kb
                    e.raw = statm
                else:
                    vm_kb, rss_kb = st.vsize // 1024, st.rss_pages * self._page_kb
                    e.raw = stat
            except (ValueError, IndexError) as exc:
                raise _Unparseable(f"{base}: stat or statm") from exc
            if fresh or start != e.start_ticks:
                if not fresh and e.fd >= 0:
                    # Died and its PID reused between the statm and stat reads: pick it up next scan.
                    raise _Unparseable(f"{base}: replaced while read")
                e = self._new_identity(e, pid, start, flags, now)
                full = True
            else:
                full = now >= e.next_full
                if full:
                    e.next_full = now + self._full_rescan_s
            if e.kthread:
                return e
            if state == "Z":
                e.hwm, e.anon, e.swap, e.pss, e.uss = None, 0, None, None, None
            elif full or rss_kb != e.status_rss or vm_kb != e.status_vsize:
                e.hwm, anon, e.swap = parse_status(_read_all(f"{base}/status"))
                e.anon = anon or 0
                e.status_rss, e.status_vsize = rss_kb, vm_kb
                if self._smaps:
                    e.pss, e.uss = self._read_smaps(name)
            if full and not (state == "Z" and e.sample is not None):
                # a zombie keeps the labels it ran under: cgroup v1's file shows "/" for it
                e.unit, e.cgroup = self._read_cgroup(name)
            comm = st.comm
            old = e.sample
            if (
                old is None
                or (old.rss_kb, old.vm_kb, old.state, old.ppid, old.comm)
                != (rss_kb, vm_kb, state, ppid, comm)
                or (old.hwm_kb, old.anon_kb, old.swap_kb) != (e.hwm, e.anon, e.swap)
                or (old.unit, old.cgroup, old.pss_kb, old.uss_kb) != (e.unit, e.cgroup, e.pss, e.uss)
            ):
                e.sample = ProcSample(
                    pid=pid, start_ticks=e.start_ticks, comm=comm, ppid=ppid, state=state, rss_kb=rss_kb,
                    vm_kb=vm_kb, hwm_kb=e.hwm, anon_kb=e.anon, swap_kb=e.swap, unit=e.unit, cgroup=e.cgroup,
                    pss_kb=e.pss, uss_kb=e.uss,
                )  # fmt: skip
            return e
        except BaseException:
            self._release(e)
            raise

    def _new_identity(self, e: _Entry, pid: int, start: int, flags: int, now: float) -> _Entry:
        """Fresh state for a new identity (first sighting, or PID reuse seen through stat), keeping the fd."""
        fresh = _Entry(pid, start, e.fd)
        fresh.raw = e.raw
        fresh.kthread = bool(flags & PF_KTHREAD)
        if fresh.kthread:
            fresh.next_full = float("inf")  # nothing but the identity is read for kernel threads
        else:
            # Stagger the first full rescan over [0.5, 1) x full_rescan_s by a hash of the PID, so the
            # processes found by the first scan do not all come due on one later scan.
            frac = ((pid * 2654435761) & 0xFFFF) / 65536.0
            fresh.next_full = now + self._full_rescan_s * (0.5 + 0.5 * frac)
        return fresh

    def _read_cgroup(self, name: str) -> tuple[str | None, str | None]:
        try:
            data = _read_all(f"{self._root}/{name}/cgroup")
        except OSError as exc:
            if exc.errno in _SYSTEMIC_ERRNOS:
                raise
            return None, None
        return unit_from_cgroup(from_kernel(data))

    def _read_smaps(self, name: str) -> tuple[int | None, int | None]:
        try:
            return parse_smaps_rollup(_read_all(f"{self._root}/{name}/smaps_rollup"))
        except OSError as exc:
            if exc.errno in _SYSTEMIC_ERRNOS:
                raise
            return None, None
