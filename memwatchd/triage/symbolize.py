"""Addresses of a traced process -> function+offset and module, from its maps and its ELF files.

The files are opened when the trace starts (Symbolizer.open), while the process is alive: a process that
exits during the trace can still be symbolized. Frame-pointer walks through code built without frame
pointers yield junk frames; a frame is kept only when the instruction before its return address is a call,
and the stack is cut at the first one that is not.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import BinaryIO

from memwatchd.triage.elf import ElfError, ElfImage, read_elf
from memwatchd.triage.target import Mapping, root_path

_MAX_FILES = 256


@dataclass(frozen=True, slots=True)
class Frame:
    """One symbolized address: function+offset in module ("?" when no symbol covers it)."""

    addr: int
    function: str
    offset: int
    module: str

    def text(self) -> str:
        fn = f"{self.function}+0x{self.offset:x}" if self.function != "?" else f"0x{self.addr:x}"
        return f"{fn} ({self.module})" if self.module else fn


class Symbolizer:
    """Resolves addresses of one process; close() releases the files."""

    def __init__(self, maps: list[Mapping], files: dict[str, BinaryIO]) -> None:
        self._maps = sorted(
            (m for m in maps if m.path.startswith("/") and "x" in m.perms), key=lambda m: m.start
        )
        self._files = files
        self._images: dict[str, ElfImage | None] = {}

    @classmethod
    def open(cls, pid: int, maps: list[Mapping], proc: str = "/proc") -> Symbolizer:
        """Open every executable file mapped by the process now, while /proc/PID/root still resolves."""
        files: dict[str, BinaryIO] = {}
        for m in maps:
            if m.path.startswith("/") and "x" in m.perms and m.path not in files and len(files) < _MAX_FILES:
                with contextlib.suppress(OSError):
                    files[m.path] = open(root_path(pid, m.path, proc), "rb")  # noqa: SIM115 - kept open until close()
        return cls(maps, files)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    def frame(self, addr: int) -> Frame:
        m = self._mapping(addr)
        if m is None:
            return Frame(addr, "?", 0, "")
        image = self._image(m.path)
        module = os.path.basename(m.path)
        if image is None:
            return Frame(addr, "?", 0, module)
        vaddr = image.vaddr_of_offset(addr - m.start + m.offset)
        sym = image.symbol_at(vaddr) if vaddr is not None else None
        if sym is None:
            return Frame(addr, "?", 0, module)
        return Frame(addr, sym[0], sym[1], module)

    def follows_call(self, ret: int) -> bool:
        """True when the bytes before return address `ret` are a call instruction (x86-64)."""
        m = self._mapping(ret)
        if m is None:
            return False
        f = self._files.get(m.path)
        if f is None:
            return False
        off = ret - m.start + m.offset
        if off < 7:
            return False
        try:
            f.seek(off - 7)
            b = f.read(7)
        except OSError:
            return False
        if len(b) != 7:
            return False
        if b[2] == 0xE8:  # call rel32
            return True
        # call r/m64: FF /2 in its 2- to 7-byte forms (register, [reg], disp8, SIB, disp32, rip-relative)
        return any(b[7 - k] == 0xFF and (b[8 - k] >> 3) & 7 == 2 for k in (2, 3, 4, 6, 7))

    def stack(self, caller: int, walked: list[int], *, skip_first: bool) -> list[Frame]:
        """Frames of one sampled allocation: the caller (read at the allocator's entry), then the walked
        frame-pointer stack after it, cut at the first frame that does not follow a call."""
        addrs = [caller] if caller else []
        rest = walked[1:] if skip_first else walked
        for i, a in enumerate(rest):
            if not a:
                break
            if addrs and a == addrs[-1] and i == 0:
                continue  # the kernel already added the entry's return address (kernels >= 6.12 do)
            if (addrs or i > 0) and not self.follows_call(a):
                break
            addrs.append(a)
        return [self.frame(a) for a in addrs]

    def _mapping(self, addr: int) -> Mapping | None:
        lo, hi = 0, len(self._maps)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._maps[mid].start <= addr:
                lo = mid + 1
            else:
                hi = mid
        if lo and addr < self._maps[lo - 1].end:
            return self._maps[lo - 1]
        return None

    def _image(self, path: str) -> ElfImage | None:
        if path not in self._images:
            f = self._files.get(path)
            image = None
            if f is not None:
                with contextlib.suppress(ElfError, OSError):
                    image = read_elf(f)
            self._images[path] = image
        return self._images[path]
