"""Window.add_run: catching a window up lazily gives the very points add() would have kept."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from memwatchd.alerts.fit import Window


@given(
    st.lists(st.floats(0.1, 20.0), min_size=1, max_size=200),
    st.integers(0, 30),
    st.floats(10.0, 600.0),
    st.booleans(),
)
def test_add_run_equals_repeated_add(gaps: list[float], head: int, window_s: float, counter: bool) -> None:
    times, t = [], 0.0
    for g in gaps:
        t += g
        times.append(t)
    head = min(head, len(times))
    eager = Window(window_s, with_counter=counter, compact=True)
    lazy = Window(window_s, with_counter=counter, compact=True)
    for i, x in enumerate(times[:head]):  # a changing value first
        eager.add(x, float(i), float(i) if counter else None)
        lazy.add(x, float(i), float(i) if counter else None)
    for x in times[head:]:
        eager.add(x, 7.0, 3.0 if counter else None)
    lazy.add_run(times, head, len(times), 7.0, 3.0 if counter else None)
    assert list(lazy.t) == list(eager.t)
    assert list(lazy.v) == list(eager.v)
    assert (lazy.c is None) == (eager.c is None)
    if lazy.c is not None and eager.c is not None:
        assert list(lazy.c) == list(eager.c)
