"""Work in proportion to change: the store writer fed by the daemon's Merger (fresh/gone only) stores exactly
what it stores when it looks at every process, on real SQLite files."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from memwatchd.config import StorageConfig
from memwatchd.merge import Merger
from memwatchd.models import (
    BpfHealth,
    BpfPoll,
    BpfStats,
    MemInfo,
    ProcessExit,
    ProcSample,
    ProcScan,
    Snapshot,
)
from memwatchd.store.files import StoreError
from memwatchd.store.writer import StoreWriter

MEM = MemInfo(mem_total_kb=1000, mem_available_kb=500, swap_total_kb=0, swap_free_kb=0)
T0 = 1_700_000_000.0


def _sample(pid: int, start: int, rss: int, comm: str) -> ProcSample:
    return ProcSample(pid, start, comm, 1, "S", rss, rss * 4, rss, rss // 2, 0, "a.service", "/a", None, None)


def _snapshots(n_steps: int, seed: int) -> list[Snapshot]:
    """A churning population: most processes unchanged each step (same objects), some change, come and go."""
    rnd = random.Random(seed)
    m = Merger()
    live: dict[int, ProcSample] = {pid: _sample(pid, 100, 1000, f"p{pid}") for pid in range(1, 40)}
    bstats: dict[int, BpfStats] = {}
    next_pid, out = 100, []
    for i in range(n_steps):
        exits = []
        for pid in list(live):
            r = rnd.random()
            if r < 0.05:
                s = live.pop(pid)
                final = bstats.pop(pid, None)
                if final is not None:
                    exits.append(ProcessExit(pid, s.comm, 0, final, int((i + 1) * 3e9)))
            elif r < 0.15:
                live[pid] = replace(live[pid], rss_kb=live[pid].rss_kb + rnd.randint(-5, 50))
            elif r < 0.18:
                live[pid] = replace(live[pid], comm=live[pid].comm + "x")
            elif r < 0.25:
                old = bstats.get(pid)
                c = (old.mmap_count if old else 0) + 1
                bstats[pid] = BpfStats(pid, c, c * 4096, 0, 0, 0, 0, i)
        for _ in range(rnd.randint(0, 3)):
            pid = rnd.choice([next_pid, rnd.randint(1, 40)])  # new PIDs, and reused ones
            next_pid += 1
            if pid not in live:
                live[pid] = _sample(pid, 200 + i, 500, f"n{pid}")
        scan = ProcScan(tuple(live.values()), MEM, T0 - 1000, 100)
        poll = BpfPoll(dict(bstats), tuple(exits), (), BpfHealth("active", len(bstats)))
        out.append(m.merge(scan, poll, ts=T0 + 3 * i, mono=3.0 * i))
    return out


def _dump(db: Path) -> dict[str, list[tuple[object, ...]]]:
    con = sqlite3.connect(db)
    try:
        return {
            t: con.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
            for t in ("processes", "raw_head", "current", "snapshots")
        }
    finally:
        con.close()


async def _write(db: Path, snaps: list[Snapshot]) -> None:
    w = await StoreWriter.open(str(db), StorageConfig(path=str(db)))
    try:
        for s in snaps:
            await w.write(s)
    finally:
        await w.close()


def test_writer_on_fresh_records_only_stores_the_same_as_on_all(tmp_path: Path) -> None:
    snaps = _snapshots(60, seed=7)
    assert sum(len(s.fresh or ()) for s in snaps[2:]) < sum(len(s.processes) for s in snaps[2:]) / 2
    asyncio.run(_write(tmp_path / "inc.db", snaps))
    asyncio.run(_write(tmp_path / "all.db", [replace(s, fresh=None, base_seq=None) for s in snaps]))
    assert _dump(tmp_path / "inc.db") == _dump(tmp_path / "all.db")


def test_a_dropped_snapshot_makes_the_writer_look_at_every_process(tmp_path: Path) -> None:
    snaps = _snapshots(30, seed=3)
    kept = snaps[:10] + snaps[12:]  # two snapshots dropped (backlog overflow while the disk was full)
    asyncio.run(_write(tmp_path / "inc.db", kept))
    asyncio.run(_write(tmp_path / "all.db", [replace(s, fresh=None, base_seq=None) for s in kept]))
    assert _dump(tmp_path / "inc.db") == _dump(tmp_path / "all.db")


# ---- the alert engine on fresh records only ------------------------------------------------------------

from memwatchd.alerts.engine import AlertEngine  # noqa: E402
from memwatchd.config import RuleConfig  # noqa: E402
from memwatchd.models import OomKill  # noqa: E402

MB = 1024 * 1024
RULES = [
    RuleConfig(name="growth", kind="growth", metric="rss", min_rate=MB / 60, window_s=60.0, for_s=10.0),
    RuleConfig(name="leak", kind="leak", metric="mapped", min_rate=MB / 60, window_s=60.0, for_s=10.0),
    RuleConfig(name="high", kind="threshold", metric="rss", threshold=200 * MB, for_s=6.0),
    RuleConfig(name="oom", kind="oom"),
]


def _engine_snapshots(seed: int) -> list[Snapshot]:
    """Staircase leaks (a value that holds for several snapshots, then jumps), a process crossing a threshold,
    processes that stop growing, exit while firing, get OOM-killed; the rest idle: same objects throughout."""
    rnd = random.Random(seed)
    m = Merger()
    cache: dict[tuple[int, int, int], ProcSample] = {}
    bcache: dict[tuple[int, int], BpfStats] = {}
    out = []
    for i in range(240):
        t = 2.0 * i
        rss: dict[int, int] = {pid: 1000 + pid for pid in range(20, 60)}  # idle
        rss[10] = 100_000 + 5_000 * (i // 5)  # staircase: +5 MB every 10 s
        if i < 150:
            rss[11] = 100_000 + 4_000 * (min(i, 90) // 3)  # grows, stops at 180 s, exits at 300 s
        rss[12] = 150_000 + (70_000 if 60 <= i < 120 else 0)  # above the threshold for 2 minutes
        if i < 200:
            rss[13] = 50_000 + 3_000 * (i // 4)  # killed by the OOM killer at 400 s
        rss[14 + (i // 80)] = 70_000 + rnd.randint(0, 3) * 1000  # noisy, and its pid changes
        samples = tuple(
            cache.setdefault((pid, 100, v), _sample(pid, 100, v, f"p{pid}")) for pid, v in rss.items()
        )
        stats = {
            10: bcache.setdefault((10, i // 3), BpfStats(10, i // 3, (i // 3) * 2 * MB, 0, 0, 0, 0, i // 3))
        }
        ooms = (OomKill(13, "p13", 0, 600_000, 0, 0, 0, 0, int(t * 1e9)),) if i == 200 else ()
        scan = ProcScan(samples, MEM, T0 - 1000, 100)
        poll = BpfPoll(stats, (), ooms, BpfHealth("active", 1))
        out.append(m.merge(scan, poll, ts=T0 + t, mono=t))
    return out


def _events(eng: AlertEngine, snaps: list[Snapshot]) -> list[tuple[object, ...]]:
    got: list[tuple[object, ...]] = []
    for s in snaps:
        _, due = eng.observe(s)
        for tr in due:
            r = tr.record
            got.append((s.mono, tr.reason, r.rule, r.pid, r.state, r.since, r.value, r.rate, tr.series))
            eng.mark_notified(r, r.state, s.ts)
    return got


def test_engine_on_fresh_records_decides_as_on_every_record() -> None:
    snaps = _engine_snapshots(seed=5)
    assert sum(len(s.fresh or ()) for s in snaps[5:]) < sum(len(s.processes) for s in snaps[5:]) / 4
    lazy = _events(AlertEngine(RULES, [], repeat_interval_s=60.0), snaps)
    # the reference: every record a new object, no change list -> every process looked at every time
    copies = [
        replace(s, processes=tuple(replace(p) for p in s.processes), fresh=None, base_seq=None) for s in snaps
    ]
    eager = _events(AlertEngine(RULES, [], repeat_interval_s=60.0), copies)
    assert {e[1:3] for e in eager} >= {("firing", "growth"), ("resolved", "growth"), ("firing", "high")}
    assert any(e[2] == "oom" for e in eager)
    # the same decisions, values and series; within one snapshot the order may differ
    assert sorted(lazy, key=repr) == sorted(eager, key=repr)


def test_state_of_20000_exited_identities_is_dropped_by_every_component(tmp_path: Path) -> None:
    """Merge, rules (windows, OOM histories) and the store writer hold state for live identities only once
    the short-lived ones are gone (the OOM histories of vanished processes: at most MAX_GONE, 30 s)."""
    from memwatchd.alerts.engine import MAX_GONE, OOM_GRACE_S

    rules = [
        RuleConfig(name="rss-growth", kind="growth", metric="rss", min_rate=MB / 60, window_s=1800.0),
        RuleConfig(name="oom", kind="oom"),
        RuleConfig(name="leak", kind="leak", metric="mapped", min_rate=MB / 60, window_s=600.0),
    ]
    m, eng = Merger(), AlertEngine(rules, [], 3600)
    idle = {pid: _sample(pid, 100, 1000 + pid, f"idle{pid}") for pid in range(1, 101)}
    w: StoreWriter | None = None

    async def run() -> None:
        nonlocal w
        w = await StoreWriter.open(str(tmp_path / "s.db"), StorageConfig(path=str(tmp_path / "s.db")))
        mono, nxt = 0.0, 1000
        for wave in range(40):  # 40 waves of 500 short-lived processes, each seen in two snapshots
            short = {nxt + i: _sample(nxt + i, 500 + wave, 2000, "short") for i in range(500)}
            nxt += 500
            stats = {pid: BpfStats(pid, 1, 4096, 0, 0, 0, 0, 1) for pid in short}
            for _ in range(2):
                mono += 3.0
                scan = ProcScan(tuple(idle.values()) + tuple(short.values()), MEM, T0 - 1000, 100)
                snap = m.merge(
                    scan, BpfPoll(stats, (), (), BpfHealth("active", len(stats))), ts=T0 + mono, mono=mono
                )
                eng.observe(snap)
                await w.write(snap)
        for _ in range(int(OOM_GRACE_S / 3) + 3):  # only the idle ones remain
            mono += 3.0
            snap = m.merge(ProcScan(tuple(idle.values()), MEM, T0 - 1000, 100), None, ts=T0 + mono, mono=mono)
            eng.observe(snap)
            await w.write(snap)
        await w.close()

    asyncio.run(run())
    assert w is not None
    live = len(idle)
    assert len(m._src) == live and m._extra == []  # noqa: SLF001
    assert len(eng._present or {}) == live  # noqa: SLF001
    assert all(len(t) <= live for t in eng._tracks.values())  # noqa: SLF001
    assert len(eng._seen) <= live and len(eng._gone_q) <= MAX_GONE  # noqa: SLF001
    assert len(w._cur.state) == live  # noqa: SLF001


def test_a_failed_batch_leaves_the_writer_as_it_was(tmp_path: Path) -> None:
    """The writer's state moves in place (no per-process copy per snapshot): a transaction that fails after
    planning puts it back, and what is stored afterwards is what a run without the failure stores."""
    snaps = _snapshots(30, seed=5)

    async def run() -> None:
        w = await StoreWriter.open(
            str(tmp_path / "failed.db"), StorageConfig(path=str(tmp_path / "failed.db"))
        )
        try:
            for s in snaps[:10]:
                await w.write(s)
            with pytest.raises(StoreError):  # a status value SQLite cannot bind: the transaction fails late
                await w.write_batch(snaps[10:14], status={"bad": object()})  # type: ignore[dict-item]
            for s in snaps[10:]:
                await w.write(s)
        finally:
            await w.close()

    asyncio.run(run())
    asyncio.run(_write(tmp_path / "clean.db", snaps))
    assert _dump(tmp_path / "failed.db") == _dump(tmp_path / "clean.db")
