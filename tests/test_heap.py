"""The daemon's heap policy (daemon/heap.py): when free pages are handed back to the kernel."""

from __future__ import annotations

from memwatchd.daemon.heap import SETTLED_S, TRIM_AFTER_GONE, TRIM_EVERY_S, TrimPolicy


def test_a_burst_of_exits_trims_during_the_burst_and_once_after_it() -> None:
    p = TrimPolicy()
    t, trims = 0.0, []
    for _ in range(30):  # 500 exits a second for 30 s
        t += 1.0
        if p.due(500, t):
            trims.append(t)
    assert len(trims) == 30 / TRIM_EVERY_S  # rate-limited while it lasts
    for _ in range(60):  # then quiet: what the last exits freed (after their commit) is handed back once
        t += 1.0
        if p.due(0, t):
            trims.append(t)
    settled = [x for x in trims if x - 30.0 >= SETTLED_S]
    assert len(settled) == 1


def test_a_trickle_of_exits_does_not_trim_every_time_it_settles() -> None:
    p = TrimPolicy()
    assert not any(p.due(1 if k % 20 == 0 else 0, float(k)) for k in range(600))  # one exit every 20 s
    assert not p.due(TRIM_AFTER_GONE - 40, 601.0) and p.due(10, 612.0)  # a real burst does
