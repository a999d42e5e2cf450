"""`oom`: a process was killed by the OOM killer (oom:mark_victim). One message at once, with its history."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from memwatchd.alerts.kinds.base import RuleKind
from memwatchd.units import format_size

if TYPE_CHECKING:
    from memwatchd.alerts.engine import Transition
    from memwatchd.config import RuleConfig
    from memwatchd.models import OomKill


class OomKind(RuleKind):
    name: ClassVar[str] = "oom"
    instant: ClassVar[bool] = True
    keeps_history: ClassVar[bool] = True
    event_label: ClassVar[str] = "OOM KILL"
    event_group: ClassVar[str] = "processes killed"

    def kill_summary(self, oom: OomKill) -> str:
        k = 1024
        return (
            f"killed by the OOM killer: anon {format_size(oom.anon_rss_kb * k)},"
            f" file {format_size(oom.file_rss_kb * k)}, shmem {format_size(oom.shmem_rss_kb * k)},"
            f" total-vm {format_size(oom.total_vm_kb * k)}, oom_score_adj {oom.oom_score_adj},"
            f" uid {oom.uid}"
        )

    def rule_text(self, rule: RuleConfig) -> str:
        return "a process was killed by the OOM killer"

    def headline(self, t: Transition) -> str:
        return f"killed at {format_size(t.record.value)}"
