"""Per-process containers are sized for the processes there are, not for the most there ever were.

A dict or set never shrinks when entries leave: after a burst of 5,000 short-lived processes each
component's per-process table stays sized for the burst (~0.3 MB to 1 MB each, ~2.5 MB in all, measured
with jemalloc's stats.allocated after 20,000 short-lived processes). shrink() (called by the daemon when a
burst of exits settled, daemon/heap.py TrimPolicy) rebuilds them for their entries. Real components, real
SQLite. Failed before: there was no shrink() (AttributeError), and the tables kept their burst size.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from memwatchd.alerts.engine import AlertEngine
from memwatchd.alerts.scopes import is_scoped
from memwatchd.collectors.procfs import ProcfsCollector
from memwatchd.collectors.taskscan import TaskScanCollector
from memwatchd.config import StorageConfig, load_config
from memwatchd.group_tracker import GroupTracker
from memwatchd.merge import Merger
from memwatchd.store.writer import StoreWriter
from tests.bpf_support import load_collector
from tests.fixtures.fakeproc import FakeProc
from tests.test_merge import sample, scan

REPO = Path(__file__).resolve().parent.parent
STAY, BURST = 200, 5000


def _tables(obj: Any) -> list[dict[Any, Any] | set[Any]]:
    """The dicts and sets an object holds directly, and those inside dicts of dicts (per-rule tables)."""
    out: list[dict[Any, Any] | set[Any]] = []
    names = [n for c in type(obj).__mro__ for n in getattr(c, "__slots__", ())] + list(
        vars(obj) if hasattr(obj, "__dict__") else ()
    )
    for n in names:
        v = getattr(obj, n, None)
        if isinstance(v, (dict, set)):
            out.append(v)
            if isinstance(v, dict):
                out += [x for x in v.values() if isinstance(x, (dict, set))]
    return out


def _bytes(obj: Any) -> int:
    return sum(sys.getsizeof(t) for t in _tables(obj))


def _fresh_bytes(obj: Any) -> int:
    """What the same entries take in tables built for them."""
    return sum(sys.getsizeof(dict(t) if isinstance(t, dict) else set(t)) for t in _tables(obj))


def _snapshots(m: Merger) -> list[Any]:
    """Three chained scans, as the collectors report them (change sets): STAY processes, then a burst of
    BURST more, then the burst gone."""
    stay = tuple(sample(p) for p in range(100, 100 + STAY))
    burst = tuple(sample(p, rss=2000 + p % 7) for p in range(10_000, 10_000 + BURST))
    scans = [
        dataclasses.replace(scan(*stay), seq=1),
        dataclasses.replace(scan(*stay, *burst), seq=2, base_seq=1, changed=burst),
        dataclasses.replace(scan(*stay), seq=3, base_seq=2, changed=(), gone=tuple(b.key for b in burst)),
    ]
    return [m.merge(sc, None, ts=1000.0 + 3 * i, mono=1.0 + 3 * i) for i, sc in enumerate(scans)]


def test_merger_group_tracker_and_alert_engine_tables_shrink_after_a_burst() -> None:
    rules = load_config(REPO / "etc" / "memwatchd.toml").rules
    m, tracker, engine = Merger(), GroupTracker(), AlertEngine([r for r in rules if not is_scoped(r)], [], 0)
    for snap in _snapshots(m):
        tracker.update(snap, {})
        engine.observe(snap)
    for part in (m, tracker, engine):
        before = _bytes(part)
        assert before > _fresh_bytes(part) + 100_000, (
            f"{type(part).__name__}: the burst left nothing to shrink"
        )
        part.shrink()
        assert _bytes(part) == _fresh_bytes(part), type(part).__name__
        assert _bytes(part) < before / 4, type(part).__name__
    # and they go on working: the same answers as components that never saw the burst
    m2, tracker2 = Merger(), GroupTracker()
    stay = scan(*[sample(p) for p in range(100, 100 + STAY)])  # a scan without change sets: a full look
    a = m.merge(stay, None, ts=1009.0, mono=10.0)
    b = m2.merge(stay, None, ts=1009.0, mono=10.0)
    assert {p.key for p in a.processes} == {p.key for p in b.processes}
    assert tracker.update(a, {})[0] == tracker2.update(b, {})[0]
    engine.observe(a)


def test_store_writer_state_shrinks_after_a_burst(tmp_path: Path) -> None:
    async def go() -> None:
        path = tmp_path / "m.db"
        w = await StoreWriter.open(str(path), StorageConfig(path=str(path)))
        try:
            for snap in _snapshots(Merger()):
                await w.write(snap)
            before = _bytes(w._cur)
            assert before > _fresh_bytes(w._cur) + 100_000
            w.shrink()
            assert _bytes(w._cur) == before  # not in the middle of anything: at the next write
            stay = scan(*[sample(p) for p in range(100, 100 + STAY)])
            m = Merger()
            m.merge(stay, None, ts=1009.0, mono=10.0)
            await w.write(m.merge(stay, None, ts=1012.0, mono=13.0))
            assert _bytes(w._cur) == _fresh_bytes(w._cur) and _bytes(w._cur) < before / 4
            assert len(w._cur.state) == STAY
        finally:
            await w.close()

    asyncio.run(go())


def test_proc_collector_cache_is_sized_for_its_processes_after_a_burst(tmp_path: Path) -> None:
    fp = FakeProc(tmp_path)
    for pid in range(100, 100 + STAY + BURST):
        fp.add(pid)
    with ProcfsCollector(str(tmp_path)) as coll:
        coll.scan(0.0)
        for pid in range(100 + STAY, 100 + STAY + BURST):
            shutil.rmtree(tmp_path / str(pid))
        assert len(coll.scan(3.0).samples) == STAY
        # every scan builds its cache afresh: sized for the processes there are without a shrink()
        assert _bytes(coll) == _fresh_bytes(coll)
        coll.shrink()
        assert len(coll.scan(6.0).samples) == STAY


@pytest.mark.bpf
def test_task_scan_cache_shrinks_after_a_burst() -> None:
    c = load_collector()
    try:
        assert c.task_iter is not None
        with TaskScanCollector(c.task_iter) as s:
            s.scan(0.0)
            burst = subprocess.Popen(["sh", "-c", "for i in $(seq 3000); do sleep 2 & done; wait"])
            time.sleep(1.5)
            s.scan(1.0)
            burst.wait()
            deadline = time.monotonic() + 10
            while len(s.live_pids) > 2000 and time.monotonic() < deadline:
                s.scan(2.0)
                time.sleep(0.1)
            before = _bytes(s)
            assert before > _fresh_bytes(s) + 50_000
            s.shrink()
            assert _bytes(s) == _fresh_bytes(s) and _bytes(s) < before - 50_000
            assert {x.pid for x in s.scan(3.0).samples} == s.live_pids
    finally:
        c.close()
