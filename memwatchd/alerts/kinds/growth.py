"""`growth`: a metric rises steadily at min_rate or more over the window (see alerts/fit.py for the tests)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from memwatchd.alerts.fit import (
    Window,
    could_grow,
    fit,
    growth_cleared,
    growth_holds,
    growth_stopped_recently,
    growth_verdict,
    window_ready,
)
from memwatchd.alerts.kinds.base import Judgement, RuleKind, held
from memwatchd.units import format_duration, format_rate

if TYPE_CHECKING:
    from memwatchd.alerts.fit import Fit
    from memwatchd.config import RuleConfig


class GrowthKind(RuleKind):
    name: ClassVar[str] = "growth"
    scopes: ClassVar[frozenset[str]] = frozenset({"process", "cgroup", "host"})

    def validate(self, rule: RuleConfig) -> tuple[str, str] | None:
        if rule.min_rate <= 0:
            return ("min_rate", "required for kind 'growth' (e.g. \"10MB/h\")")
        return None

    def min_rate(self, rule: RuleConfig) -> float:
        """The slope that fires (bytes/s)."""
        return rule.min_rate

    def evidence(self, w: Window, min_rate: float) -> bool:
        """Evidence required besides the slope (leak: resident memory grows with the mappings)."""
        return True

    def judge(
        self,
        rule: RuleConfig,
        w: Window,
        *,
        idle: bool,
        appended: bool,
        now: float,
        wall: float,
        current: Fit | None,
    ) -> Judgement | None:
        min_rate = self.min_rate(rule)
        ready = window_ready(w)
        if idle and not (appended and ready and could_grow(w, min_rate)):
            # most processes are not growing; a quiet one is looked at again when its window gains a
            # point (every window/MAX_POINTS), not at every sample
            return None
        f = fit(w.t, w.v) if ready else None
        # weak evidence (two regular steps of a stair) starts and keeps the `for` clock; the full verdict must
        # also hold once while it runs, so two jumps alone never fire (see alerts/fit.py)
        confirm = f is not None and growth_verdict(f, min_rate)
        fire = f is not None and (confirm or growth_holds(f, min_rate)) and self.evidence(w, min_rate)
        return Judgement(
            fire=fire,
            confirm=confirm and fire,
            clear=None if f is None else growth_cleared(f, min_rate) or growth_stopped_recently(w, min_rate),
            clear_hold_s=max(rule.for_s, rule.window_s / 2),
            since_wall=wall - (now - w.t[0]),
            fit=f,
        )

    def fire_summary(self, rule: RuleConfig, value: float, rate: float | None, f: Fit | None) -> str:
        assert f is not None and rate is not None
        return f"{rule.metric} +{format_rate(rate)} over {format_duration(f.span_s)} ({f.describe()})"

    def clear_summary(self, rule: RuleConfig, value: float | None, f: Fit | None) -> str:
        from memwatchd.alerts.fit import CLEAR_RATE_SHARE

        slope = f.slope if f is not None else 0.0
        return (
            f"growth stopped: {rule.metric} {format_rate(slope)}"
            f" (< {format_rate(CLEAR_RATE_SHARE * self.min_rate(rule))})"
        )

    def rule_text(self, rule: RuleConfig) -> str:
        rate, window = format_rate(rule.min_rate), format_duration(rule.window_s)
        return f"growth of {rule.metric} ≥ {rate} over {window}{held(rule)}"
