"""Rule windows on a shared axis (alerts/axis.py): the points of a Window, in a fraction of the memory."""

from __future__ import annotations

import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from memwatchd.alerts.axis import Axis, Series
from memwatchd.alerts.engine import AlertEngine
from memwatchd.alerts.fit import Window
from memwatchd.config import RuleConfig
from memwatchd.models import BpfHealth, MemInfo, ProcessSnapshot, Snapshot
from tests.factories import process_snapshot

MEM = MemInfo(mem_total_kb=1 << 24, mem_available_kb=1 << 23, swap_total_kb=0, swap_free_kb=0)
T0 = 1_700_000_000.0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0.1, 20.0), st.booleans(), st.booleans()), min_size=1, max_size=300),
    st.floats(10.0, 600.0),
    st.booleans(),
)
def test_series_on_an_axis_has_the_points_of_a_window_fed_every_sample(
    steps: list[tuple[float, bool, bool]], window_s: float, counter: bool
) -> None:
    """A process seen from the first snapshot, shown only some snapshots (always when its value changed):
    its series has exactly the points a Window fed every snapshot keeps."""
    axis, series = Axis(window_s), Series(with_counter=counter)
    eager = Window(window_s, with_counter=counter, compact=True)
    t, value = 0.0, 1e6
    for i, (gap, changes, shown) in enumerate(steps):
        t += gap
        if changes:
            value += 4096.0 * (i % 7 + 1)
        axis.advance(t)
        c = value / 2 if counter else None
        eager_new = eager.add(t, value, c)
        if changes or shown or i == 0:
            assert series.add(axis, value, c) == eager_new
        w = series.view(axis) if (changes or shown or i == 0) else None
        if w is not None:
            assert list(w.t) == list(eager.t)
            assert list(w.v) == list(eager.v)
            assert (w.c is None) == (eager.c is None)
            if w.c is not None and eager.c is not None:
                assert list(w.c) == list(eager.c)
    series.catch_up(axis, axis.last)
    w = series.view(axis)
    assert list(w.t) == list(eager.t) and list(w.v) == list(eager.v)


def test_a_missing_value_leaves_a_gap_and_the_series_goes_on() -> None:
    axis, series = Axis(100.0), Series(with_counter=False)
    for k in range(10):
        axis.advance(float(k * 10))
        if not 3 <= k <= 5:
            series.add(axis, 1000.0 + k, None)
        elif k == 3:
            series.stop_carry()
    w = series.view(axis)
    assert list(w.t) == [0.0, 10.0, 20.0, 60.0, 70.0, 80.0, 90.0]
    assert list(w.v) == [1000.0, 1001.0, 1002.0, 1006.0, 1007.0, 1008.0, 1009.0]


def test_an_idle_series_keeps_one_value_whatever_its_length() -> None:
    axis, series = Axis(1800.0), Series(with_counter=False)
    for k in range(1000):
        axis.advance(3.0 * k)
        if k in (0, 999):
            series.add(axis, 5e6, None)
    assert series.vals is None and len(series) == len(series.view(axis)) >= 60


def _snap(seq: int, mono: float, procs: tuple[ProcessSnapshot, ...]) -> Snapshot:
    return Snapshot(ts=T0 + mono, mono=mono, processes=procs, meminfo=MEM, bpf=BpfHealth("off"), seq=seq)


def _engine_bytes_per_process(n: int, changing: bool) -> float:
    """Traced bytes the engine holds per process once every window is full (60 points: the shipped rss-growth
    rule, here over 5 minutes at 1 s), every process changing every snapshot (the worst case) or idle."""
    rules = [
        RuleConfig(name="rss-growth", kind="growth", metric="rss", min_rate=50e6 / 3600, window_s=300.0),
        RuleConfig(name="oom-kill", kind="oom"),
    ]
    eng = AlertEngine(rules, [], 3600.0)
    comm = "worker"
    procs: tuple[ProcessSnapshot, ...] = ()
    batch = 0
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k in range(320):  # every window is full
            if changing or k in (0, 319):
                procs = ()
                m0 = tracemalloc.get_traced_memory()[0]
                procs = tuple(
                    process_snapshot(
                        pid=1000 + i, start_ticks=7, rss_kb=10_000 + i + k % 5 * changing, comm=comm
                    )
                    for i in range(n)
                )
                batch = tracemalloc.get_traced_memory()[0] - m0
            eng.observe(_snap(k, 1.0 * k, procs))
        held = tracemalloc.get_traced_memory()[0] - before - batch  # not the records this test made
    finally:
        tracemalloc.stop()
    assert sum(len(t) for t in eng._tracks.values()) == n  # noqa: SLF001 - every process has a full window
    return held / n


def test_a_full_window_costs_a_fraction_of_a_window_object_per_process() -> None:
    # the whole engine per process (track, window, its entry in the present map); before, with a Window per
    # track (60 float64 times and float32 values, thinned per process): 1,473 B changing, 1,272 B idle
    assert _engine_bytes_per_process(500, changing=True) < 1000  # now ~840 B: 60 float32 values remain
    assert _engine_bytes_per_process(500, changing=False) < 400  # now ~290 B: one value for the window
