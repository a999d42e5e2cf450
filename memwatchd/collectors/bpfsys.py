"""The few bpf(2) map operations and the BPF ring-buffer consumer the daemon needs, without libbpf or bcc.

The probes are compiled and attached in a short-lived child (bpf_loader.py) that hands over file descriptors;
this module is all the daemon needs to read them, so it never maps libbcc and its LLVM (~12 MB anonymous,
~50 MB file-backed). Layouts follow include/uapi/linux/bpf.h; the ring-buffer protocol follows libbpf's
ringbuf.c.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import struct
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_SYS_BPF = {"x86_64": 321, "aarch64": 280}

_BPF_MAP_LOOKUP_ELEM = 1
_BPF_MAP_UPDATE_ELEM = 2
_BPF_MAP_DELETE_ELEM = 3
_BPF_OBJ_GET_INFO_BY_FD = 15
_BPF_MAP_LOOKUP_BATCH = 24
_BPF_MAP_LOOKUP_AND_DELETE_BATCH = 25
_BPF_ITER_CREATE = 33

MAP_TYPE_HASH = 1
MAP_TYPE_ARRAY = 2
MAP_TYPE_PERCPU_ARRAY = 6
MAP_TYPE_RINGBUF = 27


class _ElemAttr(ctypes.Structure):
    """union bpf_attr for BPF_MAP_*_ELEM."""

    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _BatchAttr(ctypes.Structure):
    """union bpf_attr for BPF_MAP_*_BATCH."""

    _fields_ = [
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _IterAttr(ctypes.Structure):
    """union bpf_attr for BPF_ITER_CREATE."""

    _fields_ = [("link_fd", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


class _InfoAttr(ctypes.Structure):
    """union bpf_attr for BPF_OBJ_GET_INFO_BY_FD."""

    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


class MapInfo(ctypes.Structure):
    """The head of struct bpf_map_info; the kernel fills no more than info_len bytes."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


_libc: Any = None


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    """bpf(cmd, &attr, sizeof attr); OSError on failure. The kernel zero-extends a short attr."""
    global _libc  # noqa: PLW0603 - loaded on first use, not at import
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"bpf(2): unsupported architecture {platform.machine()}")
    res = _libc.syscall(
        ctypes.c_long(nr),
        ctypes.c_int(cmd),
        ctypes.c_void_p(ctypes.addressof(attr)),
        ctypes.c_uint(ctypes.sizeof(attr)),
    )
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(res)


def map_info(map_fd: int) -> MapInfo:
    """What the kernel says about the map behind map_fd (OSError when it is not a map)."""
    info = MapInfo()
    _bpf(
        _BPF_OBJ_GET_INFO_BY_FD,
        _InfoAttr(bpf_fd=map_fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info)),
    )
    return info


def possible_cpus(path: str = "/sys/devices/system/cpu/possible") -> int:
    """Number of possible CPUs ("0-3,6" -> 5): the kernel sizes per-CPU map values by it."""
    return len(cpu_list(path))


def cpu_list(path: str) -> list[int]:
    """The CPUs of a sysfs CPU list file ("0-3,6" -> [0, 1, 2, 3, 6])."""
    with open(path) as f:
        text = f.read().strip()
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def lookup_percpu_u64(map_fd: int, key: int, ncpus: int) -> list[int]:
    """One slot of a BPF_MAP_TYPE_PERCPU_ARRAY of u64: its value on each possible CPU."""
    k = ctypes.c_uint32(key)
    values = (ctypes.c_uint64 * ncpus)()
    attr = _ElemAttr(map_fd=map_fd, key=ctypes.addressof(k), value=ctypes.addressof(values))
    _bpf(_BPF_MAP_LOOKUP_ELEM, attr)
    return list(values)


def lookup_u64(map_fd: int, key: int) -> int:
    """One u32-keyed u64 element (e.g. a slot of a BPF_MAP_TYPE_ARRAY)."""
    k, v = ctypes.c_uint32(key), ctypes.c_uint64(0)
    _bpf(_BPF_MAP_LOOKUP_ELEM, _ElemAttr(map_fd=map_fd, key=ctypes.addressof(k), value=ctypes.addressof(v)))
    return int(v.value)


def update_u32(map_fd: int, key: int, value: int) -> None:
    """Set one u32-keyed u32 element (BPF_ANY), e.g. a slot of a BPF_MAP_TYPE_ARRAY."""
    k, v = ctypes.c_uint32(key), ctypes.c_uint32(value)
    _bpf(_BPF_MAP_UPDATE_ELEM, _ElemAttr(map_fd=map_fd, key=ctypes.addressof(k), value=ctypes.addressof(v)))


def iter_create(link_fd: int) -> int:
    """A new fd whose read() runs the BPF iterator program behind link_fd over its objects (close it)."""
    return _bpf(_BPF_ITER_CREATE, _IterAttr(link_fd=link_fd))


def delete_u32(map_fd: int, key: int) -> bool:
    """Delete one u32-keyed element; False when it was not there (e.g. removed by the kernel meanwhile)."""
    k = ctypes.c_uint32(key)
    try:
        _bpf(_BPF_MAP_DELETE_ELEM, _ElemAttr(map_fd=map_fd, key=ctypes.addressof(k)))
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


class HashBatchReader:
    """Reads a hash map with BPF_MAP_LOOKUP_BATCH into buffers allocated once.

    For hash maps the batch token is a u32 bucket index. The call that ends the walk fails with ENOENT and
    may still have filled some entries. With drain=True each batch is also deleted in the same call
    (BPF_MAP_LOOKUP_AND_DELETE_BATCH): an entry is returned once, and entries added meanwhile wait for the
    next read.
    """

    def __init__(
        self,
        map_fd: int,
        value_type: type[ctypes.Structure],
        chunk: int,
        key_type: Any = ctypes.c_uint32,
        *,
        drain: bool = False,
    ) -> None:
        self._fd, self._chunk = map_fd, chunk
        self._cmd = _BPF_MAP_LOOKUP_AND_DELETE_BATCH if drain else _BPF_MAP_LOOKUP_BATCH
        self._keys = (key_type * chunk)()
        self._values = (value_type * chunk)()
        self._token_in, self._token_out = ctypes.c_uint32(0), ctypes.c_uint32(0)

    def read(self, convert: Callable[[int, Any], T]) -> dict[int, T]:
        """{key: convert(key, value)} for a u32-keyed map; value is a view into a reused buffer."""
        out: dict[int, T] = {}
        for key, value in self._walk(convert):
            out[key] = value
        return out

    def values(self, convert: Callable[[Any, Any], T]) -> list[T]:
        """[convert(key, value)] for every entry; key and value are views into reused buffers."""
        return [v for _, v in self._walk(convert)]

    def raw(self) -> Iterator[tuple[memoryview, memoryview]]:
        """The entries batch by batch, as views of the key and value buffers (reused: valid until the next
        batch), each cut to the batch's entries; for a caller that reads columns without a call per entry."""
        ks, vs = ctypes.sizeof(self._keys) // self._chunk, ctypes.sizeof(self._values) // self._chunk
        keys, values = memoryview(self._keys).cast("B"), memoryview(self._values).cast("B")
        for n in self._batches():
            yield keys[: n * ks], values[: n * vs]

    def _batches(self) -> Iterator[int]:
        attr = _BatchAttr(
            out_batch=ctypes.addressof(self._token_out),
            keys=ctypes.addressof(self._keys),
            values=ctypes.addressof(self._values),
            map_fd=self._fd,
        )
        while True:
            attr.count = self._chunk
            try:
                _bpf(self._cmd, attr)
                done = False
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise OSError(e.errno, f"BPF_MAP_LOOKUP_BATCH ({self._cmd}): {e.strerror}") from None
                done = True
            yield attr.count
            if done:
                return
            self._token_in.value = self._token_out.value
            attr.in_batch = ctypes.addressof(self._token_in)

    def _walk(self, convert: Callable[[Any, Any], T]) -> Iterator[tuple[Any, T]]:
        for n in self._batches():
            for i in range(n):
                key = self._keys[i]
                yield key, convert(key, self._values[i])


_BUSY = 1 << 31
_DISCARD = 1 << 30
_HDR = 8
_U64 = struct.Struct("=Q")
_U32 = struct.Struct("=I")


class RingBuffer:
    """Consumer side of a BPF_MAP_TYPE_RINGBUF map, over two mmaps of its fd (as libbpf does).

    Page 0 (read-write) holds consumer_pos; from page 1 (read-only) the producer_pos page, then the data area
    mapped twice in a row, so a record that wraps around the end is still contiguous. Each record has an
    8-byte header whose u32 length carries the BUSY (not yet submitted) and DISCARD bits.
    """

    def __init__(self, map_fd: int, size: int) -> None:
        if size <= 0 or size & (size - 1):
            raise ValueError(f"ring buffer size {size} is not a power of two")
        page = mmap.PAGESIZE
        self._fd, self._mask, self._page = map_fd, size - 1, page
        # CPython's mmap keeps a dup of the fd: close() must run to release it
        self._cons = mmap.mmap(map_fd, page, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            self._prod = mmap.mmap(
                map_fd, page + 2 * size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=page
            )
        except BaseException:
            self._cons.close()
            raise

    def fileno(self) -> int:
        """The map fd: readable (epoll) when records are waiting."""
        return self._fd

    def consume(self, on_record: Callable[[mmap.mmap, int, int], None]) -> int:
        """Call on_record(buffer, offset, length) for each submitted record; returns how many.

        Stops at the first record still being written (BUSY). consumer_pos is stored after each record so
        the kernel's wakeup logic and free space see progress at once.
        """
        # libbpf reads producer_pos and each header with acquire loads. Plain loads give the same order on
        # x86_64 (TSO); on arm64 the interpreter's many instructions between the header and the payload read
        # make a reordering there theoretical, and Python offers no barrier to rule it out.
        cons = _U64.unpack_from(self._cons, 0)[0]
        n = 0
        while True:
            prod = _U64.unpack_from(self._prod, 0)[0]
            progressed = False
            while cons < prod:
                hdr = self._page + (cons & self._mask)
                length = _U32.unpack_from(self._prod, hdr)[0]
                if length & _BUSY:
                    return n
                progressed = True
                size = length & ~(_BUSY | _DISCARD)
                if not length & _DISCARD:
                    on_record(self._prod, hdr + _HDR, size)
                    n += 1
                cons += (size + _HDR + 7) & ~7
                _U64.pack_into(self._cons, 0, cons)
            if not progressed:
                return n

    def close(self) -> None:
        """Unmap both areas (and release CPython's dup of the fd)."""
        self._prod.close()
        self._cons.close()
