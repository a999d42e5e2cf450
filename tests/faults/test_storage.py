"""RELIABILITY.md 1-5: storage survives kill -9, a full disk, long readers; retention; permissions."""

from __future__ import annotations

import random
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
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
from tests.helpers import BIN, wait_for
from tests.receivers import WebhookReceiver
from tests.test_sdnotify import NotifyReceiver

# ---- 1. kill -9 at random moments -------------------------------------------------------------------


def _kill9_rounds(tmp_path: Path, daemons: Daemons, rounds: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    db = tmp_path / "db" / "memwatchd.db"
    cfg = config(tmp_path, interval=0.1)
    log = tmp_path / "daemon.log"
    seen_total: set[int] = set()
    runs_with_writes = 0
    for i in range(rounds):
        before = snapshot_ids(db)
        p = daemons.start(cfg, log, append=True)
        # anywhere from "still importing" to "many snapshots in": the kill lands during startup, a write,
        # a status update or the sleep between cycles
        deadline = time.monotonic() + rng.uniform(0.05, 2.0)
        seen: set[int] = set()
        committed = 0
        while time.monotonic() < deadline:
            seen = snapshot_ids(db) or seen
            st = status(db)
            if st.get("pid") == p.pid:
                committed = int(st.get("committed_snapshots") or 0)
            time.sleep(rng.uniform(0.0, 0.05))
        p.send_signal(signal.SIGKILL)
        assert p.wait(10) == -signal.SIGKILL
        assert integrity(db) == "ok", f"round {i}"
        after = snapshot_ids(db)
        lost = seen - after
        assert not lost, (
            f"round {i}: snapshots seen by a reader before the kill are gone: {sorted(lost)[:10]}"
        )
        # the daemon's own count of committed snapshots this run is all there
        assert len(after - before) >= committed, (
            f"round {i}: status said {committed} committed, found {len(after - before)}"
        )
        if after - before:
            runs_with_writes += 1
        seen_total |= seen
        # no half-written snapshot: a run starts with a full keyframe (kf = 2), one row per process it counted
        half = query(
            db,
            "SELECT s.id, s.nproc, (SELECT count(*) FROM raw_head r WHERE r.snap = s.id) FROM snapshots s"
            " WHERE s.kf = 2"
            " AND s.id > (SELECT coalesce(max(value), 0) FROM meta WHERE key = 'compacted_through')",
        )
        bad = [h for h in half if h[1] != h[2]]
        assert not bad, f"round {i}: keyframes with missing rows (snapshot id, nproc, rows): {bad}"
        orphans = query(db, "SELECT count(*) FROM raw_head WHERE snap NOT IN (SELECT id FROM snapshots)")[0][
            0
        ]
        assert orphans == 0, f"round {i}: {orphans} rows of a snapshot that was never committed"
    # the database still takes writes after the last kill
    p = daemons.start(cfg, log, append=True)
    n0 = len(snapshot_ids(db))
    wait_for(lambda: len(snapshot_ids(db)) > n0 + 3, 30, what="writes after the last kill")
    assert stop(p)[0] == 0
    assert integrity(db) == "ok"
    assert "Traceback" not in log_text(log)
    return {"rounds": rounds, "runs_with_writes": runs_with_writes, "snapshots": len(snapshot_ids(db))}


def test_kill9_at_random_moments_loses_nothing_committed(tmp_path: Path, daemons: Daemons) -> None:
    r = _kill9_rounds(tmp_path, daemons, 15, seed=7)
    print(r)
    assert r["runs_with_writes"] >= 5, r


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_kill9_at_random_moments_long(tmp_path: Path, daemons: Daemons) -> None:
    r = _kill9_rounds(tmp_path, daemons, 200, seed=int(time.time()))
    print(r)
    assert r["runs_with_writes"] >= 100, r


# ---- 2. disk full -------------------------------------------------------------------------------------


def test_disk_full_keeps_sampling_and_alerting_and_resumes(tmp_path: Path, daemons: Daemons) -> None:
    interval = 0.5
    with short_tmpdir("mwdf-") as short, tmpfs(tmp_path / "small", "16m") as small, WebhookReceiver() as hook:
        notify = NotifyReceiver(str(short / "notify"))
        hog = None
        db = small / "memwatchd.db"
        extra = (
            f'[notify]\nurls = ["{hook.url()}"]\n'
            '[[rules]]\nname = "big"\nkind = "threshold"\nthreshold = "20MB"\n'
            'match = { comm = "diskfullhog" }\n'
        )
        cfg = config(tmp_path, db=db, interval=interval, extra=extra)
        log = tmp_path / "daemon.log"
        p = daemons.start(cfg, log, env={"NOTIFY_SOCKET": notify.path})
        try:
            # drain meanwhile: systemd's socket queue is short and a full one makes the daemon stop notifying
            wait_for(lambda: (notify.drain(0.05), len(snapshot_ids(db)) >= 3)[1], 30, what="first snapshots")
            filler = small / "filler"
            fill_until_full(filler)
            t_full = time.time()
            mark = len(notify.messages)
            i = notify.wait_for(lambda m: "db error: disk full" in m, 20, after=mark)
            # sampling goes on: STATUS= lines keep coming, one per snapshot
            t0 = time.monotonic()
            notify.drain(4 * interval)
            statuses = [m for t, m in notify.messages[i:] if m.startswith("STATUS=") and t >= t0]
            assert len(statuses) >= 3, statuses
            assert all("disk full" in m for m in statuses), statuses
            # ... and alerting: a process above the threshold during the outage is notified
            hog = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "import ctypes,sys,time; ctypes.CDLL(None).prctl(15, b'diskfullhog', 0, 0, 0);"
                    " b = bytearray(40 << 20); sys.stdin.read()",
                ],
                stdin=subprocess.PIPE,
            )
            got = hook.wait_for(1, 20)
            assert any("diskfullhog" in b["title"] and "FIRING" in b["title"] for b in got), got
            time.sleep(2 * interval)
            outage_end = time.time()
            filler.unlink()
            t_free = time.monotonic()
            last_before = max(snapshot_ids(db) or {0})
            wait_for(
                lambda: max(snapshot_ids(db) or {0}) > last_before, 10, every=0.05, what="writes resumed"
            )
            resumed_after = time.monotonic() - t_free
            assert resumed_after <= interval + 0.5, (
                f"writes resumed only {resumed_after:.2f}s after space returned"
            )
            # snapshots taken during the outage come from the in-memory backlog
            wait_for(
                lambda: status(db).get("dropped_snapshots") == 0 and not status(db).get("db_error"),
                10,
                what="status",
            )
            expected = (outage_end - t_full - 1.0) / interval

            def outage_rows() -> int:
                return int(
                    query(
                        db,
                        "SELECT count(*) FROM snapshots WHERE ts_ms > ? AND ts_ms < ?",
                        (round(t_full * 1000) + 1000, round(outage_end * 1000)),
                    )[0][0]
                )

            # the backlog drains one snapshot per write after the first one succeeds: give it time on a
            # loaded machine, then require all of it
            deadline = time.monotonic() + 20
            while outage_rows() < expected - 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            during = outage_rows()
            assert during >= expected - 2, (
                f"{during} snapshots stored from the outage, about {expected:.0f} taken"
            )
            notify.wait_for(lambda m: "last write" in m, 10, after=len(notify.messages) - 1)
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
            rc, _ = stop(p)
            notify.close()
        assert rc == 0
        text = log_text(log)
        assert text.count("cannot write to the database") == 1, text[-3000:]
        assert text.count("database writes resumed") == 1
        # nothing else repeated per cycle during the outage
        lines = [
            re.sub(r"^\S+ \S+ ", "", ln) for ln in text.splitlines() if " WARNING " in ln or " ERROR " in ln
        ]
        repeated = {ln: lines.count(ln) for ln in set(lines) if lines.count(ln) > 2}
        assert not repeated, repeated
        assert "Traceback" not in text
        assert integrity(db) == "ok"


# ---- 3. long reader -----------------------------------------------------------------------------------

HOLD_READER = """
import sqlite3, sys, time
c = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, isolation_level=None)
c.execute("BEGIN")
print(c.execute("SELECT count(*) FROM snapshots").fetchone()[0], flush=True)
time.sleep(float(sys.argv[2]))
print(c.execute("SELECT count(*) FROM snapshots").fetchone()[0], flush=True)
c.execute("COMMIT")
"""


def _long_reader(tmp_path: Path, daemons: Daemons, hold_s: float, after_s: float) -> dict[str, float]:
    churn = FakeChurn(tmp_path / "proc", 2000)
    churn.run(0.25)
    db = tmp_path / "db" / "memwatchd.db"
    wal = Path(str(db) + "-wal")
    cfg = config(tmp_path, interval=0.25, procfs_root=tmp_path / "proc")
    log = tmp_path / "daemon.log"
    p = daemons.start(cfg, log)
    try:
        wait_for(lambda: len(snapshot_ids(db)) >= 3, 30, what="first snapshots")
        reader = subprocess.Popen(
            [sys.executable, "-c", HOLD_READER, str(db), str(hold_s)], stdout=subprocess.PIPE, text=True
        )
        assert reader.stdout
        n_start = int(reader.stdout.readline())
        t0 = time.monotonic()
        n_db_start = len(snapshot_ids(db))
        n_end = int(reader.stdout.readline())
        assert reader.wait(10) == 0
        held = time.monotonic() - t0
        assert n_end == n_start, "the reader's snapshot must not move"
        written = len(snapshot_ids(db)) - n_db_start
        assert written >= held / 0.25 * 0.6, f"only {written} snapshots written during a {held:.0f}s read"
        wal_at_release = wal.stat().st_size
        # after the reader leaves: the next checkpoints reset the WAL, so it stops growing
        sizes = []
        end = time.monotonic() + after_s
        while time.monotonic() < end:
            sizes.append(wal.stat().st_size)
            time.sleep(0.25)
        more = len(snapshot_ids(db)) - n_db_start - written
        assert more >= after_s / 0.25 * 0.6
        # one reset WAL is reused from its start: its file grows no more (one snapshot's frames of slack)
        assert max(sizes) <= wal_at_release + 2 * 1024 * 1024, (
            f"WAL kept growing: {wal_at_release} -> {max(sizes)}"
        )
        if wal_at_release > 4 << 20:  # journal_size_limit (4 MiB): a WAL blown up by the reader shrinks back
            assert sizes[-1] <= (4 << 20) + 2 * 1024 * 1024, sizes[-1]
        status_err = status(db).get("write_errors", 0)
        assert not status_err
    finally:
        churn.stop()
        rc, _ = stop(p)
    assert rc == 0
    text = log_text(log)
    assert "cannot write" not in text and "Traceback" not in text
    assert integrity(db) == "ok"
    return {"held_s": held, "written": written, "wal_at_release": wal_at_release, "wal_max_after": max(sizes)}


def test_long_reader_does_not_block_writes_and_wal_stays_bounded(tmp_path: Path, daemons: Daemons) -> None:
    r = _long_reader(tmp_path, daemons, hold_s=15, after_s=10)
    # the held read made the WAL pass the autocheckpoint size, so the bound above was exercised
    assert r["wal_at_release"] > 2 << 20, r


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_long_reader_long(tmp_path: Path, daemons: Daemons) -> None:
    print(_long_reader(tmp_path, daemons, hold_s=120, after_s=30))


# ---- 4. retention ---------------------------------------------------------------------------------------


def logical_size(db: Path) -> int:
    return int(query(db, "PRAGMA page_count")[0][0]) * int(query(db, "PRAGMA page_size")[0][0])


def _seed_old_rows(db: Path, n: int) -> None:
    """n snapshot rows and n/10 exited processes from two days ago: what a long-running daemon leaves."""
    old_ms = round((time.time() - 2 * 86400) * 1000)
    c = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        c.execute("BEGIN IMMEDIATE")
        base = c.execute("SELECT coalesce(max(id), 0) FROM snapshots").fetchone()[0] + 10_000_000
        c.execute(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?)"
            " INSERT INTO snapshots (id, ts_ms, dt_ms, kf, nproc, scan_errors)"
            " SELECT ? + i, ? + i, 100, 0, 500, 0 FROM s",
            (n, base, old_ms),
        )
        c.execute(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?)"
            " INSERT INTO processes"
            " (id, pid, start_ticks, comm, first_snap, last_snap, first_seen_ms, last_seen_ms)"
            " SELECT ? + i, 100000 + i, i, 'oldproc', ? + 1, ? + 1, ?, ? FROM s",
            (n // 10, base, base, base, old_ms, old_ms),
        )
        c.execute("COMMIT")
    finally:
        c.close()


def test_retention_prunes_old_rows_in_short_batches_and_returns_space(
    tmp_path: Path, daemons: Daemons
) -> None:
    db = tmp_path / "db" / "memwatchd.db"
    cfg = config(
        tmp_path,
        interval=0.2,
        storage_extra='raw_retention = "1h"\nminute_retention = "1d"\nretention = "1d"\n',
    )
    log = tmp_path / "daemon.log"
    p = daemons.start(cfg, log)
    wait_for(lambda: len(snapshot_ids(db)) >= 3, 30, what="first snapshots")
    assert stop(p)[0] == 0
    n = 600_000
    _seed_old_rows(db, n)
    size_before = db.stat().st_size
    assert size_before > 20 << 20 and logical_size(db) == size_before
    p = daemons.start(cfg, log, prune_every_s=2, append=True)
    try:
        wait_for(
            lambda: (
                query(
                    db,
                    "SELECT count(*) FROM snapshots WHERE ts_ms < ?",
                    (round((time.time() - 3600) * 1000),),
                )[0][0]
                == 0
            ),
            60,
            what="old snapshots pruned",
        )
        wait_for(
            lambda: query(db, "SELECT count(*) FROM processes WHERE comm = 'oldproc'")[0][0] == 0,
            30,
            what="old processes pruned",
        )
        # new snapshots keep coming: the prune did not stop the writer
        since = round((time.time() - 1) * 1000)
        wait_for(
            lambda: query(db, "SELECT count(*) FROM snapshots WHERE ts_ms > ?", (since,))[0][0] >= 10,
            10,
            what="snapshots after the prune",
        )
        # incremental vacuum gives the freed pages back (a reserve of 2048 pages stays for reuse); the file
        # itself is cut at the next full checkpoint, so the logical size is what is watched here
        wait_for(lambda: logical_size(db) < size_before / 2, 30, what=f"database shrinks from {size_before}")
        size_after = logical_size(db)
        # ... and it does not grow back: a second load of old rows is pruned into the same space
        _seed_old_rows(db, n // 4)
        wait_for(
            lambda: (
                query(
                    db,
                    "SELECT count(*) FROM snapshots WHERE ts_ms < ?",
                    (round((time.time() - 3600) * 1000),),
                )[0][0]
                == 0
            ),
            60,
            what="second prune",
        )
        time.sleep(1)
        assert logical_size(db) <= max(size_after, 2048 * 4096) * 1.5 + (4 << 20)
    finally:
        rc, _ = stop(p)
    assert rc == 0
    assert db.stat().st_size < size_before / 2, "the closing checkpoint did not shrink the file"
    assert "retention prune failed" not in log_text(log)
    assert integrity(db) == "ok"


# ---- 5. permissions -------------------------------------------------------------------------------------

GID = 4242  # stands for the memwatch group the unit runs with (Group=); need not exist in /etc/group


def test_database_files_not_world_readable_and_group_member_can_query(daemons: Daemons) -> None:
    with short_tmpdir("mwperm-") as d:
        db = d / "db" / "memwatchd.db"
        cfg = config(d, db=db, interval=0.2)
        log = d / "daemon.log"
        # like systemd's Group=: root, primary group GID, no supplementary groups
        p = daemons.start(cfg, log, prefix=["setpriv", f"--regid={GID}", "--clear-groups"])
        try:
            wait_for(lambda: len(snapshot_ids(db)) >= 3, 30, what="first snapshots")
            files = {f.name: f.stat() for f in db.parent.iterdir()}
            assert {"memwatchd.db", "memwatchd.db-wal", "memwatchd.db-shm"} <= set(files), files
            for name, st in files.items():
                assert not stat.S_IMODE(st.st_mode) & 0o007, f"{name} is {oct(st.st_mode)}"
                assert st.st_gid == GID, name
            assert not stat.S_IMODE(db.parent.stat().st_mode) & 0o007

            def as_user(gid: int, *args: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [
                        "setpriv",
                        "--reuid=65534",
                        f"--regid={gid}",
                        "--clear-groups",
                        str(BIN / "memwatchctl"),
                        "--db",
                        str(db),
                        *args,
                    ],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    cwd="/",
                )

            r = as_user(GID, "status", "--json")
            assert r.returncode == 0, r.stderr
            assert '"committed_snapshots"' in r.stdout
            r = as_user(GID, "top", "--json")
            assert r.returncode == 0, r.stderr
            # the reader wrote nothing: the files keep their owner and mode
            for name, st in files.items():
                now = (db.parent / name).stat()
                assert (now.st_uid, stat.S_IMODE(now.st_mode)) == (st.st_uid, stat.S_IMODE(st.st_mode)), name
            # any other user is refused with a one-line error
            r = as_user(65534, "status")
            assert r.returncode == 1 and r.stderr.startswith("Error: ") and "Traceback" not in r.stderr, (
                r.stderr
            )
        finally:
            rc, _ = stop(p)
        assert rc == 0


def test_prune_holds_the_write_lock_only_briefly_per_transaction(tmp_path: Path) -> None:
    """The store's prune on 600k old rows: every transaction (delete batch, vacuum step) is short.

    Each transaction of the real StoreWriter is timed from BEGIN IMMEDIATE to COMMIT (its _tx is wrapped,
    not replaced); the incremental vacuum runs in autocommit steps and is timed per step.
    """
    import asyncio

    from memwatchd.config import StorageConfig
    from memwatchd.store.writer import StoreWriter

    db = tmp_path / "m.db"
    cfg = StorageConfig(path=str(db), raw_retention_s=3600, minute_retention_s=86400, retention_s=86400)

    async def run() -> tuple[list[tuple[str, float, int]], int]:
        w = await StoreWriter.open(str(db), cfg)
        await w.close()
        _seed_old_rows(db, 600_000)
        w = await StoreWriter.open(str(db), cfg)
        spans: list[tuple[str, float, int]] = []
        inner = w._tx

        async def timed(fn: Callable[..., Awaitable[object]], *args: object) -> object:
            t0 = time.perf_counter()
            r = await inner(fn, *args)
            spans.append(
                (getattr(fn, "__name__", "?"), time.perf_counter() - t0, r if isinstance(r, int) else 0)
            )
            return r

        w._tx = timed  # type: ignore[method-assign]
        deleted = await w.prune(time.time(), batch=5000)
        await w.close()
        return spans, deleted

    spans, deleted = asyncio.run(run())
    assert deleted >= 660_000
    batches = [s for s in spans if s[0] == "_delete_batch"]
    assert len(batches) >= 660_000 // 5000
    assert max(n for _, _, n in batches) <= 5000
    worst = max(t for _, t, _ in spans)
    assert worst < 0.25, f"a prune transaction held the write lock {worst:.2f}s"
    c = sqlite3.connect(db)
    try:
        # the incremental vacuum returned the freed pages beyond its reserve to the file system
        assert c.execute("PRAGMA freelist_count").fetchone()[0] <= 2048 + 1024
    finally:
        c.close()
