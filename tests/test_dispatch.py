"""Alert dispatch and [notify] group_wait, in-process: the real rule engine and renderer, time passed in."""

from __future__ import annotations

from memwatchd.alerts.engine import AlertEngine
from memwatchd.config import Match, RuleConfig
from memwatchd.daemon.dispatch import AlertDispatch
from memwatchd.models import BpfHealth, MemInfo, ProcessSnapshot, Snapshot
from memwatchd.notify.render import Message
from tests.factories import process_snapshot

MB = 1 << 20
WALL0 = 1_700_000_000.0
URL = "json://127.0.0.1:9/hook"
BIG = RuleConfig(name="big", kind="threshold", threshold=100 * MB, match=Match(comm="hog*"))
HUGE = RuleConfig(name="huge", kind="threshold", threshold=500 * MB, match=Match(comm="hog*"))


def hog(pid: int, rss_mb: int) -> ProcessSnapshot:
    kb = rss_mb * 1024
    return process_snapshot(pid=pid, start_ticks=pid * 10, comm=f"hog{pid}", rss_kb=kb, anon_kb=kb, swap_kb=0)


def snap(mono: float, procs: list[ProcessSnapshot]) -> Snapshot:
    return Snapshot(
        ts=WALL0 + mono,
        mono=mono,
        processes=tuple(procs),
        meminfo=MemInfo(16 << 20, 8 << 20, 0, 0),
        bpf=BpfHealth("disabled: test"),
    )


class Pipeline:
    """Engine -> dispatch -> sent messages; every delivery confirmed at once, as the daemon does."""

    def __init__(self, group_wait_s: float, rules: tuple[RuleConfig, ...] = (BIG,)) -> None:
        self.engine = AlertEngine(rules, [], repeat_interval_s=3600.0)
        self.sent: list[tuple[float, Message]] = []
        self.mono = 0.0
        self.dispatch = AlertDispatch(self._send, host="vm", urls=(URL,), group_wait_s=group_wait_s)

    def _send(self, msg: Message) -> None:
        self.sent.append((self.mono, msg))
        for r in msg.records:
            self.engine.mark_notified(r, r.state, WALL0 + self.mono)

    def cycle(self, mono: float, procs: list[ProcessSnapshot]) -> None:
        self.mono = mono
        s = snap(mono, procs)
        _, due = self.engine.observe(s)
        self.dispatch.offer(due, s.mono)


def test_a_lone_alert_after_a_quiet_spell_goes_out_at_once() -> None:
    p = Pipeline(group_wait_s=30.0)
    p.cycle(0.0, [hog(1, 50)])
    p.cycle(3.0, [hog(1, 150)])
    assert [(t, m.reasons) for t, m in p.sent] == [(3.0, ("firing",))]


def test_alerts_due_within_group_wait_are_held_and_sent_as_one_message_per_rule() -> None:
    p = Pipeline(group_wait_s=30.0, rules=(BIG, HUGE))
    p.cycle(0.0, [hog(1, 150)])  # first: out at once
    assert len(p.sent) == 1
    procs = [hog(1, 150)]
    for i, mono in enumerate((3.0, 6.0, 9.0, 12.0), start=2):  # four more processes cross 100 MB, one 500 MB
        procs.append(hog(i, 600 if i == 5 else 150))
        p.cycle(mono, list(procs))
    assert len(p.sent) == 1, "held during group_wait"
    assert len(p.dispatch.held) == 5
    for mono in (15.0, 18.0, 21.0, 24.0, 27.0):
        p.cycle(mono, list(procs))
    assert len(p.sent) == 1
    p.cycle(30.0, list(procs))  # group_wait after the last message: everything held goes, one per rule
    later = [m for t, m in p.sent if t == 30.0]
    assert sorted((m.records[0].rule, len(m.records)) for m in later) == [("big", 4), ("huge", 1)]
    assert not p.dispatch.held
    assert all(m.urls == (URL,) for _, m in p.sent)


def test_group_wait_zero_sends_every_cycle_and_flush_empties_the_hold() -> None:
    p = Pipeline(group_wait_s=0.0)
    p.cycle(0.0, [hog(1, 150)])
    p.cycle(3.0, [hog(1, 150), hog(2, 150)])
    assert [t for t, _ in p.sent] == [0.0, 3.0]

    held = Pipeline(group_wait_s=60.0)
    held.cycle(0.0, [hog(1, 150)])
    held.cycle(3.0, [hog(1, 150), hog(2, 150)])
    assert len(held.sent) == 1 and len(held.dispatch.held) == 1
    held.dispatch.flush()  # shutdown: nothing sits in the hold
    assert len(held.sent) == 2 and not held.dispatch.held


def test_without_urls_nothing_is_sent() -> None:
    p = Pipeline(group_wait_s=0.0)
    p.dispatch.urls = ()
    p.cycle(0.0, [hog(1, 150)])
    assert p.sent == [] and not p.dispatch.held
