"""Issue 14 (storage) and 18: one writer per database, persistent write errors, startup on a full disk or a
corrupt file, symlinks, a bounded WAL, group readers in every state, idle cycles batched.

Every test runs the real daemon as a subprocess on real files (tmpfs mounts where space matters) and
real signals; faults come from real SQLite (a second writer's row, a trigger, a full file system).
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.common import (
    Daemons,
    FakeChurn,
    config,
    fill_until_full,
    integrity,
    log_text,
    query,
    short_tmpdir,
    snapshot_ids,
    status,
    stop,
    tmpfs,
)
from tests.fixtures.fakeproc import FakeProc
from tests.helpers import BIN, wait_for
from tests.receivers import WebhookReceiver
from tests.test_sdnotify import NotifyReceiver


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def _committed(db: Path, pid: int) -> int:
    st = status(db)
    return int(st.get("committed_snapshots") or 0) if st.get("pid") == pid else 0


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- one writer per database ------------------------------------------------------------------------------


def test_second_daemon_on_a_live_database_refuses_to_start(tmp_path: Path, daemons: Daemons) -> None:
    db = tmp_path / "db" / "memwatchd.db"
    cfg = config(tmp_path, interval=0.2)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = daemons.start(cfg, log_a)
    try:
        wait_for(lambda: _committed(db, a.pid) >= 3, 30, what="first daemon writes")
        started_at = status(db)["started_at"]
        b = daemons.start(cfg, log_b)
        rc = b.wait(30)
        out = _lines(log_text(log_b))
        assert rc == 2, (rc, out)
        assert len(out) == 1, out
        assert str(db) in out[0] and str(a.pid) in out[0], out[0]
        assert "Traceback" not in log_text(log_b)
        # the first daemon owns the database as before: its status, its writes, no errors
        n = _committed(db, a.pid)
        wait_for(lambda: _committed(db, a.pid) >= n + 3, 20, what="the first daemon keeps writing")
        st = status(db)
        assert st["pid"] == a.pid and st["started_at"] == started_at
    finally:
        rc_a, _ = stop(a)
    assert rc_a == 0
    text = log_text(log_a)
    assert "cannot write" not in text and "UNIQUE" not in text, text[-2000:]
    assert integrity(db) == "ok"


# ---- persistent write errors ------------------------------------------------------------------------------


def _writer_sql(db: Path, *stmts: str) -> None:
    c = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        for s in stmts:
            c.execute(s)
    finally:
        c.close()


FAULT_TRIGGER = (
    "CREATE TRIGGER mw_fault BEFORE INSERT ON snapshots BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
)


def test_a_poisoned_snapshot_is_dropped_and_counted_not_retried_forever(
    tmp_path: Path, daemons: Daemons
) -> None:
    """A row another writer left at a future snapshot id (UNIQUE constraint failed: snapshots.id)."""
    interval = 0.2
    churn = FakeChurn(tmp_path / "proc", 20)
    churn.run(interval)  # every cycle changes: each snapshot is written on its own
    db = tmp_path / "db" / "memwatchd.db"
    cfg = config(tmp_path, interval=interval, procfs_root=tmp_path / "proc")
    log = tmp_path / "daemon.log"
    p = daemons.start(cfg, log)
    try:
        wait_for(lambda: _committed(db, p.pid) >= 3, 30, what="first snapshots")
        poison = max(snapshot_ids(db)) + 8
        _writer_sql(
            db, f"INSERT INTO snapshots (id, ts_ms, kf, nproc) VALUES ({poison}, 0, 0, 0)"
        )  # what a second writer leaves behind
        wait_for(
            lambda: max(snapshot_ids(db)) > poison + 5,
            20,
            what=f"snapshots written past the poisoned id {poison}",
        )
        wait_for(lambda: int(status(db).get("poisoned_snapshots") or 0) >= 1, 10, what="poisoned count")
        assert int(status(db)["poisoned_snapshots"]) == 1
        assert not status(db).get("db_error")
        r = subprocess.run(
            [str(BIN / "memwatchctl"), "--db", str(db), "status"], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0 and "poisoned snapshots" in r.stdout, r.stdout + r.stderr
    finally:
        churn.stop()
        rc, _ = stop(p)
    assert rc == 0
    text = log_text(log)
    assert text.count("UNIQUE constraint failed") <= 2, text[-3000:]  # the failure, then the drop
    assert "dropped" in text
    assert integrity(db) == "ok"


def test_a_database_that_stays_unwritable_never_stops_sampling_and_stops_the_watchdog_past_the_limit(
    tmp_path: Path, daemons: Daemons
) -> None:
    interval = 0.2
    limit = 4.0
    with short_tmpdir("mwpe-") as short:
        notify = NotifyReceiver(str(short / "notify"))
        db = tmp_path / "db" / "memwatchd.db"
        cfg = config(tmp_path, interval=interval)
        log = tmp_path / "daemon.log"
        p = daemons.start(
            cfg,
            log,
            env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"},
            db_unusable_s=limit,
        )
        try:
            # drain meanwhile: systemd's socket queue is short and a full one makes the daemon stop notifying
            wait_for(lambda: (notify.drain(0.05), _committed(db, p.pid) >= 3)[1], 30, what="first snapshots")
            # every snapshot insert fails from now on (SQLITE_CONSTRAINT_TRIGGER), status writes still work
            _writer_sql(
                db,
                FAULT_TRIGGER,
            )
            t_fault = time.monotonic()
            mark = len(notify.messages)
            i = notify.wait_for(lambda m: "db error" in m and "injected fault" in m, 20, after=mark)
            t_fault = notify.messages[i][0]  # the daemon meets the fault at its next commit (batched)
            wait_for(
                lambda: "injected fault" in str(status(db).get("db_error")), 10, what="db_error in status"
            )
            r = subprocess.run(
                [str(BIN / "memwatchctl"), "--db", str(db), "status"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert "injected fault" in r.stdout, r.stdout + r.stderr
            # sampling goes on: a STATUS= line per cycle
            t0 = time.monotonic()
            notify.drain(1.5)
            statuses = [m for t, m in notify.messages[i:] if m.startswith("STATUS=") and t >= t0]
            assert len(statuses) >= 4, statuses
            # past the limit the watchdog is no longer fed (systemd restarts the service)
            notify.drain(max(0.0, t_fault + limit + 1.5 - time.monotonic()))
            t1 = time.monotonic()
            notify.drain(2.5)
            late = [m for t, m in notify.messages if t >= t1 and "WATCHDOG=1" in m]
            assert not late, "the watchdog is still fed while the database is unusable past the limit"
            early = [
                m for t, m in notify.messages if t_fault <= t < t_fault + limit - 1 and "WATCHDOG=1" in m
            ]
            assert early, "the watchdog stopped before the limit"
            assert int(status(db).get("poisoned_snapshots") or 0) >= 1
            # it clears: writes resume, the watchdog is fed again, the error leaves the status
            _writer_sql(db, "DROP TRIGGER mw_fault")
            t2 = time.monotonic()
            n = len(snapshot_ids(db))
            wait_for(lambda: len(snapshot_ids(db)) > n + 2, 20, what="writes resumed")
            wait_for(lambda: not status(db).get("db_error"), 10, what="db_error cleared")
            notify.drain(2.0)
            assert [m for t, m in notify.messages if t >= t2 and "WATCHDOG=1" in m], "watchdog not fed again"
            # a stop while snapshots cannot be written: counted in one warning line
            _writer_sql(
                db,
                FAULT_TRIGGER,
            )
            notify.wait_for(lambda m: "db error" in m, 20, after=len(notify.messages))
            notify.drain(1.0)
        finally:
            rc, took = stop(p)
            notify.close()
        assert rc == 0 and took < 5, (rc, took)
        text = log_text(log)
        assert text.count("cannot write to the database") == 2, text[-3000:]  # once per episode
        assert text.count("database writes resumed") == 1, text[-3000:]
        unwritten = [ln for ln in text.splitlines() if "could not be written before exit" in ln]
        assert len(unwritten) == 1 and " WARNING " in unwritten[0], unwritten
        assert int(unwritten[0].split("could not be written")[0].split()[-2]) >= 1, unwritten
        assert text.count("injected fault") <= 4, text[-3000:]  # not once per cycle
        assert "Traceback" not in text
        _writer_sql(db, "DROP TRIGGER mw_fault")
        assert integrity(db) == "ok"


# ---- startup: disk full, corrupt file ---------------------------------------------------------------------


def test_disk_full_at_startup_still_starts_samples_alerts_and_writes_when_space_returns(
    tmp_path: Path, daemons: Daemons
) -> None:
    interval = 0.3
    # 16 MB: the first snapshot is a full keyframe of every process on the host (~1.5 MB at 12,000 processes)
    small_fs = tmpfs(tmp_path / "small", "16m")
    with short_tmpdir("mwdfs-") as short, small_fs as small, WebhookReceiver() as hook:
        notify = NotifyReceiver(str(short / "notify"))
        hog = None
        db = small / "memwatchd.db"
        extra = (
            f'[notify]\nurls = ["{hook.url()}"]\n'
            '[[rules]]\nname = "big"\nkind = "threshold"\nthreshold = "20MB"\n'
            'match = { comm = "fullstarthog" }\n'
        )
        cfg = config(tmp_path, db=db, interval=interval, extra=extra)
        log = tmp_path / "daemon.log"
        filler = small / "filler"
        procs = []
        try:
            for round_ in ("new database", "existing database"):
                fill_until_full(filler)
                t_full = time.time()
                mark = len(notify.messages)
                p = daemons.start(cfg, log, env={"NOTIFY_SOCKET": notify.path}, append=True)
                procs.append(p)
                notify.wait_for(lambda m: m.startswith("READY=1"), 30, after=mark)
                notify.wait_for(lambda m: "db error" in m and "disk full" in m, 20, after=mark)
                assert p.poll() is None, (round_, log_text(log)[-2000:])
                if round_ == "new database":
                    hog = subprocess.Popen(
                        [
                            sys.executable,
                            "-c",
                            "import ctypes,sys; ctypes.CDLL(None).prctl(15, b'fullstarthog', 0, 0, 0);"
                            " b = bytearray(40 << 20); sys.stdin.read()",
                        ],
                        stdin=subprocess.PIPE,
                    )
                    got = hook.wait_for(1, 30)
                    assert any("fullstarthog" in b["title"] and "FIRING" in b["title"] for b in got), got
                time.sleep(3 * interval)
                filler.unlink()
                pid = p.pid
                wait_for(lambda: pid == status(db).get("pid"), 20, what="writes after space returned")  # noqa: B023
                # the snapshots sampled while the disk was full were kept in memory and written now
                wait_for(
                    lambda: (
                        query(
                            db,
                            "SELECT count(*) FROM snapshots WHERE ts_ms < ?",
                            (round(t_full * 1000) + 2500,),  # noqa: B023
                        )[0][0]
                        >= 1
                    ),
                    20,
                    what=f"{round_}: backlog from the full disk written",
                )
                assert not status(db).get("db_error")
                rc, _ = stop(p)
                assert rc == 0, (round_, log_text(log)[-2000:])
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
            for p in procs:
                if p.poll() is None:
                    stop(p)
            notify.close()
        text = log_text(log)
        assert text.count("memwatchd started") == 2, text[-3000:]
        assert text.count("disk full") >= 2 and text.count("database writes resumed") == 2, text[-3000:]
        assert "Traceback" not in text and "startup failed" not in text
        assert integrity(db) == "ok"


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"this is not a database\n" * 100, id="text"),
        pytest.param(b"SQLite format 3\x00" + b"\xff" * 4080, id="bad-header"),
    ],
)
def test_corrupt_database_at_startup_is_one_line_naming_the_file_and_how_to_recover(
    tmp_path: Path, daemons: Daemons, content: bytes
) -> None:
    with short_tmpdir("mwcor-") as short:
        notify = NotifyReceiver(str(short / "notify"))
        db = tmp_path / "db" / "memwatchd.db"
        db.parent.mkdir(mode=0o750)
        db.write_bytes(content)
        before = _sha(db)
        cfg = config(tmp_path, interval=0.2)
        log = tmp_path / "daemon.log"
        p = daemons.start(cfg, log, env={"NOTIFY_SOCKET": notify.path})
        try:
            rc = p.wait(30)
            notify.drain(0.5)
        finally:
            notify.close()
        out = _lines(log_text(log))
        assert rc == 1, (rc, out)
        bad = [ln for ln in out if str(db) in ln]
        assert len(bad) == 1, out
        assert "corrupt" in bad[0] and ".recover" in bad[0], bad[0]
        assert "Traceback" not in log_text(log)
        assert any(m.startswith("STATUS=") and "corrupt" in m for m in notify.texts()), notify.texts()
        assert _sha(db) == before, "the corrupt file was modified"


# ---- symlinks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["", "-wal", "-shm"])
def test_symlinked_database_wal_or_shm_is_refused_with_one_line(
    tmp_path: Path, daemons: Daemons, which: str
) -> None:
    db = tmp_path / "db" / "memwatchd.db"
    cfg = config(tmp_path, interval=0.2)
    log = tmp_path / "daemon.log"
    if which:  # a real database first, stopped cleanly; then its -wal or -shm is a symlink
        p = daemons.start(cfg, log)
        wait_for(lambda: len(snapshot_ids(db)) >= 2, 30, what="first snapshots")
        assert stop(p)[0] == 0
        for s in ("-wal", "-shm"):
            Path(f"{db}{s}").unlink(missing_ok=True)
    else:
        db.parent.mkdir(mode=0o750)
    victim = tmp_path / "victim"
    content = b"" if not which else b"precious\n"  # an empty file is what SQLite would make a database of
    victim.write_bytes(content)
    link = Path(f"{db}{which}")
    link.symlink_to(victim)
    p = daemons.start(cfg, log)
    rc = p.wait(30)
    out = _lines(log_text(log))
    assert rc == 1, (rc, out)
    bad = [ln for ln in out if str(link) in ln]
    assert len(bad) == 1 and "symbolic link" in bad[0], out
    assert victim.read_bytes() == content
    assert link.is_symlink()
    assert "Traceback" not in log_text(log)


# ---- the WAL stays small ------------------------------------------------------------------------------


def test_wal_stays_within_a_few_mb_on_a_small_filesystem(tmp_path: Path, daemons: Daemons) -> None:
    interval = 0.25
    churn = FakeChurn(tmp_path / "proc", 1500)
    churn.run(interval)
    with tmpfs(tmp_path / "small", "48m") as small:
        db = small / "memwatchd.db"
        wal = Path(f"{db}-wal")
        cfg = config(tmp_path, db=db, interval=interval, procfs_root=tmp_path / "proc")
        log = tmp_path / "daemon.log"
        p = daemons.start(cfg, log)
        sizes = []
        try:
            wait_for(lambda: len(snapshot_ids(db)) >= 3, 30, what="first snapshots")
            n0 = len(snapshot_ids(db))
            end = time.monotonic() + 20
            while time.monotonic() < end:
                sizes.append(wal.stat().st_size if wal.exists() else 0)
                time.sleep(0.1)
            written = len(snapshot_ids(db)) - n0
        finally:
            churn.stop()
            rc, _ = stop(p)
        assert rc == 0
        assert written >= 20 / interval * 0.5, f"only {written} snapshots in 20 s"
        assert max(sizes) <= 4 << 20, f"WAL grew to {max(sizes) / 1e6:.1f} MB"
        assert "cannot write" not in log_text(log)


# ---- the memwatch group can read in every state ----------------------------------------------------------

READER = "mwtest-reader"


@pytest.fixture
def memwatch_reader() -> Iterator[tuple[str, int]]:
    """A real unprivileged user whose only extra group is `memwatch` (created when missing)."""
    lock = os.open("/tmp/memwatchd-useradd.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        import fcntl

        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            grp.getgrnam("memwatch")
        except KeyError:
            subprocess.run(["groupadd", "--system", "memwatch"], check=True)
        try:
            pwd.getpwnam(READER)
        except KeyError:
            subprocess.run(
                ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "-G", "memwatch", READER],
                check=True,
            )
        if "memwatch" not in subprocess.run(["id", "-nG", READER], capture_output=True, text=True).stdout:
            subprocess.run(["usermod", "-aG", "memwatch", READER], check=True)
    finally:
        os.close(lock)
    yield READER, grp.getgrnam("memwatch").gr_gid


def test_memwatch_group_member_can_query_while_running_after_a_clean_stop_and_after_kill9(
    daemons: Daemons, memwatch_reader: tuple[str, int]
) -> None:
    user, gid = memwatch_reader
    with short_tmpdir("mwgrp-") as d:
        db = d / "db" / "memwatchd.db"
        cfg = config(d, db=db, interval=0.2)
        log = d / "daemon.log"

        def query_as_reader(when: str) -> None:
            for cmd in (["status", "--json"], ["top", "--json"], ["processes", "--json"]):
                r = subprocess.run(
                    ["runuser", "-u", user, "--", str(BIN / "memwatchctl"), "--db", str(db), *cmd],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    cwd="/",
                )
                assert r.returncode == 0, f"{when}: memwatchctl {' '.join(cmd)}: {r.stderr.strip()}"
                assert r.stdout.strip(), when

        def start() -> subprocess.Popen[bytes]:
            # like the unit's Group=memwatch: primary group memwatch, no supplementary groups
            p = daemons.start(cfg, log, prefix=["setpriv", f"--regid={gid}", "--clear-groups"], append=True)
            wait_for(lambda: _committed(db, p.pid) >= 3, 30, what="writes")
            return p

        p = start()
        query_as_reader("while running")
        assert stop(p)[0] == 0
        query_as_reader("after a clean stop")
        query_as_reader("after a clean stop, twice")
        p = start()
        query_as_reader("running again")
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        query_as_reader("after kill -9")
        p = start()  # the next daemon still opens what the readers left
        assert stop(p)[0] == 0
        for f in db.parent.iterdir():
            st = f.stat()
            assert not st.st_mode & 0o007, f"{f.name} is {oct(st.st_mode)}"
        assert "Traceback" not in log_text(log)
        assert integrity(db) == "ok"


# ---- issue 18: idle cycles are batched, within a stated window -------------------------------------------


def test_idle_cycles_are_committed_in_batches_and_kill9_loses_at_most_the_window(
    tmp_path: Path, daemons: Daemons
) -> None:
    """Snapshots are committed together, at most every 10 intervals (sub-second intervals: every one)."""
    interval = 1.0
    window = 10 * interval
    fp = FakeProc(tmp_path / "proc")
    for pid in range(2000, 2200):
        fp.add(pid, b"idle%d" % pid, start=100 + pid, rss_pages=500)
    db = tmp_path / "db" / "memwatchd.db"
    cfg = config(tmp_path, interval=interval, procfs_root=tmp_path / "proc")
    log = tmp_path / "daemon.log"
    p = daemons.start(cfg, log)
    counts = []
    try:
        wait_for(lambda: len(snapshot_ids(db)) >= 1, 30, what="first snapshot")
        end = time.monotonic() + 2.5 * window
        while time.monotonic() < end:
            counts.append(len(snapshot_ids(db)))
            time.sleep(0.1)
        steps = [b - a for a, b in zip(counts, counts[1:], strict=False) if b != a]
        assert steps and min(steps) >= 5, f"idle snapshots committed one by one: {steps}"
        t_kill = time.time()
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
    last = query(db, "SELECT max(ts_ms) FROM snapshots")[0][0] / 1000
    assert t_kill - last <= window + 2 * interval + 0.5, f"kill -9 lost {t_kill - last:.1f}s of samples"
    assert integrity(db) == "ok"
