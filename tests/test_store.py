"""The history store on real SQLite files, written by the real StoreWriter and read back by StoreReader."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memwatchd.config import StorageConfig
from memwatchd.models import AlertRecord, BpfHealth, MemInfo, OomKill, ProcessExit, ProcessSnapshot, Snapshot
from memwatchd.store.reader import StoreReader
from memwatchd.store.rows import HistoryRow
from memwatchd.store.schema import SCHEMA_VERSION, TIER_HOUR, TIER_MINUTE, TIER_RAW
from memwatchd.store.writer import StoreError, StoreWriter

REPO = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
CFG = StorageConfig()


def proc(
    pid: int, rss: int, start_ticks: int | None = None, comm: str | None = None, **kw: Any
) -> ProcessSnapshot:
    fields: dict[str, Any] = dict(
        pid=pid,
        start_ticks=pid * 10 if start_ticks is None else start_ticks,
        start_time=T0 - 100 + pid,
        comm=comm or f"p{pid}",
        unit="app.service",
        cgroup="/system.slice/app.service",
        rss_kb=rss,
        anon_kb=rss // 2,
        swap_kb=0,
        vm_kb=rss * 4,
        hwm_kb=rss,
        pss_kb=None,
        uss_kb=None,
        mmap_count=1,
        mmap_bytes=4096,
        munmap_count=0,
        munmap_bytes=0,
        brk_count=0,
        brk_bytes=0,
    )
    fields.update(kw)
    return ProcessSnapshot(**fields)


def snap(ts: float, procs: Iterable[ProcessSnapshot], **kw: Any) -> Snapshot:
    return Snapshot(
        ts=ts,
        mono=ts - T0,
        processes=tuple(procs),
        meminfo=MemInfo(8 << 20, 4 << 20, 1 << 20, 1 << 19),
        bpf=BpfHealth("active"),
        **kw,
    )


async def write_all(
    path: Path, snaps: Iterable[Snapshot], cfg: StorageConfig = CFG, **attrs: Any
) -> StoreWriter:
    w = await StoreWriter.open(str(path), cfg)
    for k, v in attrs.items():
        setattr(w, k, v)
    for s in snaps:
        await w.write(s)
    return w


def build(path: Path, snaps: Iterable[Snapshot], cfg: StorageConfig = CFG, **attrs: Any) -> None:
    async def go() -> None:
        w = await write_all(path, snaps, cfg, **attrs)
        await w.close()

    asyncio.run(go())


def raw_history(path: Path, pid: int, since: float = T0 - 10, until: float = T0 + 10**6) -> list[HistoryRow]:
    with StoreReader(str(path)) as r:
        return r.history(r.find_processes(pid=pid), since, until, TIER_RAW)


# ---- basics --------------------------------------------------------------------------------------------


def test_history_carries_values_forward_between_changes(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    rss = [100, 100, 100, 200, 200, 300, 300, 300]
    build(db, [snap(T0 + 3 * i, [proc(1, v), proc(2, 50)]) for i, v in enumerate(rss)])
    rows = raw_history(db, 1)
    assert [(r.ts, r.rss_kb) for r in rows] == [
        (T0, 100),
        (T0 + 9, 200),
        (T0 + 15, 300),
        (T0 + 21, 300),
    ]
    # a range starting between changes begins with the value held at its first snapshot
    rows = raw_history(db, 1, since=T0 + 4, until=T0 + 13)
    assert [(r.ts, r.rss_kb) for r in rows] == [(T0 + 6, 100), (T0 + 9, 200), (T0 + 12, 200)]
    assert [r.rss_kb for r in raw_history(db, 2)] == [50, 50]
    r0 = rows[0]
    assert r0.pid == 1 and r0.start_ticks == 10 and r0.comm == "p1" and r0.unit == "app.service"
    assert r0.tier == "raw" and r0.mmap_bytes == 4096 and r0.anon_kb == 50


def test_unchanged_processes_cost_no_rows(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    build(
        db,
        [snap(T0 + 3 * i, [proc(p, 1000) for p in range(1, 101)] + [proc(500, 1000 + i)]) for i in range(50)],
    )
    c = sqlite3.connect(db)
    # one keyframe row per process, then only the changing one
    assert c.execute("SELECT count(*) FROM raw_head").fetchone()[0] == 101 + 49
    assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_pid_reuse_starts_a_new_series(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    snaps = [snap(T0 + 3 * i, [proc(7, 100 + i, start_ticks=1)]) for i in range(3)]
    snaps += [snap(T0 + 9 + 3 * i, [proc(7, 900, start_ticks=2, comm="new")]) for i in range(3)]
    build(db, snaps)
    with StoreReader(str(db)) as r:
        procs = r.find_processes(pid=7)
        assert [(p.start_ticks, p.comm, p.last_snap) for p in procs] == [(1, "p7", 3), (2, "new", None)]
        rows = r.history(procs, T0, T0 + 100, TIER_RAW)
    assert [(r.start_ticks, r.rss_kb) for r in rows] == [
        (1, 100),
        (1, 101),
        (1, 102),
        (2, 900),
        (2, 900),
    ]


def test_exits_ooms_and_vanished_processes(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    s = [snap(T0, [proc(1, 10), proc(2, 20), proc(3, 30)])]
    final = proc(2, 25, mmap_count=9, mmap_bytes=9 * 4096, exited=True)
    s.append(
        snap(
            T0 + 3,
            [proc(1, 10), final, proc(3, 30)],
            exits=(ProcessExit(pid=2, comm="p2", exit_code=3, final=None, mono_ns=int(2.5e9)),),
            ooms=(OomKill(3, "p3", 100, 30, 0, 0, 0, 0, int(2.9e9)),),
        )
    )
    s.append(snap(T0 + 6, [proc(1, 10)]))  # 3 vanished without an exit event
    s.append(snap(T0 + 9, [proc(1, 11)]))
    build(db, s)
    with StoreReader(str(db)) as r:
        ps = {p.pid: p for p in r.processes(since=T0 - 1, until=T0 + 100)}
        assert ps[2].exit_time == T0 + 2.5 and ps[2].exit_code == 3 and ps[2].last_seen == T0 + 3
        assert ps[3].last_seen == T0 + 3 and ps[3].exit_time is None and not ps[3].live
        assert ps[1].live and ps[1].last_seen == T0 + 9
        assert [p.pid for p in r.top().processes] == [1]
        assert [(o["pid"], o["comm"], o["ts"]) for o in r.ooms()] == [(3, "p3", T0 + 3)]
    last = raw_history(db, 2)[-1]
    assert (last.ts, last.rss_kb, last.mmap_count, last.mmap_bytes) == (T0 + 3, 25, 9, 9 * 4096)


def test_restart_keeps_series_and_closes_processes_gone_meanwhile(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    build(db, [snap(T0 + 3 * i, [proc(1, 10 + i), proc(2, 5)]) for i in range(3)])
    build(db, [snap(T0 + 100 + 3 * i, [proc(1, 20)]) for i in range(2)])
    assert [(r.ts, r.rss_kb) for r in raw_history(db, 1)] == [
        (T0, 10),
        (T0 + 3, 11),
        (T0 + 6, 12),
        (T0 + 100, 20),
        (T0 + 103, 20),
    ]
    assert [r.ts for r in raw_history(db, 2)] == [T0, T0 + 6]


# ---- compaction and rollups ------------------------------------------------------------------------------


def oracle(snaps: list[Snapshot], pid: int) -> list[tuple[float, ProcessSnapshot]]:
    return [(s.ts, p) for s in snaps for p in s.processes if p.pid == pid]


def test_compaction_keeps_every_change(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    snaps = [
        snap(T0 + 3 * i, [proc(1, 100 + (i // 7) * 4), proc(2, 7)] + ([proc(3, i)] if 50 < i < 300 else []))
        for i in range(1200)
    ]
    build(db, snaps, period_ms=300_000, margin_ms=120_000)
    c = sqlite3.connect(db)
    assert c.execute("SELECT count(*) FROM chunks WHERE tier = 0").fetchone()[0] > 10  # compaction happened
    assert c.execute("SELECT min(snap) FROM raw_head").fetchone()[0] > 1000
    for pid in (1, 2, 3):
        truth = oracle(snaps, pid)
        rows = raw_history(db, pid)
        # rows are exactly the changes plus the first and last presence, with the values held at those times
        expect = [
            (t, p.rss_kb)
            for k, (t, p) in enumerate(truth)
            if k in (0, len(truth) - 1) or p.rss_kb != truth[k - 1][1].rss_kb
        ]
        assert [(r.ts, r.rss_kb) for r in rows] == expect


def agg_oracle(snaps: list[Snapshot], pid: int, bucket_s: int) -> dict[float, dict[str, Any]]:
    out: dict[float, dict[str, Any]] = {}
    for t, p in oracle(snaps, pid):
        b = float(int(t // bucket_s) * bucket_s)
        o = out.setdefault(b, {"n": 0, "vals": []})
        o["n"] += 1
        o["vals"].append(p.rss_kb)
        o["last"] = p
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(
        st.tuples(
            st.integers(1, 40), st.integers(0, 3), st.booleans()
        ),  # (seconds to next, rss change, pid 2 alive)
        min_size=5,
        max_size=400,
    ),
    compact=st.booleans(),
)
def test_rollups_equal_the_raw_data_they_summarise(steps: list[tuple[int, int, bool]], compact: bool) -> None:
    t, rss = T0, 1000
    snaps = []
    flags = [s[2] for s in steps]
    # pid 2 lives from its first to its last flagged step (a process does not come back once gone)
    born = flags.index(True) if True in flags else len(flags)
    died = len(flags) - flags[::-1].index(True) if True in flags else 0
    for k, (dt, change, _) in enumerate(steps):
        rss += change * 4
        procs = [proc(1, rss, mmap_count=rss)] + ([proc(2, rss * 2)] if born <= k < died else [])
        snaps.append(snap(t, procs))
        t += dt
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "m.db"
        attrs = {"period_ms": 120_000, "margin_ms": 60_000} if compact else {}
        build(db, snaps, **attrs)
        with StoreReader(str(db)) as r:
            procs = r.find_processes(pid=1)
            for tier, bucket_s in ((TIER_MINUTE, 60), (TIER_HOUR, 3600)):
                rows = r.history(procs, T0, t, tier)
                truth = agg_oracle(snaps, 1, bucket_s)
                assert [row.ts for row in rows] == sorted(truth)
                for row in rows:
                    o = truth[row.ts]
                    assert row.samples == o["n"]
                    assert (row.rss_min_kb, row.rss_max_kb) == (min(o["vals"]), max(o["vals"]))
                    assert row.rss_avg_kb == pytest.approx(sum(o["vals"]) / len(o["vals"]), abs=1e-3)
                    assert row.rss_kb == o["last"].rss_kb and row.mmap_count == o["last"].mmap_count
                    assert row.anon_kb == o["last"].anon_kb
            # pid 2 comes and goes: present-only samples, its history row count matches its changes
            rows2 = r.history(r.find_processes(pid=2), T0, t, TIER_MINUTE)
            assert sum(row.samples for row in rows2) == len(oracle(snaps, 2))


# ---- retention -------------------------------------------------------------------------------------------


def test_retention_removes_exactly_what_is_older_than_each_tier(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    cfg = StorageConfig(path=str(db), raw_retention_s=1800, minute_retention_s=3600, retention_s=7200)
    n = 4 * 3600 // 10
    snaps = [
        snap(T0 + 10 * i, [proc(1, 100 + i), proc(2, 50)] + ([proc(3, 9)] if i < 100 else []))
        for i in range(n)
    ]
    now = snaps[-1].ts

    async def go() -> int:
        w = await write_all(db, snaps, cfg, period_ms=600_000, margin_ms=300_000)
        deleted = await w.prune(now, batch=7)
        await w.close()
        return deleted

    assert asyncio.run(go()) > 0
    c = sqlite3.connect(db)
    cut_raw, cut_min, cut_hour = (round((now - s) * 1000) for s in (1800, 3600, 7200))
    assert c.execute("SELECT min(ts_ms) FROM snapshots").fetchone()[0] == min(
        round(s.ts * 1000) for s in snaps if s.ts * 1000 >= cut_raw
    )
    for tier, cut in ((0, cut_raw), (1, cut_min), (2, cut_hour)):
        # only what a live process's later periods are read from stays: its latest chunk (process 2 is
        # constant: nothing stored since its first period)
        kept = c.execute(
            "SELECT c.proc, c.id = (SELECT max(id) FROM chunks n WHERE n.tier = c.tier AND n.proc = c.proc),"
            " p.last_snap IS NULL FROM chunks c JOIN processes p ON p.id = c.proc"
            " WHERE c.tier = ? AND c.t1_ms < ?",
            (tier, cut),
        ).fetchall()
        assert all(latest and live for _, latest, live in kept), (tier, kept)
        assert len(kept) <= 1
    # process 3 vanished more than `retention` ago: gone entirely
    assert c.execute("SELECT count(*) FROM processes WHERE pid = 3").fetchone()[0] == 0
    with StoreReader(str(db)) as r:
        p1 = r.find_processes(pid=1)
        raw = r.history(p1, T0, now, TIER_RAW)
        assert [x.ts for x in raw] == [s.ts for s in snaps if s.ts * 1000 >= cut_raw]
        for tier, cut, bucket_s in ((TIER_MINUTE, cut_min, 60), (TIER_HOUR, cut_hour, 3600)):
            rows = r.history(p1, T0, now, tier)
            expect = sorted(b for b in agg_oracle(snaps, 1, bucket_s) if b * 1000 >= cut)
            assert [x.ts for x in rows] == expect
            # the constant process reads the same over the retained range, from its one old chunk
            truth2 = agg_oracle(snaps, 2, bucket_s)
            rows2 = r.history(r.find_processes(pid=2), T0, now, tier)
            assert [(x.ts, x.samples, x.rss_kb, x.rss_avg_kb) for x in rows2] == [
                (b, truth2[b]["n"], 50, 50.0) for b in expect
            ]
        raw2 = r.history(r.find_processes(pid=2), T0, now, TIER_RAW)
        assert [(x.ts, x.rss_kb) for x in raw2] == [(raw[0].ts, 50), (raw[-1].ts, 50)]
    assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# ---- concurrency, failures, permissions ----------------------------------------------------------


def test_a_long_reader_does_not_block_the_writer(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    build(db, [snap(T0, [proc(1, 1)])])
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sqlite3, sys, time
            c = sqlite3.connect("file:{db}?mode=ro", uri=True, isolation_level=None)
            c.execute("BEGIN"); print(c.execute("SELECT count(*) FROM snapshots").fetchone()[0], flush=True)
            sys.stdin.readline()
            print(c.execute("SELECT count(*) FROM snapshots").fetchone()[0], flush=True)
        """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout and holder.stdin
    assert holder.stdout.readline().strip() == "1"
    reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM raw_head").fetchone()
    t = time.monotonic()
    snaps = [snap(T0 + 3 * i, [proc(1, i), proc(2, i * 2)]) for i in range(1, 400)]
    build(db, snaps, period_ms=120_000, margin_ms=60_000)  # includes compactions
    assert time.monotonic() - t < 20
    holder.stdin.write("\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "1"  # its snapshot of the database did not move
    holder.wait(10)
    reader.execute("COMMIT")
    assert len(raw_history(db, 2)) == 399


def test_disk_full_raises_store_error_and_writing_resumes(tmp_path: Path) -> None:
    db = tmp_path / "m.db"

    async def go() -> None:
        w = await write_all(db, [snap(T0, [proc(p, 1) for p in range(50)])])
        pages = (await (await w._db.execute("PRAGMA page_count")).fetchone())[0]
        await w._db.execute(f"PRAGMA max_page_count = {pages}")
        big = [proc(p, 2, comm="x" * 3000 + str(p)) for p in range(50, 400)]
        with pytest.raises(StoreError, match="full"):
            await w.write(snap(T0 + 3, big))
        await w._db.execute("PRAGMA max_page_count = 1073741823")
        await w.write(snap(T0 + 6, [proc(p, 3) for p in range(50)]))
        await w.close()

    asyncio.run(go())
    c = sqlite3.connect(db)
    assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert [r[0] for r in c.execute("SELECT ts_ms FROM snapshots ORDER BY id")] == [
        T0 * 1000,
        (T0 + 6) * 1000,
    ]
    assert c.execute("SELECT count(*) FROM processes").fetchone()[0] == 50
    assert [r.rss_kb for r in raw_history(db, 3)] == [1, 3]


def test_unwritable_path_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot open database"):
        asyncio.run(StoreWriter.open(str(tmp_path / "file" / "sub" / "m.db"), CFG))


def test_database_and_wal_and_shm_are_not_world_readable(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "m.db"
    old = os.umask(0)  # even a permissive umask must not make them world-readable
    try:

        async def go() -> None:
            w = await write_all(db, [snap(T0, [proc(1, 1)])])
            for suffix in ("", "-wal", "-shm"):
                mode = stat.S_IMODE(os.stat(f"{db}{suffix}").st_mode)
                assert mode == 0o640, (suffix, oct(mode))
            await w.close()

        asyncio.run(go())
    finally:
        os.umask(old)


KILL_CHILD = """
import asyncio, sys
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
from test_store import snap, proc, T0
from memwatchd.config import StorageConfig
from memwatchd.store.writer import StoreWriter

async def main():
    w = await StoreWriter.open({db!r}, StorageConfig())
    i = int(sys.argv[1])
    while True:
        await w.write(snap(T0 + 3 * i, [proc(p, i * 4 + p) for p in range(1, 21)]))
        print(i, flush=True)
        i += 1

asyncio.run(main())
"""


def test_kill_9_loses_nothing_committed_and_leaves_no_half_snapshot(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    code = KILL_CHILD.format(repo=str(REPO), tests=str(REPO / "tests"), db=str(db))
    start = 0
    for round_ in range(4):
        child = subprocess.Popen([sys.executable, "-c", code, str(start)], stdout=subprocess.PIPE, text=True)
        assert child.stdout
        committed = -1
        for _ in range(15 + 7 * round_):
            committed = int(child.stdout.readline())
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        c = sqlite3.connect(db)
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        last = c.execute("SELECT max(id) FROM snapshots").fetchone()[0]
        n = c.execute("SELECT count(*) FROM snapshots").fetchone()[0]
        assert n >= committed + 1  # everything reported committed is there
        # every snapshot is whole: all 20 processes changed in each, so each has exactly 20 rows
        assert c.execute(
            "SELECT count(DISTINCT snap), min(k), max(k) FROM (SELECT snap, count(*) k FROM raw_head"
            " GROUP BY snap)"
        ).fetchone() == (n, 20, 20)
        assert last == n
        c.close()
        start = n
    rows = raw_history(db, 1)
    assert [r.rss_kb for r in rows] == [i * 4 + 1 for i in range(start)]


# ---- alerts and status -------------------------------------------------------------------------------------


def test_alerts_upsert_by_episode_and_reload_open_ones(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    a = AlertRecord(
        rule="grow",
        kind="growth",
        pid=5,
        start_ticks=50,
        comm="p5",
        unit=None,
        state="firing",
        since=T0,
        fired_at=T0 + 60,
        notified_state="firing",
        notified_at=T0 + 61,
        value=1e6,
        rate=10.0,
    )
    b = replace(a, rule="big", since=T0 + 1, state="resolved", resolved_at=T0 + 90, notified_state="firing")
    c = replace(a, rule="old", since=T0 + 2, state="resolved", resolved_at=T0 + 90, notified_state="resolved")

    async def go() -> list[AlertRecord]:
        w = await StoreWriter.open(str(db), CFG)
        await w.save_alerts([a, b, c])
        await w.save_alerts([replace(a, value=2e6, summary="now 2MB")])  # same episode: updated
        await w.set_status(bpf_state="active", lost_events=3, scan_ms=1.5, note=None)
        await w.set_status(lost_events=4)
        got = await w.load_open_alerts()
        await w.close()
        return got

    got = asyncio.run(go())
    assert got == [replace(a, value=2e6, summary="now 2MB"), b]
    with StoreReader(str(db)) as r:
        assert [x.rule for x in r.alerts()] == ["grow", "big", "old"]
        st = r.status()
    assert (st["bpf_state"], st["lost_events"], st["scan_ms"], st["note"]) == ("active", 4, 1.5, None)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    build(db, [])
    c = sqlite3.connect(db)
    c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    c.commit()
    c.close()
    with pytest.raises(StoreError, match="newer"):
        asyncio.run(StoreWriter.open(str(db), CFG))


@pytest.mark.parametrize(
    "comm",
    ["it's", 'say "hi"', "100%", "a_b", "%", "_", "*", "x\x00y", "k" * 10_000, "'; DROP TABLE processes; --"],
)
def test_hostile_comm_filters_match_exactly(tmp_path: Path, comm: str) -> None:
    db = tmp_path / "m.db"
    build(db, [snap(T0, [proc(1, 1, comm=comm), proc(2, 2, comm="a%b"), proc(3, 3, comm="axb")])])
    with StoreReader(str(db)) as r:
        assert [p.pid for p in r.find_processes(comm=comm)] == [1]
        assert r.find_processes(comm=comm + "?") == []
        assert [p.pid for p in r.find_processes(comm="a%b")] == [2]
        expect = [2, 3] if comm != "a_b" else [1, 2, 3]
        assert [p.pid for p in r.find_processes(comm_glob="a?b")] == expect
        assert [p.pid for p in r.find_processes(comm_glob=comm)] == ([1] if "*" not in comm else [1, 2, 3])
        assert len(r.find_processes()) == 3


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(st.one_of(st.none(), st.integers(-(2**62), 2**62)), min_size=3, max_size=3),
        max_size=60,
    ),
    st.lists(st.integers(1, 10**6), min_size=60, max_size=60),
)
def test_codec_round_trips(values: list[list[int | None]], gaps: list[int]) -> None:
    from memwatchd.store import codec

    keys, k = [], 5
    for g in gaps[: len(values)]:
        k += g
        keys.append(k)
    entries = [(key, tuple(v)) for key, v in zip(keys, values, strict=True)]
    assert codec.decode(codec.encode(entries), 3) == entries
    repeated = [(i, (7, None, 2**40)) for i in range(1, 300)]  # compressible: stored zlib-compressed
    blob = codec.encode(repeated)
    assert blob[0] == codec.FORMAT_ZLIB and codec.decode(blob, 3) == repeated


# ---- exits and the eBPF fields of schema 3 ----------------------------------------------------------------


def test_a_late_exit_ends_its_own_identity_not_the_pids_next_process(tmp_path: Path) -> None:
    # pid 5 ends (start 50) and the pid is reused at once (start 60); the exit arrives a cycle later
    db = tmp_path / "m.db"
    old = proc(5, 10, start_ticks=50, mapped_bytes=1 << 20, mremap_count=2, mremap_grow_bytes=8192)
    new = proc(5, 20, start_ticks=60, comm="new")
    late = ProcessExit(
        pid=5,
        comm="p5",
        exit_code=-9,
        final=None,
        mono_ns=int(4e9),
        start_ticks=50,
        exit_signal=9,
        oom_killed=True,
        hwm_kb=12,
    )
    build(db, [snap(T0, [old]), snap(T0 + 3, [new]), snap(T0 + 6, [new], exits=(late,))])
    with StoreReader(str(db)) as r:
        ps = {p.start_ticks: p for p in r.processes(since=T0 - 1, until=T0 + 100)}
    assert (ps[50].exit_code, ps[50].exit_signal, ps[50].oom_killed) == (-9, 9, True)
    assert ps[50].exit_time == T0 + 4
    assert ps[60].live and ps[60].exit_time is None and ps[60].exit_code is None
    first = raw_history(db, 5)[0]
    assert (first.mapped_bytes, first.mremap_count, first.mremap_grow_bytes) == (1 << 20, 2, 8192)


def test_a_schema_2_database_is_migrated_and_its_rows_read_without_the_new_fields(tmp_path: Path) -> None:
    from memwatchd.store.schema import MIGRATIONS

    db = tmp_path / "m.db"
    c = sqlite3.connect(db)
    for script in MIGRATIONS[:2]:
        c.executescript(script)
    c.execute("PRAGMA user_version = 2")
    c.close()
    build(db, [snap(T0, [proc(1, 10)])])  # written by this version: after the migration
    c = sqlite3.connect(db)
    assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5  # v5: periods (issue 18)
    # a row as version 2 wrote it: none of the new columns
    c.execute("UPDATE raw_head SET mapped_bytes = NULL, mremap_count = NULL")
    c.commit()
    c.close()
    build(db, [snap(T0 + 3, [proc(1, 11, mapped_bytes=4096, mremap_count=1)])])
    rows = raw_history(db, 1)
    assert [(r.rss_kb, r.mapped_bytes, r.mremap_count) for r in rows] == [
        (10, None, None),
        (11, 4096, 1),
    ]
