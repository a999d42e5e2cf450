"""Work proportional to change: the /proc scan's change set (ProcScan.changed/gone), the Merger driven by it,
and a steady cycle over thousands of unchanged processes that allocates nothing per process.

Real collectors over real /proc and fake /proc trees; the Merger fed change sets is checked against the
stateless merge() over random sequences of changes, exits and PID reuse.
"""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from memwatchd.collectors.procfs import ProcfsCollector
from memwatchd.merge import Merger, merge
from memwatchd.models import (
    BpfHealth,
    BpfPoll,
    BpfStats,
    MemInfo,
    ProcessExit,
    ProcessSnapshot,
    ProcKey,
    ProcSample,
    ProcScan,
    Snapshot,
)
from tests.fixtures.fakeproc import FakeProc

MEM = MemInfo(mem_total_kb=1000, mem_available_kb=500, swap_total_kb=0, swap_free_kb=0)
T0 = 1_700_000_000.0


# ---- the collector's change set ---------------------------------------------------------------------------


def _keys(scan: ProcScan) -> set[tuple[int, int]]:
    return {(s.pid, s.start_ticks) for s in scan.changed or ()}


def test_fake_tree_scan_names_what_changed_and_what_left(tmp_path: Path) -> None:
    fp = FakeProc(tmp_path)
    for pid in (10, 11, 12, 13):
        fp.add(pid, start=1000 + pid)
    with ProcfsCollector(str(tmp_path), full_rescan_s=3600) as coll:
        a = coll.scan(0.0)
        assert a.changed is None and a.base_seq is None  # a first scan: no base to compare with
        b = coll.scan(1.0)
        assert (b.base_seq, b.changed, b.gone) == (a.seq, (), ())
        assert all(x is y for x, y in zip(a.samples, b.samples, strict=True))
        fp.add(11, start=1011, rss_pages=999)  # grew
        fp.remove(12)  # exited
        fp.add(13, b"reused", start=5000)  # PID reused by another process
        fp.add(14, start=1014)  # new
        c = coll.scan(2.0)
        assert c.base_seq == b.seq
        assert _keys(c) == {(11, 1011), (13, 5000), (14, 1014)}
        assert set(c.gone) == {ProcKey(12, 1012), ProcKey(13, 1013)}
        changed_ids = {id(s) for s in c.changed or ()}
        old_ids = {id(s) for s in b.samples}
        assert all(id(s) in changed_ids or id(s) in old_ids for s in c.samples)


def test_real_processes_scan_change_set() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        # started and blocked in its read: its memory no longer moves (a child still starting changed between
        # two scans on a loaded host)
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        with ProcfsCollector(full_rescan_s=3600) as coll:
            coll.scan(0.0)
            a = coll.scan(0.1)
            b = coll.scan(0.2)
            mine = [s for s in b.samples if s.pid == child.pid]
            assert len(mine) == 1
            key = mine[0].key
            assert b.changed is not None and b.base_seq == a.seq
            c = coll.scan(0.3)
            assert child.pid not in {s.pid for s in c.changed or ()}  # idle: the same object, not named
            child.stdin.close()  # type: ignore[union-attr]
            child.wait(10)
            d = coll.scan(0.4)
            assert key in d.gone and child.pid not in {s.pid for s in d.samples}
    finally:
        child.kill()
        child.wait()


# ---- the Merger on change sets matches merge() -----------------------------------------------------------


def _values(p: ProcessSnapshot) -> tuple[object, ...]:
    return tuple(getattr(p, f.name) for f in fields(p) if f.name != "dt_s")


def _sample(pid: int, start: int, rss: int) -> ProcSample:
    return ProcSample(
        pid, start, "app", 1, "S", rss, rss * 4, rss, rss // 2, 0, "a.service", "/a", None, None
    )


def _stats(tgid: int, n: int) -> BpfStats:
    return BpfStats(tgid, n, n * 4096, 0, 0, 1, 8192, 1, mapped_bytes=n * 4096)


class _Scanner:
    """Hands out ProcScans the way the real collector does: same objects when unchanged, and change sets."""

    def __init__(self) -> None:
        self.seq = 0
        self.last: dict[int, ProcSample] = {}

    def scan(self, samples: tuple[ProcSample, ...], chained: bool = True) -> ProcScan:
        self.seq += 1
        now = {s.pid: s for s in samples}
        changed = tuple(s for s in samples if self.last.get(s.pid) is not s)
        gone = tuple(
            s.key for pid, s in self.last.items() if pid not in now or now[pid].start_ticks != s.start_ticks
        )
        first = self.seq == 1 or not chained
        self.last = now
        return ProcScan(
            samples,
            MEM,
            T0 - 1000,
            100,
            seq=self.seq,
            base_seq=None if first else self.seq - 1,
            changed=None if first else changed,
            gone=() if first else gone,
        )


class _Poller:
    """Hands out BpfPolls the way the real collector does: same objects when unchanged, and change sets."""

    def __init__(self) -> None:
        self.seq = 0
        self.last: dict[int, BpfStats] = {}

    def poll(self, stats: dict[int, BpfStats], exits: tuple[ProcessExit, ...], chained: bool) -> BpfPoll:
        self.seq += 1
        changed = tuple(t for t, s in stats.items() if self.last.get(t) is not s)
        self.last = stats
        first = self.seq == 1 or not chained
        return BpfPoll(
            stats,
            exits,
            (),
            BpfHealth("active", len(stats)),
            seq=self.seq,
            base_seq=None if first else self.seq - 1,
            changed=None if first else changed,
        )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.tuples(st.integers(1, 8), st.integers(1, 2), st.integers(0, 2)), max_size=8),
            st.lists(st.integers(1, 8), max_size=3),  # exits this step
            st.booleans(),  # BPF on this step
            st.lists(st.tuples(st.integers(1, 8), st.integers(0, 2)), max_size=8),  # BPF entries (pid, count)
            st.integers(0, 9),  # 0: the scan lost its chain (no change set); 1: the BPF poll did
        ),
        min_size=1,
        max_size=10,
    )
)
def test_merger_on_change_sets_matches_merge(
    steps: list[tuple[list[tuple[int, int, int]], list[int], bool, list[tuple[int, int]], int]],
) -> None:
    """Same records as the stateless merge() (dt_s aside, order aside); every record is fresh or the previous
    snapshot's very object, and prev - gone + fresh == this snapshot."""
    m = Merger()
    sc, bp = _Scanner(), _Poller()
    want_prev: Snapshot | None = None
    got_prev: Snapshot | None = None
    cache: dict[tuple[int, int, int], ProcSample] = {}
    bcache: dict[tuple[int, int], BpfStats] = {}
    for i, (step, exit_pids, bpf_on, entries, chain) in enumerate(steps):
        by_pid = {pid: (start, size) for pid, start, size in step}
        samples = tuple(
            cache.setdefault((pid, s0, sz), _sample(pid, s0, 1000 + sz))
            for pid, (s0, sz) in sorted(by_pid.items())
        )
        # BPF entries move independently of /proc: entries of processes /proc does not show, entries gone
        # without an exit event (the GC), counters that move while the sizes do not
        bstats = {pid: bcache.setdefault((pid, n), _stats(pid, n + 1)) for pid, n in entries}
        ex = tuple(
            ProcessExit(pid, "app", 0, bcache.setdefault((pid, 9), _stats(pid, 9)), 1) for pid in exit_pids
        )
        poll = bp.poll(bstats, ex, chained=chain != 1) if bpf_on else None
        scan = sc.scan(samples, chained=chain != 0)
        mono = 3.0 * (i + 1)
        want = merge(scan, poll, want_prev, ts=mono, mono=mono)
        got = m.merge(scan, poll, ts=mono, mono=mono)
        assert sorted(map(_values, got.processes), key=repr) == sorted(map(_values, want.processes), key=repr)
        if got_prev is not None:
            fresh_ids = {id(p) for p in got.fresh or ()}
            old_ids = {id(p) for p in got_prev.processes}
            assert all(id(p) in fresh_ids or id(p) in old_ids for p in got.processes)
            assert all(id(p) not in old_ids for p in got.fresh or ())
            before = {(p.pid, p.start_ticks) for p in got_prev.processes}
            assert set(got.gone) == before - {(p.pid, p.start_ticks) for p in got.processes}
        want_prev, got_prev = want, got


# ---- a steady cycle allocates nothing per process ----------------------------------------------------

N_STEADY = 2000


def _peak_bytes(fn: Callable[[], object]) -> int:
    """Peak memory allocated (beyond what was live before) while fn runs, by tracemalloc."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def _steady_tree(root: Path, n: int) -> FakeProc:
    fp = FakeProc(root)
    for pid in range(100, 100 + n):
        fp.add(pid, start=5000 + pid, cgroup=f"0::/system.slice/app{pid % 7}.service\n")
    return fp


def test_steady_merge_over_2000_unchanged_processes_allocates_nothing_per_process(tmp_path: Path) -> None:
    """Failed before the change sets: the Merger rebuilt its pid map and record list every cycle (~100 KB for
    2,000 processes) although no process changed."""
    _steady_tree(tmp_path, N_STEADY)
    m = Merger()
    with ProcfsCollector(str(tmp_path), full_rescan_s=3600) as coll:
        for i in range(3):  # first sighting, then deltas settle to 0
            m.merge(coll.scan(float(i)), None, ts=T0 + i, mono=float(i))
        scan = coll.scan(3.0)
        prev = m.prev
        assert prev is not None and len(prev.processes) == N_STEADY
        holder: list[Snapshot] = []
        peak = _peak_bytes(lambda: holder.append(m.merge(scan, None, ts=T0 + 3, mono=3.0)))
    snap = holder[0]
    assert len(snap.processes) == N_STEADY and snap.fresh == () and snap.gone == ()
    assert peak < 4 * N_STEADY, f"a steady merge allocated {peak} bytes at its peak for {N_STEADY} processes"


def test_one_change_among_2000_costs_one_record(tmp_path: Path) -> None:
    fp = _steady_tree(tmp_path, N_STEADY)
    m = Merger()
    with ProcfsCollector(str(tmp_path), full_rescan_s=3600) as coll:
        for i in range(3):
            m.merge(coll.scan(float(i)), None, ts=T0 + i, mono=float(i))
        before = m.prev
        assert before is not None
        fp.add(150, start=5150, rss_pages=999, cgroup="0::/system.slice/app3.service\n")
        snap = m.merge(coll.scan(3.0), None, ts=T0 + 3, mono=3.0)
    assert [(p.pid, p.rss_kb) for p in snap.fresh or ()] == [(150, 999 * 4)]
    old = {p.pid: p for p in before.processes}
    assert sum(1 for p in snap.processes if p is not old[p.pid]) == 1


def test_a_bpf_entry_dropped_without_an_exit_is_seen_with_poll_change_sets() -> None:
    """An entry the GC deletes (no exit event) is listed nowhere in the poll's change set: the Merger sees it
    from the map's size, for a process /proc still shows and for one only BPF saw."""
    m, sc, bp = Merger(), _Scanner(), _Poller()
    s5, b5, b6 = _sample(5, 100, 1000), _stats(5, 2), _stats(6, 3)
    for i in range(4):  # quiet: the same objects every time
        snap = m.merge(sc.scan((s5,)), bp.poll({5: b5, 6: b6}, (), True), ts=T0 + i, mono=float(i))
    assert {p.pid: p.mmap_count for p in snap.processes} == {5: 2, 6: 3} and snap.fresh == ()
    snap = m.merge(sc.scan((s5,)), bp.poll({}, (), True), ts=T0 + 4, mono=4.0)
    assert [(p.pid, p.mmap_count) for p in snap.processes] == [(5, None)]
    assert snap.gone == ((6, 0),)
