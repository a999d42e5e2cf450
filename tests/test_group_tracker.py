"""GroupTracker: groups and host sums from each snapshot's changes equal a full summarize() over every
process, after random sequences of changes, exits, PID reuse and cgroup moves; and a steady cycle over
thousands of unchanged processes costs no per-process work (real procfs collector over a fake /proc tree)."""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from memwatchd.collectors.procfs import ProcfsCollector
from memwatchd.group_tracker import GroupTracker
from memwatchd.groups import charge_paths, summarize
from memwatchd.merge import Merger
from memwatchd.models import (
    BpfHealth,
    BpfPoll,
    BpfStats,
    GroupCharge,
    MemInfo,
    ProcessExit,
    ProcSample,
    ProcScan,
)
from tests.fixtures.fakeproc import FakeProc

MEM = MemInfo(
    mem_total_kb=16_000_000,
    mem_available_kb=8_000_000,
    swap_total_kb=0,
    swap_free_kb=0,
    mem_free_kb=1_000_000,
    buffers_kb=1000,
    cached_kb=2_000_000,
    shmem_kb=5000,
    anon_pages_kb=3_000_000,
    slab_reclaimable_kb=1000,
    slab_unreclaimable_kb=1000,
    kernel_stack_kb=100,
    page_tables_kb=100,
)
T0 = 1_700_000_000.0
PLACES = [
    ("/system.slice/a.service", "a.service"),
    ("/system.slice/a.service/worker", "a.service"),
    ("/system.slice/b.service", "b.service"),
    ("/user.slice/u.scope", "u.scope"),
    ("/odd", None),
    (None, None),
    (None, "c.service"),  # v1 hierarchy that does not name the unit
]


def _placed_sample(pid: int, start: int, rss: int, place: int, state: str = "S") -> ProcSample:
    cgroup, unit = PLACES[place]
    vm = 0 if state == "K" else rss * 4  # "K": a kernel-thread-like entry, no address space
    return ProcSample(pid, start, f"c{pid}", 1, state, rss, vm, rss, rss // 3, rss % 5, unit, cgroup)


def _charges(rnd: random.Random) -> dict[str, GroupCharge]:
    out = {}
    for cg, _ in PLACES:
        if cg and rnd.random() < 0.8:
            cur = rnd.choice([None, rnd.randint(1, 4) * 1024 * 1024])
            lim = rnd.choice([None, 8 * 1024 * 1024])
            out[cg] = GroupCharge(
                cg, cur, lim, cg if lim else None, None if lim is None else lim - (cur or 0)
            )
    out["/system.slice/a.service"] = GroupCharge("/system.slice/a.service", 1 << 20, None, None, None)
    return out


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 2**32), st.integers(2, 25))
def test_incremental_groups_equal_a_full_recompute(seed: int, steps: int) -> None:
    rnd = random.Random(seed)
    m, tracker = Merger(), GroupTracker()
    live: dict[int, ProcSample] = {}
    bstats: dict[int, BpfStats] = {}
    last: dict[int, ProcSample] = {}
    for i in range(steps):
        exits = []
        for pid in list(live):
            s = live[pid]
            r = rnd.random()
            if r < 0.08:
                del live[pid]
                final = bstats.pop(pid, None)
                if final is not None and rnd.random() < 0.7:
                    exits.append(ProcessExit(pid, s.comm, 0, final, i))
            elif r < 0.25:  # grows or shrinks (ties on RSS happen: the largest-member order is by pid then)
                live[pid] = _placed_sample(
                    pid, s.start_ticks, rnd.choice([50, 100, 100, 300]), PLACES.index((s.cgroup, s.unit))
                )
            elif r < 0.32:  # moved to another cgroup/unit
                live[pid] = _placed_sample(pid, s.start_ticks, s.rss_kb, rnd.randrange(len(PLACES)))
            elif r < 0.34:
                live[pid] = _placed_sample(
                    pid, s.start_ticks, s.rss_kb, PLACES.index((s.cgroup, s.unit)), "Z"
                )
            elif r < 0.4:
                old = bstats.get(pid)
                c = (old.mmap_count if old else 0) + 1
                bstats[pid] = BpfStats(pid, c, c * 4096, 0, 0, 0, 0, i)
            elif r < 0.43 and pid in bstats:  # exited after the scan: one row, final counters
                exits.append(ProcessExit(pid, s.comm, 0, bstats[pid], i, start_ticks=s.start_ticks))
        for _ in range(rnd.randint(0, 4)):
            pid = rnd.randint(1, 60)  # new PIDs, and reused ones
            if pid not in live:
                state = "K" if rnd.random() < 0.05 else "S"
                live[pid] = _placed_sample(
                    pid, 1000 + i, rnd.choice([100, 200]), rnd.randrange(len(PLACES)), state
                )
        samples = tuple(live[p] for p in sorted(live))
        chained = i > 0 and rnd.random() > 0.05
        scan = ProcScan(
            samples,
            MEM,
            T0 - 1000,
            100,
            seq=i + 1,
            base_seq=i if chained else None,
            changed=tuple(s for s in samples if last.get(s.pid) is not s) if chained else None,
            gone=tuple(
                s.key for p, s in last.items() if p not in live or live[p].start_ticks != s.start_ticks
            ),
        )
        last = dict(live)
        poll = BpfPoll(dict(bstats), tuple(exits), (), BpfHealth("active", len(bstats)))
        snap = m.merge(scan, poll, ts=T0 + 3 * i, mono=3.0 * i)
        ch = _charges(rnd)
        assert tracker.update(snap, ch) == summarize(snap.processes, ch, snap.meminfo)
        placed = {
            (p.cgroup, p.unit) for p in snap.processes if not p.exited and p.rss_kb is not None and p.vm_kb
        }
        assert tracker.paths() == charge_paths(placed)


# ---- a steady cycle: no per-process work downstream ----------------------------------------------------


def _peak_bytes(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_steady_groups_over_2000_unchanged_processes_allocate_nothing_per_process(tmp_path: Path) -> None:
    """Failed before GroupTracker: summarize() walked every process and built per-group member lists
    (~40 KB at its peak for 2,000 processes in 7 units) every cycle although nothing changed."""
    n = 2000
    fp = FakeProc(tmp_path)
    for pid in range(100, 100 + n):
        fp.add(pid, start=5000 + pid, cgroup=f"0::/system.slice/app{pid % 7}.service\n")
    m, tracker = Merger(), GroupTracker()
    with ProcfsCollector(str(tmp_path), full_rescan_s=3600) as coll:
        for i in range(3):
            snap = m.merge(coll.scan(float(i)), None, ts=T0 + i, mono=float(i))
            tracker.update(snap, {})
        snap = m.merge(coll.scan(3.0), None, ts=T0 + 3, mono=3.0)
    want = summarize(snap.processes, {}, snap.meminfo)
    got: list[object] = []
    peak = _peak_bytes(lambda: got.append(tracker.update(snap, {})))
    assert got[0] == want and len(want[0]) == 14
    assert peak < 2 * n, f"steady group sums allocated {peak} bytes at their peak for {n} processes"
