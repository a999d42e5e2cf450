"""Text that comes from processes (comm, cgroup paths, units): kept losslessly, shown safely. One place.

A process names itself (prctl(PR_SET_NAME), or the file it runs): its comm may hold an ESC that recolours a
terminal, a newline that forges a log line, a bidi override that reverses what follows, or bytes that are
not UTF-8. cgroup paths and unit names are equally chosen by whoever starts the process.

Two functions, used everywhere such text enters or leaves memwatchd:

- `from_kernel(bytes) -> str` is how memwatchd keeps it: valid UTF-8 as is, a backslash doubled, and each
  byte that is not UTF-8 as `\\xHH`. This text is what the database, JSON output and rules see. It is
  lossless (`to_kernel` gives the bytes back), so a name holding the byte 0xff (`bad\\xff`) and one holding
  a literal backslash, x, f, f (`bad\\\\xff`) stay two different names.
- `shown(str) -> str` is how it is displayed (alert titles and bodies, log lines, tables, the live view,
  Prometheus labels): C0 and C1 control characters (ESC, newline, tab, DEL...) become `\\xHH` or `\\u0085`,
  bidi controls (U+202A-202E, U+2066-2069, U+200E/200F, U+061C) and other invisible format characters
  `\\uHHHH`. Backslashes are left alone: in kept text they are already doubled, so what is shown is
  unambiguous too (an escaped control is `\\x1b`, a name that spells it is `\\\\x1b`).

`from_arg` turns a command-line argument (which Python decodes with surrogateescape) into kept text, so
`memwatchctl processes --comm "$(cat /proc/PID/comm)"` finds the process whatever bytes its name holds.
"""

from __future__ import annotations

import os
import re

_ASCII_SAFE = re.compile(r"[\x20-\x7e]*")  # the common case: printable ASCII needs no look at each char


def _unsafe(c: str) -> bool:
    # str.isprintable is False for controls (Cc), format characters (Cf: the bidi controls, zero-width
    # joiners), separators other than the space (Zs, Zl, Zp: U+00A0, U+2028...), surrogates, private use
    # and unassigned code points
    return not c.isprintable()


def _escape(c: str) -> str:
    o = ord(c)
    if o < 0x80:
        return f"\\x{o:02x}"
    if o <= 0xFFFF:
        return f"\\u{o:04x}"  # also C1 controls: \u0085, never \x85 (that is how a non-UTF-8 byte shows)
    return f"\\U{o:08x}"


def shown(text: str | None) -> str:
    """Text safe to show anywhere: controls, newlines, ANSI escapes and bidi overrides escaped."""
    if text is None:
        return ""
    if _ASCII_SAFE.fullmatch(text):
        return text
    return "".join(_escape(c) if _unsafe(c) else c for c in text)


COMM_BYTES = 16  # TASK_COMM_LEN: process names are at most this long (with the NUL)
_MAX_NAMES = 4096
_names: dict[bytes, str] = {}  # short texts (process names) decoded once: one str for a name all share


def from_kernel(data: bytes) -> str:
    """Lossless text of untrusted bytes: UTF-8 as is, `\\` doubled, other bytes `\\xHH`.

    Texts as short as a process name come back as one shared str per distinct name (10,000 processes of
    one program hold one string, not 10,000; a churn of short-lived ones decodes it once); the memo is
    bounded (emptied when it reaches _MAX_NAMES names).
    """
    if len(data) > COMM_BYTES:
        return _decode(data)
    text = _names.get(data)
    if text is None:
        if len(_names) >= _MAX_NAMES:
            _names.clear()
        text = _names[data] = _decode(data)
    return text


def _decode(data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", "surrogateescape")
        text = text.replace("\\", "\\\\")
        return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text)
    return text.replace("\\", "\\\\") if "\\" in text else text


_KEPT_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


def to_kernel(text: str) -> bytes:
    """The bytes that `from_kernel` was given (a lone backslash, as in text stored before this encoding,
    stands for itself)."""
    out = bytearray()
    pos = 0
    for m in _KEPT_ESCAPE.finditer(text):
        out += text[pos : m.start()].encode("utf-8", "surrogateescape")
        esc = m.group(1)
        out += b"\\" if esc == "\\" else bytes([int(esc[1:], 16)])
        pos = m.end()
    out += text[pos:].encode("utf-8", "surrogateescape")
    return bytes(out)


def from_arg(arg: str) -> str:
    """Kept text of a command-line argument (bytes that were not UTF-8 arrive as surrogates)."""
    return from_kernel(os.fsencode(arg))
