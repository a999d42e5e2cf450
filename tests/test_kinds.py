"""Rule kinds: one class per kind, found by name; config, engine and messages ask the kind."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest

from memwatchd.alerts import kinds
from memwatchd.alerts.engine import AlertEngine
from memwatchd.alerts.fit import Fit, Window
from memwatchd.alerts.kinds import KIND_NAMES, Judgement, RuleKind, kind_of
from memwatchd.config import ConfigError, Match, RuleConfig, load_config
from memwatchd.models import BpfHealth, MemInfo, Snapshot
from memwatchd.notify.render import render
from memwatchd.units import format_size
from tests.factories import process_snapshot

MB = 1 << 20


def test_the_four_kinds_are_registered_in_reading_order() -> None:
    assert KIND_NAMES == ("growth", "leak", "threshold", "oom")
    assert {type(kind_of(n)).__module__ for n in KIND_NAMES} == {
        f"memwatchd.alerts.kinds.{n}" for n in KIND_NAMES
    }, "one module per kind"
    with pytest.raises(ValueError, match="unknown rule kind"):
        kind_of("nope")


@pytest.mark.parametrize(
    ("rule", "error"),
    [
        ('kind = "growth"', "rules[0].min_rate: required for kind 'growth' (e.g. \"10MB/h\")"),
        ('kind = "threshold"', "rules[0].threshold: required for kind 'threshold' (e.g. \"2GB\")"),
        ('kind = "leak"', None),
        ('kind = "oom"', None),
    ],
)
def test_config_validation_comes_from_the_kind(tmp_path: Path, rule: str, error: str | None) -> None:
    f = tmp_path / "m.toml"
    f.write_text(f'[[rules]]\nname = "r"\n{rule}\n')
    if error is None:
        cfg = load_config(str(f))
        assert cfg.rules[0].metric == kind_of(cfg.rules[0].kind).default_metric
        return
    with pytest.raises(ConfigError) as e:
        load_config(str(f))
    assert str(e.value) == f"{f}: {error}"


def test_rule_texts() -> None:
    g = RuleConfig(name="g", kind="growth", min_rate=60 * MB / 3600, window_s=10.0, for_s=2.0)
    assert kind_of("growth").rule_text(g) == "growth of rss ≥ 60M/h over 10s, held 2s"
    leak = RuleConfig(name="l", kind="leak", metric="mapped", window_s=1800.0)
    assert kind_of("leak").rule_text(leak) == (
        "leak: outstanding mapped memory (eBPF) grows ≥ 1.0M/min over 30m and resident memory with it"
    )
    t = RuleConfig(name="t", kind="threshold", threshold=2 << 30)
    assert kind_of("threshold").rule_text(t) == "rss ≥ 2.0G"
    oom = RuleConfig(name="o", kind="oom")
    assert kind_of("oom").rule_text(oom) == "a process was killed by the OOM killer"


class SwapUseKind(RuleKind):
    """The README's example of a new kind: the whole of it is this class."""

    name: ClassVar[str] = "swap_use_test"
    default_metric: ClassVar[str] = "swap"

    def validate(self, rule: RuleConfig) -> tuple[str, str] | None:
        return ("threshold", "required") if rule.threshold <= 0 else None

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
        v = w.last
        assert v is not None
        return Judgement(
            fire=v >= rule.threshold,
            clear=v < rule.threshold / 2,
            clear_hold_s=rule.for_s,
            since_wall=wall,
            fit=current,
        )

    def fire_summary(self, rule: RuleConfig, value: float, rate: float | None, f: Fit | None) -> str:
        return f"swap {format_size(value)}"

    def clear_summary(self, rule: RuleConfig, value: float | None, f: Fit | None) -> str:
        return f"swap {format_size(value)} again"

    def rule_text(self, rule: RuleConfig) -> str:
        return f"swap ≥ {format_size(rule.threshold)}"


def test_a_new_kind_is_one_class(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registered by discovery (as a module in memwatchd/alerts/kinds/ would be), then engine and renderer
    use it with no other change."""
    found = kinds._discover()
    assert "swap_use_test" in found and set(KIND_NAMES) <= set(found)
    monkeypatch.setattr(kinds, "KINDS", found)
    rule = RuleConfig(name="swapping", kind="swap_use_test", metric="swap", threshold=100 * MB, match=Match())
    eng = AlertEngine([rule], [], repeat_interval_s=3600.0)

    def snap(mono: float, swap_mb: int) -> Snapshot:
        p = process_snapshot(pid=5, start_ticks=50, comm="db", rss_kb=1, swap_kb=swap_mb * 1024)
        return Snapshot(
            ts=1_700_000_000.0 + mono,
            mono=mono,
            processes=(p,),
            meminfo=MemInfo(16 << 20, 8 << 20, 0, 0),
            bpf=BpfHealth("disabled: test"),
        )

    _, due = eng.observe(snap(0.0, 150))
    assert [(t.reason, t.record.summary) for t in due] == [("firing", "swap 150M")]
    (msg,) = render(due, "vm", ("json://127.0.0.1:9/",))
    assert "Rule:     swap ≥ 100M" in msg.body
    _, due = eng.observe(snap(3.0, 20))
    assert [(t.reason, t.record.summary) for t in due] == [("resolved", "swap 20M again")]
