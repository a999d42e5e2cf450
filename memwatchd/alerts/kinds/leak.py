"""`leak`: eBPF evidence. Outstanding mapped memory rises, and resident memory with it.

mapped_bytes is the process's address-space figure from eBPF (mmap, munmap, mremap growth and shrink, brk; a
MAP_FIXED mapping that replaces one adds nothing), so a heap committed in place (JVM, Go) or mmap churn stays
flat. Corroboration by resident memory (anon) keeps mappings that are reserved but never touched silent. How
often the process allocates does not matter: a worker that allocates once per rare task is judged like any
other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from memwatchd.alerts.fit import Window, leak_rate, resident_corroborates, resident_value
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
    keeps_counter: ClassVar[bool] = True
    scopes: ClassVar[frozenset[str]] = frozenset({"process"})  # eBPF counters are per process

    def validate(self, rule: RuleConfig) -> tuple[str, str] | None:
        return None  # min_rate is optional: 1MB/min by default

    def min_rate(self, rule: RuleConfig) -> float:
        return leak_rate(rule.min_rate)

    def evidence(self, w: Window, min_rate: float) -> bool:
        return resident_corroborates(w, min_rate)

    def counter(self, p: ProcessSnapshot) -> float | None:
        return resident_value(p)

    def fire_summary(self, rule: RuleConfig, value: float, rate: float | None, f: Fit | None) -> str:
        return super().fire_summary(rule, value, rate, f) + "; resident memory grows with it"

    def rule_text(self, rule: RuleConfig) -> str:
        rate = format_rate(rule.min_rate) if rule.min_rate > 0 else "1.0M/min"
        return (
            f"leak: outstanding mapped memory (eBPF) grows ≥ {rate} over {format_duration(rule.window_s)}"
            f" and resident memory with it{held(rule)}"
        )
