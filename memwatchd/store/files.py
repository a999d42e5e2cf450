"""The database's files on disk: one writer per database (a lock file), no symlinks, failure kinds.

``NAME.lock`` beside the database holds an ``flock`` for as long as a daemon owns the database, and that
daemon's PID as text (for the refusal message). SQLite's own locks cannot serve: they are per transaction,
and a second connection that simply waits for them takes over the moment the first one commits.
The database, its ``-wal``, ``-shm`` and the lock file are never followed through a symbolic link: a link
there could make a root daemon write into any file of the host.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
import stat
from dataclasses import dataclass

SUFFIXES = ("", "-wal", "-shm", "-journal", ".lock")

# SQLite primary result codes after which a later attempt may succeed: the file system or another process
# is the cause, not the database's content (full disk, I/O error, read-only remount, busy locks).
_TRANSIENT = {
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_NOMEM,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_PROTOCOL,
}
_CORRUPT = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_TRANSIENT_ERRNO = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS}


class StoreError(Exception):
    """The database cannot be opened or written (disk full, unwritable path, corrupt file).

    ``transient``: the cause lies outside the database's content (full disk, I/O error, busy): the same
    write may succeed later. Otherwise (constraint, corrupt page) retrying the same data fails again.
    ``disk_full``: the file system is full (restarting the daemon would not help).
    """

    def __init__(self, message: str, *, transient: bool = False, disk_full: bool = False) -> None:
        super().__init__(message)
        self.transient = transient or disk_full
        self.disk_full = disk_full


class DatabaseInUse(StoreError):
    """Another live memwatchd owns the database (its lock file is held)."""


def describe(e: BaseException) -> str:
    """One-line description of a database failure."""
    msg = str(e) or type(e).__name__
    code = getattr(e, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "database or disk is full" in msg:
        return f"disk full: {msg}"
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full: {e.strerror or msg}"
    return msg.splitlines()[0] if msg else type(e).__name__


def _no_space(path: str | None) -> bool:
    if path is None:
        return False
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return False
    return st.f_bavail == 0 or (st.f_files > 0 and st.f_favail == 0)


def classify(e: BaseException, prefix: str = "", path: str | None = None) -> StoreError:
    """A StoreError for an sqlite3 or OS error, with its transient/disk-full kind.

    SQLite reports a full file system as "disk I/O error" when it cannot grow the -shm file: an I/O error
    while the database's file system has no free block counts as a full disk.
    """
    text = prefix + describe(e)
    code = getattr(e, "sqlite_errorcode", None)
    if isinstance(e, OSError):
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        return StoreError(text, transient=e.errno in _TRANSIENT_ERRNO, disk_full=full)
    primary = (code & 0xFF) if isinstance(code, int) else None
    full = primary == sqlite3.SQLITE_FULL or "database or disk is full" in str(e)
    if not full and primary == sqlite3.SQLITE_IOERR and _no_space(path):
        full = True
        text = prefix + "disk full: " + describe(e)
    return StoreError(text, transient=primary in _TRANSIENT, disk_full=full)


def is_corrupt(e: BaseException) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    return isinstance(code, int) and (code & 0xFF) in _CORRUPT


def corrupt_message(path: str, e: BaseException) -> str:
    """The one line a corrupt database at startup gets: what, and the two ways out."""
    return (
        f"database {path} is corrupt ({describe(e)}); it was left untouched. To start a new one, move it"
        f" aside (mv {path} {path}.corrupt) and start memwatchd again; to keep its history, recover it"
        f" first (sqlite3 {path} .recover | sqlite3 {path}.recovered)"
    )


def refuse_symlinks(path: str) -> None:
    """StoreError when the database or one of its companion files is a symbolic link."""
    for suffix in SUFFIXES:
        name = path + suffix
        try:
            st = os.lstat(name)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise StoreError(f"cannot open database {path}: {name}: {e.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            raise StoreError(
                f"{name} is a symbolic link; refusing to follow it (the database and its -wal, -shm and"
                " .lock files must be regular files: point [storage] path at the real location)"
            )


@dataclass(slots=True)
class WriterLock:
    """The held ``NAME.lock`` of one database (released when the process exits, even by kill -9)."""

    path: str
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def acquire_lock(db_path: str, file_mode: int = 0o640) -> WriterLock | None:
    """Take the database's writer lock; DatabaseInUse when a live daemon holds it.

    None when the lock file cannot be created because the disk is full (the daemon then runs unlocked
    and says so; it writes nothing until space returns anyway).
    """
    path = db_path + ".lock"
    folder = os.path.dirname(os.path.abspath(db_path))
    try:
        os.makedirs(folder, mode=0o750, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, file_mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StoreError(f"{path} is a symbolic link; refusing to follow it") from None
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return None
        raise StoreError(f"cannot open database {db_path}: {path}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        except OSError:
            owner = "unknown"
        os.close(fd)
        raise DatabaseInUse(
            f"database {db_path} is in use by another memwatchd (pid {owner}); refusing to start a second"
            " writer"
        ) from None
    except OSError as e:
        os.close(fd)
        raise StoreError(f"cannot lock database {db_path}: {path}: {e.strerror}") from None
    with contextlib.suppress(OSError):  # a full disk: the lock holds without the PID text
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return WriterLock(path, fd)
