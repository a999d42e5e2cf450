"""`threshold`: a metric at or above a fixed size; clears below THRESHOLD_CLEAR_SHARE of it (hysteresis)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from memwatchd.alerts.fit import THRESHOLD_CLEAR_SHARE, Window, threshold_cleared, threshold_fired
from memwatchd.alerts.kinds.base import Judgement, RuleKind, fit_when_ready, held
from memwatchd.units import format_size

if TYPE_CHECKING:
    from memwatchd.alerts.engine import Transition
    from memwatchd.alerts.fit import Fit
    from memwatchd.config import RuleConfig

TRACK_SHARE = 0.5  # a window is kept only for processes above half the threshold


class ThresholdKind(RuleKind):
    name: ClassVar[str] = "threshold"
    scopes: ClassVar[frozenset[str]] = frozenset({"process", "cgroup", "host"})
    shows_fit: ClassVar[bool] = False

    def validate(self, rule: RuleConfig) -> tuple[str, str] | None:
        if rule.threshold <= 0:
            return ("threshold", "required for kind 'threshold' (e.g. \"2GB\")")
        return None

    def worth_tracking(self, rule: RuleConfig, value: float) -> bool:
        return value >= TRACK_SHARE * rule.threshold

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
        value = w.last
        assert value is not None
        return Judgement(
            fire=threshold_fired(value, rule.threshold),
            clear=threshold_cleared(value, rule.threshold),
            clear_hold_s=rule.for_s,
            since_wall=wall,
            fit=current,  # the rate's fit, made lazily by rate_fit
        )

    def rate_fit(self, w: Window, current: Fit | None) -> Fit | None:
        return current if current is not None else fit_when_ready(w)

    def fire_summary(self, rule: RuleConfig, value: float, rate: float | None, f: Fit | None) -> str:
        return f"{rule.metric} {format_size(value)} ≥ {format_size(rule.threshold)}"

    def clear_summary(self, rule: RuleConfig, value: float | None, f: Fit | None) -> str:
        return f"{rule.metric} {format_size(value)} < {format_size(THRESHOLD_CLEAR_SHARE * rule.threshold)}"

    def rule_text(self, rule: RuleConfig) -> str:
        return f"{rule.metric} ≥ {format_size(rule.threshold)}{held(rule)}"

    def headline(self, t: Transition) -> str:
        if t.reason == "resolved":
            return "resolved"
        thr = t.rule.threshold if t.rule is not None else 0
        metric = t.rule.metric if t.rule is not None else "rss"
        return f"{metric} {format_size(t.record.value)} ≥ {format_size(thr)}"
