"""The Prometheus aggregation from each snapshot's changes equals the one over every process, after random
changes, exits and PID reuse (with and without eBPF counters); a steady cycle over thousands of unchanged
processes allocates nothing per process (real procfs collector over a fake /proc tree)."""

from __future__ import annotations

import random
import tracemalloc
from dataclasses import replace
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from memwatchd.collectors.procfs import ProcfsCollector
from memwatchd.config import PrometheusConfig
from memwatchd.daemon.metrics import _Aggregator
from memwatchd.daemon.status import DaemonStatus
from memwatchd.merge import Merger
from memwatchd.models import BpfHealth, BpfPoll, BpfStats, MemInfo, ProcessExit, ProcSample, ProcScan
from tests.fixtures.fakeproc import FakeProc

MEM = MemInfo(mem_total_kb=1000, mem_available_kb=500, swap_total_kb=0, swap_free_kb=0)
T0 = 1_700_000_000.0
UNITS = [None, None, "a.service", "b.service", "c.service"]


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32), st.integers(2, 20), st.integers(6, 40))
def test_incremental_metrics_equal_the_full_aggregation(seed: int, steps: int, max_series: int) -> None:
    rnd = random.Random(seed)
    cfg = PrometheusConfig(listen="127.0.0.1:0", top_k=3, max_series=max_series)
    inc, full = _Aggregator(cfg), _Aggregator(cfg)
    m = Merger()
    live: dict[int, ProcSample] = {}
    bstats: dict[int, BpfStats] = {}
    last: dict[int, ProcSample] = {}
    for i in range(steps):
        exits = []
        for pid in list(live):
            s = live[pid]
            r = rnd.random()
            if r < 0.1:
                del live[pid]
                final = bstats.pop(pid, None)
                if final is not None:
                    exits.append(ProcessExit(pid, s.comm, 0, final, i))
            elif r < 0.3:
                live[pid] = replace(s, rss_kb=rnd.randint(10, 500), comm=rnd.choice([s.comm, "x", "y"]))
            elif r < 0.45:
                old = bstats.get(pid)
                c = (old.mmap_count if old else 0) + rnd.randint(1, 3)
                bstats[pid] = BpfStats(pid, c, c * 4096, c, c * 100, 1, c * 8, i)
        for _ in range(rnd.randint(0, 4)):
            pid = rnd.randint(1, 50)
            if pid not in live:
                rss = rnd.randint(10, 500)
                live[pid] = ProcSample(
                    pid,
                    100 + i,
                    f"p{pid % 6}",
                    1,
                    "S",
                    rss,
                    rss * 4,
                    rss,
                    rss // 2,
                    1,
                    rnd.choice(UNITS),
                    None,
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
        poll = BpfPoll(dict(bstats), tuple(exits), (), BpfHealth("active", len(bstats))) if seed % 3 else None
        snap = m.merge(scan, poll, ts=T0 + 3 * i, mono=3.0 * i)
        status = DaemonStatus(processes=len(snap.processes), scan_ms=1.0)
        inc.update(snap, status)
        full.update(replace(snap, fresh=None), status)
        assert inc.state == full.state
        assert inc.state is not None and full.state is not None and inc.state.top() == full.state.top()


def test_steady_metrics_update_over_2000_unchanged_processes_allocates_nothing_per_process(
    tmp_path: Path,
) -> None:
    """Failed before: update() walked every process, building a list of the live ones and picking the top K
    every cycle (~20 KB at its peak for 2,000 processes) although nothing changed; the top K is now picked
    when a scrape asks."""
    n = 2000
    fp = FakeProc(tmp_path)
    for pid in range(100, 100 + n):
        fp.add(pid, start=5000 + pid, cgroup=f"0::/system.slice/app{pid % 7}.service\n")
    m, agg = Merger(), _Aggregator(PrometheusConfig(listen="127.0.0.1:0"))
    with ProcfsCollector(str(tmp_path), full_rescan_s=3600) as coll:
        for i in range(3):
            agg.update(m.merge(coll.scan(float(i)), None, ts=T0 + i, mono=float(i)), DaemonStatus())
        snap = m.merge(coll.scan(3.0), None, ts=T0 + 3, mono=3.0)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        agg.update(snap, DaemonStatus())
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert agg.state is not None and agg.state.gauges["memwatchd_processes"] == n
    assert [t.rank for t in agg.state.top()] == list(range(1, 21))
    assert peak < 2 * n, f"a steady metrics update allocated {peak} bytes at its peak for {n} processes"
