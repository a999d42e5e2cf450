"""Alert lifecycle, driven with synthetic snapshots: pending -> firing -> resolved, per process identity."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from memwatchd.alerts.engine import AlertEngine, Transition
from memwatchd.config import Match, RuleConfig
from memwatchd.models import AlertRecord, BpfHealth, MemInfo, OomKill, ProcessSnapshot, Snapshot
from memwatchd.notify.render import render
from tests.factories import process_snapshot

MB = 1024 * 1024
MI = MemInfo(mem_total_kb=16 << 20, mem_available_kb=4 << 20, swap_total_kb=0, swap_free_kb=0)
WALL0 = 1_700_000_000.0
GROWTH = RuleConfig(name="growth", kind="growth", metric="rss", min_rate=MB / 60, window_s=60.0, for_s=10.0)
INTERVAL = 2.0


def proc(pid: int, rss_mb: float, start: int = 1000, comm: str = "leaker", **kw: object) -> ProcessSnapshot:
    base: dict[str, object] = dict(
        pid=pid,
        start_ticks=start,
        comm=comm,
        unit="app.service",
        rss_kb=int(rss_mb * 1024),
        anon_kb=int(rss_mb * 1024),
        swap_kb=0,
        vm_kb=0,
    )
    return process_snapshot(**{**base, **kw})


def snap(mono: float, procs: Iterable[ProcessSnapshot], wall: float | None = None, **kw: object) -> Snapshot:
    return Snapshot(
        ts=WALL0 + mono if wall is None else wall,
        mono=mono,
        processes=tuple(procs),
        meminfo=MI,
        bpf=BpfHealth("disabled: test"),
        **kw,  # type: ignore[arg-type]
    )


Scenario = Callable[[float], list[ProcessSnapshot]]


def drive(
    eng: AlertEngine,
    scenario: Scenario,
    until: float,
    start: float = 0.0,
    wall: Callable[[float], float] | None = None,
) -> list[tuple[float, Transition]]:
    """Run the engine over a scenario; confirm every delivery at once, as the daemon does after success."""
    out = []
    t = start
    while t <= until:
        _, due = eng.observe(snap(t, scenario(t), wall=wall(t) if wall else None))
        for tr in due:
            out.append((t, tr))
            eng.mark_notified(tr.record, tr.record.state, WALL0 + t)
        t += INTERVAL
    return out


def leaking(rate_mb_s: float, stop_at: float = 1e18, pid: int = 10, start: int = 1000) -> Scenario:
    return lambda t: [proc(pid, 100 + rate_mb_s * min(t, stop_at), start=start), proc(2, 50, comm="idle")]


def reasons(events: list[tuple[float, Transition]]) -> list[str]:
    return [tr.reason for _, tr in events]


def test_growth_fires_once_after_window_and_for_then_resolves_once() -> None:
    eng = AlertEngine([GROWTH], [], repeat_interval_s=0)
    ev = drive(eng, leaking(0.2, stop_at=200), until=600)
    assert reasons(ev) == ["firing", "resolved"]
    (t_fire, fire), (t_res, res) = ev
    assert 0.8 * 60 + 10 <= t_fire <= 60 + 10 + 2 * INTERVAL
    assert fire.record.pid == 10 and fire.record.comm == "leaker" and fire.record.state == "firing"
    assert fire.record.rate is not None and 0.19 * MB < fire.record.rate < 0.21 * MB
    assert fire.record.since < WALL0 + t_fire - 50  # the evidence started a window earlier
    assert fire.series and fire.forecast_s is not None
    assert 200 < t_res <= 200 + 60 + 30 + 2 * INTERVAL  # about a window to see it stop, then the hold
    assert res.record.state == "resolved" and res.record.since == fire.record.since


def test_flat_and_idle_processes_do_not_fire() -> None:
    eng = AlertEngine([GROWTH], [], repeat_interval_s=0)
    rnd = random.Random(1)
    ev = drive(eng, lambda t: [proc(10, 100 + rnd.uniform(-0.2, 0.2)), proc(11, 0)], until=600)
    assert ev == []


@given(st.floats(0.05, 5.0), st.floats(0.3, 0.9))
@settings(max_examples=30, deadline=None)
def test_pid_reuse_never_joins_two_series(rate: float, split: float) -> None:
    # process A grows, exits; B gets the same pid and continues the very same line: neither alone
    # fills a window and holds for `for`, so nothing may fire. A line joined across the two would fire.
    cut = split * 60

    def sc(t: float) -> list[ProcessSnapshot]:
        return [proc(10, 100 + rate * t, start=1000 if t < cut else 5000)]

    eng = AlertEngine([GROWTH], [], repeat_interval_s=0)
    ev = drive(eng, sc, until=cut + 0.7 * 60)
    assert ev == []


def test_pid_reuse_resolves_the_old_identity_and_judges_the_new_one_afresh() -> None:
    def sc(t: float) -> list[ProcessSnapshot]:
        if t < 150:
            return [proc(10, 100 + 0.2 * t, start=1000)]
        return [proc(10, 40, start=9000)]

    eng = AlertEngine([GROWTH], [], repeat_interval_s=0)
    ev = drive(eng, sc, until=400)
    assert reasons(ev) == ["firing", "resolved"]
    assert ev[1][1].record.start_ticks == 1000 and ev[1][1].record.summary == "process exited"
    assert ev[1][0] == 150


def test_repeat_interval_renotifies_once_per_interval() -> None:
    eng = AlertEngine([GROWTH], [], repeat_interval_s=100)
    ev = drive(eng, leaking(0.2), until=70 + 350)
    t_fire = ev[0][0]
    assert reasons(ev) == ["firing"] + ["repeat"] * len(ev[1:])
    repeats = [t for t, tr in ev if tr.reason == "repeat"]
    assert len(repeats) == int((70 + 350 - t_fire) // 100)
    assert all(abs((b - a) - 100) <= INTERVAL for a, b in zip([t_fire, *repeats], repeats, strict=False))


def test_restart_with_open_alert_does_not_resend() -> None:
    eng = AlertEngine([GROWTH], [], repeat_interval_s=1000)
    stored: dict[tuple[object, ...], AlertRecord] = {}
    t = 0.0
    while t <= 100:
        changed, due = eng.observe(snap(t, leaking(0.2)(t)))
        for r in changed:
            stored[(r.rule, r.pid, r.since)] = r
        for tr in due:
            r = eng.mark_notified(tr.record, tr.record.state, WALL0 + t)
            stored[(r.rule, r.pid, r.since)] = r
        t += INTERVAL
    (rec,) = stored.values()
    assert rec.state == "firing" and rec.notified_state == "firing"
    # the daemon restarts: new engine, fresh monotonic clock, same process still leaking
    eng2 = AlertEngine([GROWTH], [rec], repeat_interval_s=1000)
    ev = drive(eng2, lambda m: leaking(0.2)(m + 102), until=300, wall=lambda m: WALL0 + 102 + m)
    assert ev == []


def test_restart_sends_what_was_never_delivered() -> None:
    rec = AlertRecord(
        rule="growth",
        kind="growth",
        pid=10,
        start_ticks=1000,
        comm="leaker",
        unit=None,
        state="firing",
        since=WALL0,
        fired_at=WALL0 + 70,
        value=100 * MB,
        rate=0.2 * MB,
        notified_state=None,
    )
    done = replace(rec, pid=11, state="resolved", resolved_at=WALL0 + 90, notified_state="firing")
    eng = AlertEngine([GROWTH], [rec, done], repeat_interval_s=1000)
    ev = drive(eng, leaking(0.2), until=20)
    assert sorted((tr.reason, tr.record.pid) for _, tr in ev) == [("firing", 10), ("resolved", 11)]


def test_restart_after_repeat_interval_passed_repeats_once() -> None:
    rec = AlertRecord(
        rule="growth",
        kind="growth",
        pid=10,
        start_ticks=1000,
        comm="leaker",
        unit=None,
        state="firing",
        since=WALL0 - 5000,
        fired_at=WALL0 - 4000,
        notified_state="firing",
        notified_at=WALL0 - 4000,
    )
    eng = AlertEngine([GROWTH], [rec], repeat_interval_s=3600)
    ev = drive(eng, leaking(0.2), until=100)
    assert reasons(ev) == ["repeat"]


def test_restart_with_open_alert_of_a_vanished_process_resolves_it() -> None:
    rec = AlertRecord(
        rule="growth",
        kind="growth",
        pid=77,
        start_ticks=1,
        comm="gone",
        unit=None,
        state="firing",
        since=WALL0 - 500,
        fired_at=WALL0 - 400,
        notified_state="firing",
    )
    eng = AlertEngine([GROWTH], [rec], repeat_interval_s=0)
    ev = drive(eng, leaking(0), until=10)
    assert reasons(ev) == ["resolved"] and ev[0][1].record.pid == 77


@given(
    st.lists(st.tuples(st.integers(0, 300), st.sampled_from([-3600.0, 3600.0, -86400.0, 7200.0])), max_size=5)
)
@settings(max_examples=25, deadline=None)
def test_wall_clock_steps_change_no_decision(steps: list[tuple[int, float]]) -> None:
    def wall(m: float) -> float:
        return WALL0 + m + sum(d for at, d in steps if m >= at)

    a = drive(AlertEngine([GROWTH], [], 100), leaking(0.2, stop_at=250), until=500)
    b = drive(AlertEngine([GROWTH], [], 100), leaking(0.2, stop_at=250), until=500, wall=wall)
    assert [(t, tr.reason, tr.record.pid) for t, tr in a] == [(t, tr.reason, tr.record.pid) for t, tr in b]
    rates_a = [tr.record.rate for _, tr in a]
    assert rates_a == [tr.record.rate for _, tr in b]


def test_many_processes_make_one_grouped_message_per_rule() -> None:
    other = RuleConfig(name="big", kind="threshold", metric="rss", threshold=150 * MB, window_s=60.0)
    eng = AlertEngine([GROWTH, other], [], repeat_interval_s=0)
    procs: Scenario = lambda t: [proc(100 + i, 100 + (0.2 + i / 100) * t, start=i) for i in range(50)]  # noqa: E731
    fired: list[Transition] = []
    msgs = []
    t = 0.0
    while t <= 100:
        _, due = eng.observe(snap(t, procs(t)))
        if due:
            fired += due
            msgs += render(due, "host-a", ("json://127.0.0.1:9/",))
        t += INTERVAL
    assert sum(1 for tr in fired if tr.record.rule == "growth") == 50
    growth_msgs = [m for m in msgs if m.records[0].rule == "growth"]
    assert len(growth_msgs) == 1
    m = growth_msgs[0]
    assert len(m.records) == 50 and "50 processes" in m.title and "... and 30 more" in m.body
    assert all(len({r.rule for r in m.records}) == 1 for m in msgs)


def test_threshold_fires_after_for_and_resolves_below_ninety_percent() -> None:
    rule = RuleConfig(
        name="big", kind="threshold", metric="anon", threshold=200 * MB, for_s=10.0, window_s=60.0
    )

    def sc(t: float) -> list[ProcessSnapshot]:
        v = 100 if t < 50 else 210 if t < 100 else 190 if t < 150 else 170
        return [proc(10, v)]

    ev = drive(AlertEngine([rule], [], 0), sc, until=300)
    assert [(t, tr.reason) for t, tr in ev] == [
        (60, "firing"),
        (160, "resolved"),
    ]  # 190MB is not "clearly under"
    assert "≥" in ev[0][1].record.summary


def test_threshold_blip_shorter_than_for_does_not_fire() -> None:
    rule = RuleConfig(name="big", kind="threshold", metric="rss", threshold=200 * MB, for_s=10.0)
    ev = drive(AlertEngine([rule], [], 0), lambda t: [proc(10, 250 if 20 <= t < 26 else 100)], until=100)
    assert ev == []


def test_match_filters_processes() -> None:
    rule = replace(GROWTH, match=Match(comm="java*", unit="*.service"))
    eng = AlertEngine([rule], [], 0)
    sc: Scenario = lambda t: [proc(10, 100 + t, comm="leaker"), proc(11, 100 + t, comm="javac")]  # noqa: E731
    ev = drive(eng, sc, until=120)
    assert [(tr.reason, tr.record.comm) for _, tr in ev] == [("firing", "javac")]


def test_leak_needs_growing_mappings_and_resident_growth() -> None:
    rule = RuleConfig(name="leak", kind="leak", metric="mapped", window_s=60.0, for_s=0.0)

    def sc(t: float) -> list[ProcessSnapshot]:
        n = int(t)
        return [
            # keeps allocating, never frees enough, and the pages become resident: a leak
            proc(
                10,
                100 + 2 * t,
                mmap_count=n,
                mmap_bytes=n * 4 * MB,
                munmap_bytes=n * 2 * MB,
                brk_count=0,
                brk_bytes=0,
                mapped_bytes=n * 2 * MB,
            ),
            # mapped bytes grow but nothing becomes resident (address space reserved): no leak of memory
            proc(
                11,
                100,
                start=7,
                mmap_count=1,
                mmap_bytes=int(t * 2 * MB),
                munmap_bytes=0,
                mapped_bytes=int(t * 2 * MB),
            ),
            # no BPF data at all
            proc(12, 100 + 2 * t, start=8),
        ]

    ev = drive(AlertEngine([rule], [], 0), sc, until=120)
    assert [(tr.reason, tr.record.pid) for _, tr in ev] == [("firing", 10)]
    assert "resident memory grows with it" in ev[0][1].record.summary


def test_oom_fires_at_once_with_the_victims_history() -> None:
    rule = RuleConfig(name="oom", kind="oom")
    eng = AlertEngine([rule], [], 0)
    for t in range(0, 60, 2):
        assert eng.observe(snap(float(t), [proc(10, 100 + 5 * t, start=1000), proc(11, 10)])) == ([], [])
    kill = OomKill(
        pid=10,
        comm="leaker",
        total_vm_kb=1 << 20,
        anon_rss_kb=400 << 10,
        file_rss_kb=1 << 10,
        shmem_rss_kb=0,
        uid=0,
        oom_score_adj=0,
        mono_ns=int(61e9),
    )
    changed, due = eng.observe(snap(62.0, [proc(11, 10)], ooms=(kill,)))
    assert len(due) == 1 and len(changed) == 1
    tr = due[0]
    assert tr.reason == "firing" and tr.record.kind == "oom" and tr.record.state == "resolved"
    assert tr.record.start_ticks == 1000 and tr.record.unit == "app.service"
    assert len(tr.series) >= 6 and tr.series[-1][1] == (100 + 5 * 58) * MB  # thinned, newest kept
    assert tr.record.since == WALL0 + 61
    assert eng.mark_notified(tr.record, "firing", WALL0 + 63).notified_state == "resolved"
    # nothing further: one message per kill
    assert eng.observe(snap(64.0, [proc(11, 10)]))[1] == []


def test_oom_of_an_unseen_process_still_alerts() -> None:
    eng = AlertEngine([RuleConfig(name="oom", kind="oom")], [], 0)
    kill = OomKill(
        pid=5,
        comm="x",
        total_vm_kb=1,
        anon_rss_kb=1,
        file_rss_kb=0,
        shmem_rss_kb=0,
        uid=0,
        oom_score_adj=0,
        mono_ns=0,
    )
    _, due = eng.observe(snap(10.0, [], ooms=(kill,)))
    assert len(due) == 1 and due[0].series == () and due[0].record.start_ticks == 0


def test_late_confirmation_of_firing_does_not_reopen_a_resolved_episode() -> None:
    eng = AlertEngine([GROWTH], [], 0)
    fire = res = None
    t = 0.0
    while res is None:
        _, due = eng.observe(snap(t, leaking(0.2, stop_at=100)(t)))
        for tr in due:
            if tr.reason == "firing":
                fire = tr.record
            else:
                res = tr.record
        t += INTERVAL
    assert fire is not None
    late = eng.mark_notified(fire, "firing", WALL0 + t)
    assert late.state == "resolved" and late.notified_state == "firing"
    final = eng.mark_notified(res, "resolved", WALL0 + t)
    assert final.state == "resolved" and final.notified_state == "resolved"
    assert eng.mark_notified(fire, "firing", WALL0 + t).notified_state == "firing"  # unknown now: as given


def test_removed_rule_resolves_its_alerts_at_next_observe() -> None:
    eng = AlertEngine([GROWTH], [], 0)
    ev = drive(eng, leaking(0.2), until=100)
    assert reasons(ev) == ["firing"]
    eng.update_rules([])
    changed, due = eng.observe(snap(102.0, leaking(0.2)(102.0)))
    assert [tr.reason for tr in due] == ["resolved"] and changed[0].state == "resolved"
    assert "rule removed" in changed[0].summary
    assert eng.observe(snap(104.0, leaking(0.2)(104.0))) == ([], [])


def test_changed_rule_keeps_open_alert() -> None:
    eng = AlertEngine([GROWTH], [], 0)
    drive(eng, leaking(0.2), until=100)
    eng.update_rules([replace(GROWTH, window_s=120.0)])
    ev = drive(eng, leaking(0.2), start=102, until=300)
    assert ev == [] and len(eng.open_alerts()) == 1


def test_process_churn_keeps_state_bounded() -> None:
    eng = AlertEngine([GROWTH, RuleConfig(name="oom", kind="oom")], [], 0)
    for i in range(300):
        procs = [proc(1000 + i * 10 + k, 100 + i, start=i) for k in range(10)]
        eng.observe(snap(float(i), procs))
    assert sum(len(t) for t in eng._tracks.values()) == 10
    assert len(eng._seen) <= 10 + 130 * 10  # the vanished are kept only for the OOM grace period


def test_metric_missing_for_a_moment_keeps_the_episode() -> None:
    def sc(t: float) -> list[ProcessSnapshot]:
        return [proc(10, 100 + 0.2 * t, rss_kb=None if 100 <= t < 110 else int((100 + 0.2 * t) * 1024))]

    ev = drive(AlertEngine([GROWTH], [], 0), sc, until=200)
    assert reasons(ev) == ["firing"]


def test_oom_history_is_borrowed_from_the_rss_rule_and_outlives_the_process() -> None:
    """With an rss rule over every process (the shipped rss-growth), the OOM kind keeps no history of its
    own (memory at 10,000 processes); the victim's message still carries its last 5 minutes."""
    growth = RuleConfig(
        name="rss-growth", kind="growth", metric="rss", min_rate=50 * MB / 3600, window_s=1800.0
    )
    eng = AlertEngine([growth, RuleConfig(name="oom", kind="oom")], [], 0)
    for t in range(0, 600, 2):
        eng.observe(snap(float(t), [proc(10, 100 + t // 10, start=1000), proc(11, 10)]))
    assert eng._seen == {}  # noqa: SLF001 - the point of the test: no second copy of every history
    kill = OomKill(10, "leaker", 1 << 20, 400 << 10, 0, 0, 0, 0, int(599e9))
    _, due = eng.observe(snap(600.0, [proc(11, 10)], ooms=(kill,)))  # gone from /proc in the same cycle
    (tr,) = due
    assert tr.record.kind == "oom" and tr.record.start_ticks == 1000
    assert len(tr.series) >= 6 and tr.series[-1][1] == (100 + 598 // 10) * MB
    assert all(WALL0 + 600 - 300 - 30 <= ts <= WALL0 + 600 for ts, _ in tr.series)
