"""Reading small files that an operator names (configuration, URL lists) without trusting what they are.

A path may name a FIFO (an open for reading waits for a writer forever), a device (/dev/zero never ends), a
directory, or a file far larger than any configuration. The file is opened with O_NONBLOCK (so opening a
FIFO cannot wait), its type is checked on the open descriptor (no race with a rename), and at most
`limit` + 1 bytes are read, so time and memory stay bounded whatever the path names.
"""

from __future__ import annotations

import os
import stat

MAX_CONFIG_BYTES = 1 << 20  # 1 MiB: the shipped configuration is ~6 KB


class UnsafeFile(Exception):
    """The path cannot be read as a small regular file; str() is the problem (without the path)."""


def kind_of(mode: int) -> str:
    """What a stat mode names, in the words of ls and find: 'a FIFO', 'a directory', ..."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISREG, "a regular file"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def not_regular(path: str) -> str | None:
    """The problem when `path` exists and is not a regular file (following symlinks), else None."""
    try:
        st = os.stat(path)
    except OSError:
        return None  # missing or unreadable: the caller's open says why
    if stat.S_ISREG(st.st_mode):
        return None
    return "is a directory" if stat.S_ISDIR(st.st_mode) else f"not a regular file ({kind_of(st.st_mode)})"


def read_small(path: str, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """The contents of a regular file of at most `limit` bytes; UnsafeFile (or OSError) otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise UnsafeFile("is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(f"not a regular file ({kind_of(st.st_mode)})")
        if st.st_size > limit:
            raise UnsafeFile(f"larger than {_human(limit)} ({st.st_size} bytes)")
        chunks: list[bytes] = []
        got = 0
        while got <= limit:  # the file may grow after fstat: read at most limit + 1 bytes
            chunk = os.read(fd, limit + 1 - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        if got > limit:
            raise UnsafeFile(f"larger than {_human(limit)}")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _human(n: int) -> str:
    return f"{n >> 20} MB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n} bytes"
