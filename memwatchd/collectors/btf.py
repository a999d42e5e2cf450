"""Member offsets of kernel structs from the running kernel's BTF (/sys/kernel/btf/vmlinux).

The probes read a few task_struct, signal_struct and mm_struct fields (start time, exit code, OOM mark, peak
RSS). The kernel headers bcc compiles against are often older than the running kernel (here: 6.1 headers on
a 6.18 kernel), so their struct layouts cannot be trusted; BTF describes the running kernel exactly. This
module resolves "struct.member[.member...]" paths to byte offsets, which the loader passes to the compiler as
-D flags; the probe reads each field with bpf_probe_read_kernel at that offset.

Only what that needs is parsed: the type section's records (to skip them correctly), struct/union members
(anonymous ones are searched through, as C does), array and enum details. Layout: include/uapi/linux/btf.h.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VMLINUX = "/sys/kernel/btf/vmlinux"

_MAGIC = 0xEB9F
_HDR = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type_off, type_len, str_off, str_len
_TYPE = struct.Struct("<III")  # name_off, info, size_or_type
_MEMBER = struct.Struct("<III")  # name_off, type, offset
_ARRAY = struct.Struct("<III")  # type, index_type, nelems
_ENUM = struct.Struct("<Ii")  # name_off, val

_INT, _PTR, _ARRAY_K, _STRUCT, _UNION, _ENUM_K, _FWD, _TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
_VOLATILE, _CONST, _RESTRICT, _FUNC, _FUNC_PROTO, _VAR, _DATASEC, _FLOAT = 9, 10, 11, 12, 13, 14, 15, 16
_DECL_TAG, _TYPE_TAG, _ENUM64 = 17, 18, 19
# bytes that follow the 12-byte common record: fixed, and per vlen item
_EXTRA = {_INT: (4, 0), _ARRAY_K: (12, 0), _STRUCT: (0, 12), _UNION: (0, 12), _ENUM_K: (0, 8)}
_EXTRA.update({_FUNC_PROTO: (0, 8), _VAR: (4, 0), _DATASEC: (0, 12), _DECL_TAG: (4, 0), _ENUM64: (0, 12)})
_MODIFIERS = (_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG)


class BtfError(Exception):
    """The BTF blob is unreadable, or a struct or member it was asked for is not in it."""


@dataclass(frozen=True, slots=True)
class _Type:
    kind: int
    name: str
    vlen: int
    kind_flag: bool
    size_or_type: int
    extra: int  # offset of the kind-specific data in the type section


class Btf:
    """The types of one BTF blob, indexed by id; resolve paths with offset()."""

    def __init__(self, data: bytes) -> None:
        if len(data) < _HDR.size:
            raise BtfError("BTF blob too short")
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = _HDR.unpack_from(data)
        if magic != _MAGIC:
            raise BtfError("not a BTF blob (bad magic)")
        self._types_at = hdr_len + type_off
        self._strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
        self._data = data
        self._types: list[_Type | None] = [None]  # id 0 is void
        self._by_name: dict[tuple[int, str], int] = {}
        pos, end = self._types_at, self._types_at + type_len
        while pos < end:
            name_off, info, size_or_type = _TYPE.unpack_from(data, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            fixed, per_item = _EXTRA.get(kind, (0, 0))
            t = _Type(kind, self._str(name_off), vlen, bool(info >> 31), size_or_type, pos + _TYPE.size)
            self._types.append(t)
            if t.name and kind in (_STRUCT, _UNION, _ENUM_K):
                self._by_name.setdefault((kind, t.name), len(self._types) - 1)
            pos += _TYPE.size + fixed + per_item * vlen

    @classmethod
    def load(cls, path: str = VMLINUX) -> Btf:
        """Parse a BTF file; BtfError when it is missing or unreadable."""
        try:
            with open(path, "rb") as f:
                return cls(f.read())
        except OSError as e:
            raise BtfError(f"cannot read {path}: {e.strerror}") from None

    def _str(self, off: int) -> str:
        end = self._strings.find(b"\0", off)
        return self._strings[off:end].decode("ascii", "replace")

    def _resolve(self, type_id: int) -> tuple[int, _Type]:
        """Follow typedefs and qualifiers to the underlying type."""
        for _ in range(32):
            t = self._types[type_id]
            if t is None or t.kind not in _MODIFIERS:
                break
            type_id = t.size_or_type
        t = self._types[type_id]
        if t is None:
            raise BtfError("member of type void")
        return type_id, t

    def _members(self, t: _Type) -> list[tuple[str, int, int]]:
        """(name, type id, byte offset) of a struct's or union's members."""
        out = []
        for i in range(t.vlen):
            name_off, type_id, off = _MEMBER.unpack_from(self._data, t.extra + i * _MEMBER.size)
            bits = off & 0xFFFFFF if t.kind_flag else off
            out.append((self._str(name_off), type_id, bits // 8))
        return out

    def _find(self, t: _Type, member: str) -> tuple[int, int] | None:
        """(type id, byte offset) of a member, searching through anonymous structs and unions."""
        for name, type_id, off in self._members(t):
            if name == member:
                return type_id, off
            if not name:
                _, inner = self._resolve(type_id)
                if inner.kind in (_STRUCT, _UNION):
                    found = self._find(inner, member)
                    if found is not None:
                        return found[0], off + found[1]
        return None

    def struct(self, name: str) -> int:
        """The type id of `struct name` (BtfError when absent)."""
        type_id = self._by_name.get((_STRUCT, name))
        if type_id is None:
            raise BtfError(f"struct {name} is not in BTF")
        return type_id

    def offset(self, path: str) -> int:
        """Byte offset of "struct.member.member..." from the start of the struct.

        Arrays take an index, a number or an enumerator: "mm_struct.rss_stat[MM_ANONPAGES].count". Nested
        members must be embedded structs, not pointers."""
        struct_name, *members = path.split(".")
        if not members:
            raise BtfError(f"{path}: no member given")
        _, t = self._resolve(self.struct(struct_name))
        total = 0
        for member in members:
            m, index = member, None
            if m.endswith("]") and "[" in m:
                m, _, idx = m[:-1].partition("[")
                index = int(idx) if idx.isdigit() else self.enumerator(idx)
            found = self._find(t, m)
            if found is None:
                raise BtfError(f"{path}: no member {m}")
            type_id, off = found
            total += off
            _, t = self._resolve(type_id)
            if index is not None:
                if t.kind != _ARRAY_K:
                    raise BtfError(f"{path}: {m} is not an array")
                elem, _, nelems = _ARRAY.unpack_from(self._data, t.extra)
                if not 0 <= index < nelems:
                    raise BtfError(f"{path}: index {index} out of range ({nelems})")
                _, t = self._resolve(elem)
                total += index * self.size_of(t)
        return total

    def size_of(self, t: _Type) -> int:
        """Size in bytes of a resolved type."""
        if t.kind in (_STRUCT, _UNION, _ENUM_K, _ENUM64, _INT, _FLOAT):
            return t.size_or_type
        if t.kind == _PTR:
            return 8
        if t.kind == _ARRAY_K:
            elem, _, nelems = _ARRAY.unpack_from(self._data, t.extra)
            return int(nelems) * self.size_of(self._resolve(elem)[1])
        raise BtfError(f"no size for BTF kind {t.kind}")

    def enumerator(self, name: str) -> int:
        """The value of enumerator `name`, in whichever enum declares it (anonymous ones included)."""
        for t in self._types:
            if t is None or t.kind != _ENUM_K:
                continue
            for i in range(t.vlen):
                name_off, val = _ENUM.unpack_from(self._data, t.extra + i * _ENUM.size)
                if self._str(name_off) == name:
                    return int(val)
        raise BtfError(f"no enumerator {name} in BTF")

    def percpu_offset(self, name: str) -> int:
        """Offset of per-CPU variable `name` in the per-CPU area (the .data..percpu section's VAR entry)."""
        for t in self._types:
            if t is None or t.kind != _DATASEC or t.name != ".data..percpu":
                continue
            for i in range(t.vlen):
                type_id, off, _size = _MEMBER.unpack_from(self._data, t.extra + i * _MEMBER.size)
                var = self._types[type_id]
                if var is not None and var.kind == _VAR and var.name == name:
                    return int(off)
        raise BtfError(f"no per-CPU variable {name} in BTF")


def resolve(fields: dict[str, str], path: str = VMLINUX) -> dict[str, int]:
    """{define name: value} for {define name: "struct.member..." (an offset), "enum:ENUMERATOR", or
    "percpu:A-B" (the distance from per-CPU variable B to A inside one CPU's per-CPU area)}."""
    btf = Btf.load(path)
    out = {}
    for define, spec in fields.items():
        if spec.startswith("enum:"):
            out[define] = btf.enumerator(spec[5:])
        elif spec.startswith("percpu:"):
            a, _, b = spec[7:].partition("-")
            out[define] = btf.percpu_offset(a) - (btf.percpu_offset(b) if b else 0)
        else:
            out[define] = btf.offset(spec)
    return out
