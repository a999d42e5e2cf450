"""What the fault tests share: a daemon runner that always cleans up, database checks, fake /proc churn."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests import hooked_daemon
from tests.fixtures.fakeproc import FakeProc
from tests.helpers import BIN, wait_for

LONG = os.environ.get("MEMWATCHD_LONG") == "1"
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def config(
    tmp: Path,
    *,
    db: Path | None = None,
    bpf: bool = False,
    interval: float = 0.3,
    log_level: str = "info",
    extra: str = "",
    procfs_root: Path | None = None,
    storage_extra: str = "",
    bpf_extra: str = "",
) -> Path:
    """Write a config; the database defaults to TMP/db/memwatchd.db."""
    db = db or tmp / "db" / "memwatchd.db"
    text = (
        f'[daemon]\ninterval = {interval}\nlog_level = "{log_level}"\n'
        "[triage]\nenabled = false\n"  # no "where it allocates" follow-ups in message counts
        f"[bpf]\nenabled = {'true' if bpf else 'false'}\n{bpf_extra}"
        f'[storage]\npath = "{db}"\n{storage_extra}'
    )
    if procfs_root is not None:
        text += f'[procfs]\nroot = "{procfs_root}"\n'
    cfg = tmp / "memwatchd.toml"
    cfg.write_text(text + extra)
    return cfg


class Daemons:
    """Starts real memwatchd processes and guarantees they are gone at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        cfg: Path,
        log: Path,
        *,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
        append: bool = False,
        prune_every_s: float | None = None,
        db_unusable_s: float | None = None,
    ) -> subprocess.Popen[bytes]:
        """prune_every_s: run the daemon with that DaemonHooks value (tests.hooked_daemon)."""
        base = {
            k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
        }
        with open(log, "ab" if append else "wb") as out:
            argv = [str(BIN / "memwatchd"), "--config", str(cfg)]
            if prune_every_s is not None or db_unusable_s is not None:
                argv = hooked_daemon.command(cfg, prune_every_s=prune_every_s, db_unusable_s=db_unusable_s)
            p = subprocess.Popen(
                [*prefix, *argv],
                cwd=hooked_daemon.ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**base, **(env or {})},
            )
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def stop(p: subprocess.Popen[bytes], timeout: float = 15.0) -> tuple[int, float]:
    """SIGTERM; (exit code, seconds it took)."""
    t0 = time.monotonic()
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout)
    return rc, time.monotonic() - t0


def log_text(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


def wait_log(log: Path, needle: str, timeout: float = 60.0) -> None:
    wait_for(
        lambda: needle in log_text(log), timeout, what=f"{needle!r} in the log:\n{log_text(log)[-2000:]}"
    )


def ro(db: Path) -> sqlite3.Connection:
    """A read-only connection, like memwatchctl's."""
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None, timeout=10)
    c.execute("PRAGMA busy_timeout = 10000")
    return c


def query(db: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    c = ro(db)
    try:
        return c.execute(sql, params).fetchall()
    finally:
        c.close()


def snapshot_ids(db: Path) -> set[int]:
    try:
        return {r[0] for r in query(db, "SELECT id FROM snapshots")}
    except sqlite3.Error:
        return set()


def status(db: Path) -> dict[str, Any]:
    try:
        return dict(query(db, "SELECT key, value FROM status"))
    except sqlite3.Error:
        return {}


def integrity(db: Path) -> str:
    """PRAGMA integrity_check through a normal connection (recovers the WAL like the next daemon would)."""
    c = sqlite3.connect(db, isolation_level=None)
    try:
        return str(c.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        c.close()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@contextlib.contextmanager
def short_tmpdir(prefix: str, mode: int = 0o755) -> Iterator[Path]:
    """A directory under /tmp (short for AF_UNIX paths, traversable by other users when mode allows)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    d.chmod(mode)
    try:
        yield d
    finally:
        subprocess.run(["rm", "-rf", str(d)], check=False)


def fill_until_full(path: Path) -> None:
    """Write until ENOSPC (unbuffered, down to single pages)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (65536, 4096, 512):
            block = b"\0" * size
            try:
                while True:
                    os.write(fd, block)
            except OSError as e:
                assert e.errno == 28, e
    finally:
        os.close(fd)


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(where)], check=False).returncode == 0:
                break
            time.sleep(0.2)
        else:
            subprocess.run(["umount", "-l", str(where)], check=False)


class FakeChurn:
    """A fake /proc tree of n processes whose RSS changes every `every` seconds (big snapshot writes)."""

    def __init__(self, root: Path, n: int, first_pid: int = 10000) -> None:
        self.fp = FakeProc(root)
        self.pids = list(range(first_pid, first_pid + n))
        self.tick = 0
        for pid in self.pids:
            self.fp.add(pid, b"churn%d" % (pid % 50), start=500 + pid, rss_pages=1000)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def bump(self) -> None:
        self.tick += 1
        for pid in self.pids:
            rss = 1000 + (self.tick * 7 + pid) % 5000
            self.fp.add(
                pid, b"churn%d" % (pid % 50), start=500 + pid, rss_pages=rss, vsize_kb=40000 + rss * 4
            )

    def run(self, every: float) -> None:
        def loop() -> None:
            while not self._stop.wait(every):
                self.bump()

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
