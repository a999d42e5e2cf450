"""`leak`: eBPF evidence. Mapped memory (mmap - munmap + brk growth) rises while allocations continue."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from memwatchd.alerts.fit import Window, alloc_count, allocations_continue, leak_rate
from memwatchd.alerts.kinds.base import held
from memwatchd.alerts.kinds.growth import GrowthKind
from memwatchd.units import format_duration, format_rate

if TYPE_CHECKING:
    from memwatchd.alerts.fit import Fit
    from memwatchd.config import RuleConfig
    from memwatchd.models import ProcessSnapshot


class LeakKind(GrowthKind):
    name: ClassVar[str] = "leak"
    default_metric: ClassVar[str] = "mapped"
    counts_allocations: ClassVar[bool] = True
    scopes: ClassVar[frozenset[str]] = frozenset({"process"})  # eBPF counters are per process

    def validate(self, rule: RuleConfig) -> tuple[str, str] | None:
        return None  # min_rate is optional: 1MB/min by default

    def min_rate(self, rule: RuleConfig) -> float:
        return leak_rate(rule.min_rate)

    def evidence(self, w: Window) -> bool:
        return allocations_continue(w)

    def counter(self, p: ProcessSnapshot) -> int | None:
        return alloc_count(p)

    def fire_summary(self, rule: RuleConfig, value: float, rate: float | None, f: Fit | None) -> str:
        return super().fire_summary(rule, value, rate, f) + "; allocations continue"

    def rule_text(self, rule: RuleConfig) -> str:
        rate = format_rate(rule.min_rate) if rule.min_rate > 0 else "1.0M/min"
        return (
            f"leak: mapped memory grows ≥ {rate} over {format_duration(rule.window_s)}"
            f" while the process keeps allocating{held(rule)}"
        )
