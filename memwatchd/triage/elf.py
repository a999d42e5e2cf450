"""The little of ELF that triage needs: function symbols, load segments, section names (64-bit only).

No dependency: the tracer child runs with the daemon's interpreter and the daemon ships without pyelftools.
Read from an open file object, so a module can be read after its process exited (the tracer opens the
files while the process is alive, through /proc/PID/root for other mount namespaces).
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass
from typing import BinaryIO

_ELF_MAGIC = b"\x7fELF"
_ELFCLASS64 = 2
_ELFDATA2LSB = 1
_PT_LOAD = 1
_PT_INTERP = 3
_SHT_SYMTAB = 2
_SHT_DYNSYM = 11
_STT_FUNC = 2
_STT_GNU_IFUNC = 10
_SHN_UNDEF = 0
_MAX_SYMBOLS = 2_000_000  # a corrupt header must not make us allocate without bound


class ElfError(Exception):
    """Not a readable 64-bit little-endian ELF file."""


@dataclass(frozen=True, slots=True)
class Segment:
    """A PT_LOAD segment: file bytes [offset, offset + filesz) are mapped at vaddr."""

    offset: int
    vaddr: int
    filesz: int
    executable: bool


@dataclass(frozen=True, slots=True)
class ElfImage:
    """Function symbols (sorted by address), load segments and section names of one ELF file."""

    starts: tuple[int, ...]
    sizes: tuple[int, ...]
    names: tuple[str, ...]
    segments: tuple[Segment, ...]
    sections: frozenset[str]
    has_symtab: bool  # False: stripped (only exported .dynsym names, if any)
    dynamic: bool  # has a PT_INTERP: dynamically linked program (or a shared library: no PT_INTERP)
    shared: bool  # ET_DYN (shared library or PIE)
    aliases: dict[str, int]  # every function name -> address

    def defines(self, name: str) -> int | None:
        """Address of the function `name` defined here (any alias), or None."""
        return self.aliases.get(name)

    def symbol_at(self, vaddr: int) -> tuple[str, int] | None:
        """(function, offset) containing vaddr, or None."""
        i = bisect.bisect_right(self.starts, vaddr) - 1
        while i >= 0:
            start, size = self.starts[i], self.sizes[i]
            if vaddr < start + max(size, 1):
                return self.names[i], vaddr - start
            if size:  # sized symbol that ends before vaddr; an unsized one before it cannot cover it
                return None
            i -= 1
        return None

    def vaddr_of_offset(self, file_offset: int) -> int | None:
        """The virtual address the loader gives the byte at file_offset."""
        for s in self.segments:
            if s.offset <= file_offset < s.offset + s.filesz:
                return file_offset - s.offset + s.vaddr
        return None

    def offset_of_vaddr(self, vaddr: int) -> int | None:
        """The file offset of virtual address vaddr (inverse of vaddr_of_offset)."""
        for s in self.segments:
            if s.vaddr <= vaddr < s.vaddr + s.filesz:
                return vaddr - s.vaddr + s.offset
        return None


def read_elf(f: BinaryIO) -> ElfImage:
    """Parse an ELF file; ElfError when it is not one we can read."""
    f.seek(0)
    hdr = f.read(64)
    if len(hdr) < 64 or hdr[:4] != _ELF_MAGIC:
        raise ElfError("not an ELF file")
    if hdr[4] != _ELFCLASS64 or hdr[5] != _ELFDATA2LSB:
        raise ElfError("not a 64-bit little-endian ELF file")
    (e_type,) = struct.unpack_from("<H", hdr, 16)
    e_phoff, e_shoff = struct.unpack_from("<QQ", hdr, 32)
    e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHHHH", hdr, 54)
    segments, dynamic = _segments(f, e_phoff, e_phentsize, e_phnum)
    sections = _sections(f, e_shoff, e_shentsize, e_shnum)
    names = _section_names(f, sections, e_shstrndx)
    syms: dict[tuple[int, str], int] = {}
    has_symtab = False
    for sh_type, _, offset, size, link, entsize in sections:
        if sh_type not in (_SHT_SYMTAB, _SHT_DYNSYM) or entsize != 24 or link >= len(sections):
            continue
        has_symtab = has_symtab or sh_type == _SHT_SYMTAB
        strtab = sections[link]
        _read_symbols(f, offset, min(size // 24, _MAX_SYMBOLS), strtab[2], strtab[3], syms)
    # aliases share an address (malloc, __libc_malloc): show the public name, look up any of them
    best: dict[int, tuple[str, int]] = {}
    for (addr, name), size in syms.items():
        cur = best.get(addr)
        if cur is None or _rank(name) < _rank(cur[0]):
            best[addr] = (name, max(size, cur[1] if cur else 0))
    ordered = sorted(best.items())
    return ElfImage(
        starts=tuple(a for a, _ in ordered),
        sizes=tuple(s for _, (_, s) in ordered),
        names=tuple(n for _, (n, _) in ordered),
        aliases={name: addr for addr, name in syms},
        segments=segments,
        sections=frozenset(names),
        has_symtab=has_symtab,
        dynamic=dynamic,
        shared=e_type == 3,
    )


def read_elf_path(path: str) -> ElfImage:
    """read_elf on a path; ElfError (not OSError) for unreadable files too."""
    try:
        with open(path, "rb") as f:
            return read_elf(f)
    except OSError as e:
        raise ElfError(f"cannot read {path}: {e.strerror}") from None


def _segments(f: BinaryIO, off: int, entsize: int, num: int) -> tuple[tuple[Segment, ...], bool]:
    out: list[Segment] = []
    dynamic = False
    if entsize < 56:
        return (), False
    f.seek(off)
    data = f.read(entsize * num)
    for i in range(min(num, len(data) // entsize)):
        p_type, p_flags, p_offset, p_vaddr, _, p_filesz = struct.unpack_from("<IIQQQQ", data, i * entsize)
        if p_type == _PT_LOAD:
            out.append(Segment(p_offset, p_vaddr, p_filesz, bool(p_flags & 1)))
        elif p_type == _PT_INTERP:
            dynamic = True
    return tuple(out), dynamic


# (sh_type, sh_name, sh_offset, sh_size, sh_link, sh_entsize)
_Section = tuple[int, int, int, int, int, int]


def _sections(f: BinaryIO, off: int, entsize: int, num: int) -> list[_Section]:
    if not off or entsize < 64:
        return []
    f.seek(off)
    data = f.read(entsize * num)
    out: list[_Section] = []
    for i in range(min(num, len(data) // entsize)):
        sh_name, sh_type, _, _, sh_offset, sh_size, sh_link, _, _, sh_entsize = struct.unpack_from(
            "<IIQQQQIIQQ", data, i * entsize
        )
        out.append((sh_type, sh_name, sh_offset, sh_size, sh_link, sh_entsize))
    return out


def _section_names(f: BinaryIO, sections: list[_Section], strndx: int) -> list[str]:
    if strndx >= len(sections):
        return []
    _, _, off, size, _, _ = sections[strndx]
    f.seek(off)
    table = f.read(min(size, 1 << 20))
    return [_cstr(table, s[1]) for s in sections]


def _read_symbols(
    f: BinaryIO, off: int, count: int, str_off: int, str_size: int, out: dict[tuple[int, str], int]
) -> None:
    f.seek(str_off)
    strings = f.read(str_size)
    f.seek(off)
    data = f.read(count * 24)
    for i in range(len(data) // 24):
        st_name, st_info, _, st_shndx, st_value, st_size = struct.unpack_from("<IBBHQQ", data, i * 24)
        if st_shndx == _SHN_UNDEF or not st_value or (st_info & 0xF) not in (_STT_FUNC, _STT_GNU_IFUNC):
            continue
        name = _cstr(strings, st_name).split("@", 1)[0]
        if name:
            key = (st_value, name)
            out[key] = max(out.get(key, 0), st_size)


def _rank(name: str) -> tuple[int, int, str]:
    return (len(name) - len(name.lstrip("_")), len(name), name)


def _cstr(table: bytes, off: int) -> str:
    end = table.find(b"\0", off)
    return table[off : end if end >= 0 else len(table)].decode("utf-8", "replace")
