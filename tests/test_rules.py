"""Pure rule functions: windows, robust growth fits, hysteresis, thresholds, forecasts (property tests)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memwatchd.alerts.fit import (
    MAX_POINTS,
    Window,
    could_grow,
    fit,
    forecast_s,
    growth_cleared,
    growth_holds,
    growth_stopped_recently,
    growth_verdict,
    metric_value,
    resident_corroborates,
    resident_value,
    slice_medians,
    threshold_cleared,
    threshold_fired,
    window_ready,
)
from memwatchd.models import MemInfo, ProcessSnapshot
from tests.factories import process_snapshot

W = 600.0  # window, seconds
MIN_RATE = 1024 * 1024 / 60  # 1MB/min
BASE = 200e6


def proc(**kw: object) -> ProcessSnapshot:
    return process_snapshot(**{"rss_kb": 1000, "anon_kb": 800, "vm_kb": 5000, **kw})


def first_fire(
    values: list[tuple[float, float]], min_rate: float = MIN_RATE, window: float = W
) -> float | None:
    """Feed (mono, value) points through a Window; the time of the first positive verdict, if any."""
    w = Window(window)
    for t, v in values:
        w.add(t, v)
        if window_ready(w) and could_grow(w, min_rate):
            f = fit(w.t, w.v)
            assert f is not None
            if growth_verdict(f, min_rate):
                return t
        elif window_ready(w):
            f = fit(w.t, w.v)
            assert f is not None and not growth_verdict(f, min_rate), (
                "could_grow must be implied by the verdict"
            )
    return None


def times(n: int, dt: float, rnd: random.Random, jitter: float = 0.2) -> list[float]:
    out, t = [], 1000.0
    for _ in range(n):
        out.append(t)
        t += dt * (1 + rnd.uniform(-jitter, jitter))
    return out


samples = st.integers(min_value=12, max_value=150)  # samples per window


@given(samples, st.floats(1.05, 200.0), st.floats(0.0, 0.04), st.integers(0, 2**32))
@settings(max_examples=150, deadline=None)
def test_linear_growth_fires_within_one_window(n: int, factor: float, noise: float, seed: int) -> None:
    rnd = random.Random(seed)
    rate = factor * MIN_RATE
    amp = noise * rate * W
    dt = W / n
    ts = times(3 * n, dt, rnd, jitter=0.0)
    pts = [(t, BASE + rate * (t - ts[0]) + rnd.uniform(-amp, amp)) for t in ts]
    fired = first_fire(pts)
    assert fired is not None
    assert 0.8 * W - 1e-6 <= fired - ts[0] <= W + dt  # needs a mostly filled window, no more than a full one


@given(samples, st.floats(0.0, 0.15), st.integers(0, 2**32))
@settings(max_examples=150, deadline=None)
def test_flat_with_bounded_noise_never_fires(n: int, noise: float, seed: int) -> None:
    # noise (peak to peak) smaller than the growth asked for over a window can never look like growth
    rnd = random.Random(seed)
    amp = noise * MIN_RATE * W
    pts = [(t, BASE + rnd.uniform(-amp, amp)) for t in times(3 * n, W / n, rnd)]
    assert first_fire(pts) is None


@given(st.integers(20, 150), st.floats(0.01, 100.0), st.integers(0, 2**32))
@settings(max_examples=100, deadline=None)
def test_random_noise_of_any_size_does_not_fire(n: int, sigma: float, seed: int) -> None:
    rnd = random.Random(seed)
    s = sigma * MIN_RATE * W
    pts = [(t, BASE + rnd.gauss(0, s)) for t in times(3 * n, W / n, rnd)]
    assert first_fire(pts) is None


@given(
    st.integers(20, 150),
    st.floats(1 / 6, 0.5),
    st.floats(0.1, 500.0),
    st.floats(0.0, 1.0),
    st.floats(0.0, 0.05),
    st.integers(0, 2**32),
)
@settings(max_examples=150, deadline=None)
def test_sawtooth_does_not_fire(
    n: int, period: float, amp: float, phase: float, noise: float, seed: int
) -> None:
    # a garbage collector or a cache that fills and empties: teeth of up to half a window never fire
    rnd = random.Random(seed)
    p, a = period * W, amp * MIN_RATE * W
    pts = [
        (t, BASE + a * (((t + phase * p) % p) / p) + rnd.uniform(-noise, noise) * a)
        for t in times(3 * n, W / n, rnd, jitter=0.1)
    ]
    assert first_fire(pts) is None


@given(
    st.integers(20, 150),
    st.floats(0.1, 2000.0),
    st.floats(0.0, 3.0),
    st.floats(0.0, 0.1),
    st.integers(0, 2**32),
)
@settings(max_examples=150, deadline=None)
def test_one_off_jump_does_not_fire(n: int, jump: float, at: float, noise: float, seed: int) -> None:
    rnd = random.Random(seed)
    j, amp = jump * MIN_RATE * W, noise * MIN_RATE * W
    ts = times(4 * n, W / n, rnd)
    pts = [(t, BASE + (j if t - ts[0] >= at * W else 0.0) + rnd.uniform(-amp, amp)) for t in ts]
    assert first_fire(pts) is None


@given(st.integers(20, 150), st.floats(0.1, 2000.0), st.floats(0.0, 2.0), st.integers(0, 2**32))
@settings(max_examples=80, deadline=None)
def test_two_jumps_do_not_fire(n: int, jump: float, at: float, seed: int) -> None:
    rnd = random.Random(seed)
    j = jump * MIN_RATE * W
    ts = times(4 * n, W / n, rnd)
    t1, t2 = ts[0] + at * W, ts[0] + at * W + rnd.uniform(0.1, 0.9) * W
    pts = [(t, BASE + j * ((t >= t1) + (t >= t2))) for t in ts]
    assert first_fire(pts) is None


def test_staircase_of_many_steps_fires() -> None:
    # a leak that grabs 64MB every 30 s is growth, even though each step is a jump
    pts = [(float(t), BASE + 64e6 * (t // 30)) for t in range(0, 1200, 3)]
    assert first_fire(pts) is not None


def test_slow_growth_under_the_rate_does_not_fire() -> None:
    pts = [(float(t), BASE + 0.9 * MIN_RATE * t) for t in range(0, 3000, 3)]
    assert first_fire(pts) is None


def test_shrinking_does_not_fire() -> None:
    pts = [(float(t), BASE - 10 * MIN_RATE * t) for t in range(0, 3000, 3)]
    assert first_fire(pts) is None


@given(st.floats(0.1, 20.0), st.integers(0, 2**32))
@settings(max_examples=60, deadline=None)
def test_window_is_bounded_and_keeps_the_newest_sample(dt: float, seed: int) -> None:
    rnd = random.Random(seed)
    w = Window(W)
    t = 0.0
    for _ in range(2000):
        t += dt * rnd.uniform(0.5, 1.5)
        v = rnd.uniform(0, 1e9)
        w.add(t, v)
        assert w.t[-1] == t and w.v[-1] == v  # the current value is never stale
        assert len(w) <= MAX_POINTS + 2
        assert w.t[0] >= t - W
        assert all(b > a for a, b in zip(w.t, w.t[1:], strict=False))


def test_window_time_going_back_resets() -> None:
    w = Window(60.0)
    for t in range(10):
        w.add(100.0 + t, 1.0)
    w.add(50.0, 2.0)
    assert list(w.t) == [50.0] and list(w.v) == [2.0]


def test_window_ready_needs_mostly_filled_window() -> None:
    w = Window(100.0)
    for t in range(0, 79):
        w.add(float(t), 1.0)
    assert not window_ready(w)
    w.add(80.0, 1.0)
    assert window_ready(w)


def test_fit_exact_line() -> None:
    f = fit([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], [1e9, 1e9 + 5, 1e9 + 10, 1e9 + 15, 1e9 + 20, 1e9 + 25])
    assert f is not None
    assert f.slope == pytest.approx(5.0)
    assert f.r2 == pytest.approx(1.0)
    assert f.nonfalling == f.steps == 5
    assert f.rise == pytest.approx(25.0)


def test_fit_degenerate() -> None:
    assert fit([1.0], [1.0]) is None
    assert fit([1.0, 1.0], [1.0, 2.0]) is None
    f = fit([0.0, 1.0, 2.0], [5.0, 5.0, 5.0])
    assert f is not None and f.slope == 0 and f.r2 == 0


def test_slice_medians_use_real_samples() -> None:
    # lower medians: a jump inside one slice is never split into two half steps
    med = slice_medians([0.0, 1.0, 2.0, 3.0], [0.0, 0.0, 10.0, 10.0], slices=1)
    assert med == [0.0]


def test_hysteresis_clear_needs_half_the_rate() -> None:
    grow = fit([float(t) for t in range(10)], [MIN_RATE * 0.6 * t for t in range(10)])
    stop = fit([float(t) for t in range(10)], [MIN_RATE * 0.4 * t for t in range(10)])
    assert grow is not None and stop is not None
    assert not growth_verdict(grow, MIN_RATE)
    assert not growth_cleared(grow, MIN_RATE)  # between the two: keep the current state
    assert growth_cleared(stop, MIN_RATE)


def test_threshold_hysteresis() -> None:
    assert threshold_fired(100.0, 100.0)
    assert not threshold_fired(99.0, 100.0)
    assert not threshold_cleared(95.0, 100.0)
    assert threshold_cleared(89.0, 100.0)


def test_metric_value_units() -> None:
    p = proc(
        rss_kb=10, anon_kb=4, swap_kb=None, mmap_bytes=1000, munmap_bytes=200, brk_bytes=50, mapped_bytes=850
    )
    assert metric_value(p, "rss") == 10240
    assert metric_value(p, "anon") == 4096
    assert metric_value(p, "swap") is None
    assert metric_value(p, "mapped") == 850
    assert metric_value(proc(), "mapped") is None
    with pytest.raises(ValueError):
        metric_value(p, "bogus")


def test_resident_value_prefers_anon() -> None:
    assert resident_value(proc()) == 800 * 1024
    assert resident_value(proc(anon_kb=None)) == 1000 * 1024
    assert resident_value(proc(anon_kb=None, rss_kb=None)) is None


def test_resident_corroborates_only_steady_resident_growth() -> None:
    grows, flat, saw = (Window(100.0, with_counter=True) for _ in range(3))
    for t in range(0, 100, 2):
        grows.add(float(t), 1.0, BASE + MIN_RATE * t)
        flat.add(float(t), 1.0, BASE)
        saw.add(float(t), 1.0, BASE + 50 * MIN_RATE * (t % 20))  # a GC or commit/uncommit sawtooth
    assert resident_corroborates(grows, MIN_RATE)
    assert not resident_corroborates(flat, MIN_RATE)
    assert not resident_corroborates(saw, MIN_RATE)
    assert not resident_corroborates(Window(100.0), MIN_RATE)


def test_two_regular_steps_hold_but_do_not_start() -> None:
    # a window whose slice medians see two steps of a stair: each carries half the rise
    ts = [float(t) for t in range(0, 60)]
    f = fit(ts, [BASE + 1e6 * ((t >= 10) + (t >= 35)) for t in ts])
    assert f is not None and not growth_verdict(f, MIN_RATE) and growth_holds(f, MIN_RATE)
    # one jump, even smeared over two neighbouring slices, neither starts nor holds
    g = fit(ts, [BASE + 1e6 * ((t >= 30) + (t >= 33)) for t in ts])
    assert g is not None and not growth_verdict(g, MIN_RATE) and not growth_holds(g, MIN_RATE)


def test_growth_stopped_recently_sees_a_plateau_before_the_whole_window_does() -> None:
    w = Window(60.0)
    for t in range(0, 60):
        w.add(float(t), BASE + 1e6 * min(t, 35))  # a ramp, then flat for the newest 24 s
    f = fit(w.t, w.v)
    assert f is not None and not growth_cleared(f, MIN_RATE)
    assert growth_stopped_recently(w, MIN_RATE)
    v = Window(60.0)
    for t in range(0, 60):
        v.add(float(t), BASE + MIN_RATE * 3 * t)
    assert not growth_stopped_recently(v, MIN_RATE)


def test_forecast() -> None:
    mi = MemInfo(mem_total_kb=8 << 20, mem_available_kb=1 << 20, swap_total_kb=0, swap_free_kb=0)
    assert forecast_s(1024 * 1024, mi) == pytest.approx(1024.0)
    assert forecast_s(0.0, mi) is None
    assert forecast_s(-5.0, mi) is None
    assert forecast_s(5.0, None) is None
    assert forecast_s(None, mi) is None


def test_large_values_keep_precision() -> None:
    # 1 TB processes growing by 1 MB/min: centering keeps the fit exact
    ts = [float(t) for t in range(0, 600, 3)]
    f = fit(ts, [1e12 + MIN_RATE * 2 * t for t in ts])
    assert f is not None and math.isclose(f.slope, 2 * MIN_RATE, rel_tol=1e-6) and f.r2 > 0.999
