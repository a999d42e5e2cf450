"""[notify] alertmanager: validation at load, and the payload memwatchd posts (pure parts).

The end-to-end behaviour against a real Alertmanager is in tests/test_alertmanager_e2e.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memwatchd.alerts.engine import Transition
from memwatchd.config import ConfigError, RuleConfig, load_config
from memwatchd.models import AlertRecord
from memwatchd.notify.alertmanager import alert_of, iso, payload

RULE = '[[rules]]\nname = "g"\nkind = "growth"\nmin_rate = "1MB/min"\n'


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            "[notify]\nalertmanager = ['am:9093']\n",
            "notify.alertmanager: expected an http:// or https:// URL",
        ),
        (
            "[notify]\nalertmanager = ['ftp://am:9093']\n",
            "notify.alertmanager: expected an http:// or https://",
        ),
        ("[notify]\nalertmanager = ['http://am']\n", "notify.alertmanager: expected a host and a port"),
        ("[notify]\nalertmanager = ['http://:9093']\n", "notify.alertmanager: expected a host and a port"),
        ("[notify]\nalertmanager = ['http://am:99999']\n", "notify.alertmanager: not a valid URL"),
        ("[notify]\nalertmanager = 'http://am:9093'\n", "notify.alertmanager: expected a list"),
        ("[notify]\nalertmanager_repeat = '0s'\n", "notify.alertmanager_repeat: must be at least 1s"),
        (RULE + "alertmanager = ['http://am']\n", "rules[0].alertmanager: expected a host and a port"),
        (RULE + "severity = ''\n", "rules[0].severity: expected a short label value"),
        (RULE + "severity = 3\n", "rules[0].severity: expected a string"),
    ],
)
def test_bad_alertmanager_config_names_file_and_key(tmp_path: Path, toml: str, expected: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value).startswith(f"{f}: ")
    assert expected in str(e.value)


def test_alertmanager_config_loads(tmp_path: Path) -> None:
    f = tmp_path / "ok.toml"
    f.write_text(
        "[notify]\nalertmanager = ['http://am1:9093', 'https://am2.example:443/prefix/']\n"
        "alertmanager_repeat = '30s'\n" + RULE + "alertmanager = []\nseverity = 'critical'\n"
    )
    cfg = load_config(f)
    assert cfg.notify.alertmanager == ("http://am1:9093", "https://am2.example:443/prefix")
    assert cfg.notify.alertmanager_repeat_s == 30.0
    assert cfg.rules[0].alertmanager == () and cfg.rules[0].severity == "critical"


def _transition(reason: str = "firing", **rec: object) -> Transition:
    fields: dict[str, object] = {
        "rule": "g",
        "kind": "growth",
        "pid": 4242,
        "start_ticks": 7,
        "comm": "leaker",
        "unit": "app.service",
        "state": "resolved" if reason == "resolved" else "firing",
        "since": 1_700_000_000.0,
        "fired_at": 1_700_000_030.0,
        "value": 200e6,
        "rate": 1e6,
        "summary": "rss +1 MB/s",
    }
    fields.update(rec)
    if reason == "resolved":
        fields.setdefault("resolved_at", 1_700_000_100.0)
    rule = RuleConfig(name="g", kind="growth", min_rate=1e6 / 60, severity="warning")
    return Transition(
        AlertRecord(**fields),  # type: ignore[arg-type]
        reason,
        series=((1_700_000_000.0, 100e6), (1_700_000_030.0, 200e6)),
        at=1_700_000_030.0,
        rule=rule,
    )


def test_labels_are_bounded_and_annotations_carry_the_evidence() -> None:
    a = alert_of(_transition(), "web-1", ("http://am:9093",), "http://web-1:9464/metrics")
    assert a is not None
    labels = dict(a.labels)
    assert labels == {
        "alertname": "g",
        "host": "web-1",
        "comm": "leaker",
        "unit": "app.service",
        "severity": "warning",
    }  # no pid: Alertmanager label sets must stay bounded over a fleet
    ann = dict(a.annotations)
    assert "leaker (pid 4242" in ann["summary"] and "web-1" in ann["summary"]
    assert "Rate:" in ann["description"] and "Window:" in ann["description"]
    assert ann["command"].startswith("memwatchctl history --pid 4242 --since ")
    doc = json.loads(payload([a]))
    assert doc[0]["startsAt"] == iso(1_700_000_000.0) == "2023-11-14T22:13:20.000Z"
    assert "endsAt" not in doc[0]
    assert doc[0]["generatorURL"] == "http://web-1:9464/metrics"


def test_resolve_sets_ends_at_and_keeps_starts_at() -> None:
    fired = alert_of(_transition(), "h", ("http://am:9093",))
    resolved = alert_of(_transition("resolved"), "h", ("http://am:9093",))
    assert fired is not None and resolved is not None
    assert resolved.labels == fired.labels  # the same alert for Alertmanager
    assert resolved.starts_at == fired.starts_at
    assert resolved.ends_at == 1_700_000_100.0


def test_process_chosen_text_is_escaped_in_labels() -> None:
    a = alert_of(_transition(comm="evil\nline\x1b[31m"), "h", ("http://am:9093",))
    assert a is not None
    comm = dict(a.labels)["comm"]
    assert "\n" not in comm and "\x1b" not in comm
    assert all("\x1b" not in v for _, v in a.annotations)


def test_rule_override_and_no_urls() -> None:
    t = _transition()
    assert alert_of(t, "h", ()) is None  # nothing configured: nothing posted
    off = Transition(t.record, t.reason, rule=RuleConfig(name="g", kind="growth", alertmanager=()))
    assert alert_of(off, "h", ("http://am:9093",)) is None  # the rule opts out
    other = Transition(
        t.record, t.reason, rule=RuleConfig(name="g", kind="growth", alertmanager=("http://x:1",))
    )
    a = alert_of(other, "h", ("http://am:9093",))
    assert a is not None and a.urls == ("http://x:1",)
