"""Which allocator a process uses, and where its entry points are (read from /proc/PID/maps and ELF files).

Pure of BPF: choose() only reads /proc and the mapped files, so it is testable on any real process. Files
are read through /proc/PID/root, which is the process's own view of the file system: a process in another
mount namespace (a container) resolves to its own libc, not the host's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from memwatchd.triage.elf import ElfError, ElfImage, read_elf_path

# Entry points probed when present, by the library that holds the allocator. Names are the exported ones;
# two names at one address (glibc's aligned_alloc and memalign on some versions) are probed once.
MALLOC_ENTRIES = (
    "malloc",
    "calloc",
    "realloc",
    "free",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
    "valloc",
    "pvalloc",
)
JEMALLOC_EXTRA = ("mallocx", "rallocx", "sdallocx", "dallocx")
MMAP_ENTRIES = ("mmap", "munmap")

_ALLOCATOR_LIBS = (("jemalloc", "libjemalloc.so"), ("tcmalloc", "libtcmalloc"))


class TargetError(Exception):
    """The process cannot be examined (gone, not readable); str() is one line."""


@dataclass(frozen=True, slots=True)
class Mapping:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str
    offset: int
    path: str  # as the process sees it; "" for anonymous memory
    deleted: bool


@dataclass(frozen=True, slots=True)
class Probe:
    """A uprobe to attach: function `symbol` in the file at `path` (a /proc/PID/root path)."""

    path: str
    symbol: str
    address: int  # the symbol's virtual address in that file (duplicates are dropped by address)
    offset: int = 0  # bytes into the function where an entry-only probe sits (see probe_offset)


# Probes with no return probe may sit a few bytes into the function: x86 uprobes emulate some
# instructions (push, jumps, calls, nop) but single-step all others out of line, a second trap that cost
# ~16 us per call on the build VM against ~0.5 us emulated (glibc's free starts with test %rdi,%rdi; je).
# Skipped instructions may only set flags: every argument register and the stack pointer are unchanged
# when the probe fires, so the probe sees the call exactly as at the entry.
ENTRY_ONLY = ("free", "sdallocx", "dallocx", "munmap")
_MAX_SKIP = 2


def _flag_only_len(code: bytes) -> int:
    """Length of the instruction at code[0] when it only sets flags (test/cmp/endbr64), else 0."""
    b = code
    if b[:4] == b"\xf3\x0f\x1e\xfa":
        return 4  # endbr64
    rex = 1 if len(b) > 1 and 0x40 <= b[0] <= 0x4F else 0
    if len(b) < rex + 2:
        return 0
    op, modrm = b[rex], b[rex + 1]
    direct = modrm >> 6 == 3
    if op == 0x85 and direct:
        return rex + 2  # test r, r
    if op == 0x81 and direct and (modrm >> 3) & 7 == 7:
        return rex + 6  # cmp r, imm32
    if op == 0x83 and direct and (modrm >> 3) & 7 == 7:
        return rex + 3  # cmp r, imm8
    if op == 0xF7 and direct and (modrm >> 3) & 7 == 0:
        return rex + 6  # test r, imm32
    if op == 0x80 and modrm == 0x3D and not rex:
        return 7  # cmpb $imm8, disp32(%rip)
    return 0


def _emulated(code: bytes) -> bool:
    """True for instructions x86 uprobes emulate: push reg, jcc, jmp, call, nop."""
    if not code:
        return False
    b0 = code[0]
    if 0x50 <= b0 <= 0x57 or 0x70 <= b0 <= 0x7F or b0 in (0xE8, 0xE9, 0xEB, 0x90):
        return True
    if b0 == 0x41 and len(code) > 1 and 0x50 <= code[1] <= 0x57:
        return True  # push r8..r15
    return b0 == 0x0F and len(code) > 1 and 0x80 <= code[1] <= 0x8F  # jcc rel32


def probe_offset(code: bytes) -> int:
    """Where an entry-only probe on a function starting with `code` traps once instead of twice."""
    off = 0
    for _ in range(_MAX_SKIP + 1):
        if _emulated(code[off:]):
            return off
        n = _flag_only_len(code[off:])
        if not n:
            return 0
        off += n
    return 0


@dataclass(frozen=True, slots=True)
class Target:
    """How to trace one process.

    mode "uprobes": `probes` on the allocator (and libc's mmap/munmap wrappers); "syscalls": mmap, munmap
    and brk syscall tracepoints of the process (no malloc to probe). allocator_range: the allocator's
    addresses in the process, so mmap calls made by the allocator itself are not counted twice.
    """

    pid: int
    mode: str
    allocator: str  # glibc | jemalloc | tcmalloc | builtin | go | jvm | unknown
    probes: tuple[Probe, ...]
    allocator_range: tuple[int, int]
    limits: tuple[str, ...]


def read_maps(pid: int, proc: str = "/proc") -> list[Mapping]:
    """Parse /proc/PID/maps; TargetError when the process is gone or not readable."""
    try:
        with open(f"{proc}/{pid}/maps", "rb") as f:
            text = f.read().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        raise TargetError(f"process {pid} does not exist") from None
    except PermissionError:
        raise TargetError(
            f"cannot read /proc/{pid}/maps: permission denied (needs root or CAP_SYS_PTRACE)"
        ) from None
    except ProcessLookupError:
        raise TargetError(f"process {pid} exited") from None
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        lo, _, hi = parts[0].partition("-")
        path = parts[5] if len(parts) == 6 else ""
        deleted = path.endswith(" (deleted)")
        out.append(
            Mapping(
                int(lo, 16),
                int(hi, 16),
                parts[1],
                int(parts[2], 16),
                path.removesuffix(" (deleted)"),
                deleted,
            )
        )
    return out


def root_path(pid: int, path: str, proc: str = "/proc") -> str:
    """The path of a file the process sees as `path`, readable from here (its mount namespace's root)."""
    return f"{proc}/{pid}/root{path}"


def other_mount_namespace(pid: int, proc: str = "/proc") -> bool:
    try:
        return os.readlink(f"{proc}/{pid}/ns/mnt") != os.readlink(f"{proc}/self/ns/mnt")
    except OSError:
        return False


def choose(pid: int, proc: str = "/proc") -> Target:
    """Pick the allocator the process actually uses and the probes to attach."""
    maps = read_maps(pid, proc)
    limits: list[str] = []
    if other_mount_namespace(pid, proc):
        limits.append(
            f"the process is in another mount namespace (a container): its binaries are read through"
            f" /proc/{pid}/root"
        )
    files = _files(maps)
    try:
        exe_path = os.readlink(f"{proc}/{pid}/exe").removesuffix(" (deleted)")
    except OSError as e:
        raise TargetError(f"cannot read /proc/{pid}/exe: {e.strerror}") from None
    exe = _image(pid, exe_path, proc)

    def fallback(allocator: str, why: str) -> Target:
        return Target(pid, "syscalls", allocator, (), (0, 0), (*limits, why))

    if any(os.path.basename(p).startswith("libjvm.so") for p in files):
        return fallback(
            "jvm",
            "Java (HotSpot): objects live in the Java heap, which the JVM maps itself; showing mmap/brk by"
            " stack (use a heap dump for Java objects)",
        )
    if exe is not None and exe.sections & {".go.buildinfo", ".note.go.buildid", ".gopclntab"}:
        return fallback(
            "go",
            "Go program: the Go heap does not use malloc; showing mmap/brk by stack (the runtime's"
            " growth, not the objects)",
        )
    deleted = sorted({m.path for m in maps if m.deleted and m.path.startswith("/") and "x" in m.perms})
    for kind, prefix in _ALLOCATOR_LIBS:
        lib = next((p for p in files if os.path.basename(p).startswith(prefix)), None)
        if lib is not None:
            return _uprobes(pid, proc, kind, lib, maps, files, limits, deleted)
    if exe is not None and exe.defines("malloc") is not None:
        if not exe.dynamic:
            limits.append(
                "statically linked: malloc probed in the binary itself; its mmap calls are not traced"
            )
            return _uprobes(pid, proc, "static", exe_path, maps, [], limits, deleted)
        return _uprobes(pid, proc, "builtin", exe_path, maps, files, limits, deleted)
    libc = next((p for p in files if os.path.basename(p).startswith("libc.so")), None)
    if libc is not None:
        return _uprobes(pid, proc, "glibc", libc, maps, files, limits, deleted)
    if exe is not None and not exe.dynamic and not exe.has_symtab:
        return fallback(
            "unknown",
            "statically linked and stripped: no allocator symbols to probe; showing mmap/brk by stack",
        )
    return fallback(
        "unknown", "no malloc found in the process (no libc, no allocator library); showing mmap/brk by stack"
    )


def _files(maps: list[Mapping]) -> list[str]:
    seen: dict[str, None] = {}
    for m in maps:
        if m.path.startswith("/") and "x" in m.perms:
            seen.setdefault(m.path, None)
    return list(seen)


def _image(pid: int, path: str, proc: str) -> ElfImage | None:
    try:
        return read_elf_path(root_path(pid, path, proc))
    except ElfError:
        return None


def _range(maps: list[Mapping], path: str) -> tuple[int, int]:
    spans = [(m.start, m.end) for m in maps if m.path == path]
    return (min(s for s, _ in spans), max(e for _, e in spans)) if spans else (0, 0)


def _uprobes(
    pid: int,
    proc: str,
    kind: str,
    lib: str,
    maps: list[Mapping],
    files: list[str],
    limits: list[str],
    deleted: list[str],
) -> Target:
    if lib in deleted:
        return Target(
            pid,
            "syscalls",
            kind,
            (),
            (0, 0),
            (
                *limits,
                f"{lib} was replaced on disk since the process started (deleted): cannot probe it;"
                " showing mmap/brk by stack",
            ),
        )
    image = _image(pid, lib, proc)
    if image is None:
        raise TargetError(f"cannot read the allocator library {lib} of process {pid}")
    names = MALLOC_ENTRIES + (JEMALLOC_EXTRA if kind == "jemalloc" else ())
    probes = _probes(root_path(pid, lib, proc), image, names)
    if not any(p.symbol == "malloc" for p in probes):
        raise TargetError(f"{lib} defines no malloc")
    # files is empty for a static binary: its mmap wrapper is the allocator's own code, not traced
    libc = next((p for p in files if os.path.basename(p).startswith("libc.so")), None)
    libc_image = _image(pid, libc, proc) if libc else None
    if libc is not None and libc_image is not None:
        probes += _probes(root_path(pid, libc, proc), libc_image, MMAP_ENTRIES)
    elif files:
        limits.append("no libc mmap wrapper found: mmap calls are not traced")
    return Target(pid, "uprobes", kind, probes, _range(maps, lib), tuple(limits))


def _probes(path: str, image: ElfImage, names: tuple[str, ...]) -> tuple[Probe, ...]:
    out: list[Probe] = []
    seen: set[int] = set()
    for name in names:
        addr = image.defines(name)
        if addr is None or addr in seen:
            continue
        seen.add(addr)
        offset = probe_offset(_code(path, image, addr)) if name in ENTRY_ONLY else 0
        out.append(Probe(path, name, addr, offset))
    return tuple(out)


def _code(path: str, image: ElfImage, vaddr: int) -> bytes:
    off = image.offset_of_vaddr(vaddr)
    if off is None:
        return b""
    try:
        with open(path, "rb") as f:
            f.seek(off)
            return f.read(24)
    except OSError:
        return b""
