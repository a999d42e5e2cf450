"""What every rule kind provides, and the registry that finds a kind by its config name.

A rule kind is one class in one module of this package: its config validation, its fire and clear tests, the
summary stored with an alert and the rule text shown in messages. The engine (alerts/engine.py), the config
loader and the renderer ask the kind; none of them branch on kind names.

Kinds judge a Window of (mono time, value) points; whose window it is (a process today; a cgroup or the
host once rules get a `scope`) is the engine's business, so a kind lists the scopes it can judge in `scopes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from memwatchd.alerts.fit import Fit, Window, fit, window_ready
from memwatchd.units import format_duration, format_rate

if TYPE_CHECKING:  # config imports this package to validate rules: the type only, no import cycle
    from memwatchd.alerts.engine import Transition
    from memwatchd.config import RuleConfig
    from memwatchd.models import ProcessSnapshot


@dataclass(frozen=True, slots=True)
class Judgement:
    """One look at a window: does the fire condition hold; does the clear one (None: cannot tell yet)."""

    fire: bool
    clear: bool | None
    clear_hold_s: float  # the clear condition must hold this long before the alert resolves
    since_wall: float  # wall time the evidence starts (becomes the episode's `since`)
    fit: Fit | None = None
    # fire may rest on weaker evidence that only starts and keeps the `for` clock; the episode fires once
    # `confirm` has also held while pending (None: fire is its own confirmation)
    confirm: bool | None = None


class RuleKind:
    """Base of the rule kinds. Subclasses set `name` and override what differs."""

    name: ClassVar[str]
    default_metric: ClassVar[str] = "rss"
    scopes: ClassVar[frozenset[str]] = frozenset({"process"})
    instant: ClassVar[bool] = False  # an event (OOM kill): fires and resolves in one message, no window
    keeps_history: ClassVar[bool] = False  # the engine keeps every process's short rss history for it
    keeps_counter: ClassVar[bool] = False  # windows also keep a second value per point (`counter`)
    shows_fit: ClassVar[bool] = True  # messages show the fit quality next to the rate
    event_label: ClassVar[str] = "EVENT"  # message label of instant kinds ("OOM KILL")
    event_group: ClassVar[str] = "processes"  # "N processes killed" in a grouped message of an instant kind

    # ---- configuration ----
    def validate(self, rule: RuleConfig) -> tuple[str, str] | None:
        """(key, problem) when the rule is unusable for this kind, else None."""
        return None

    # ---- evaluation ----
    def window(self, rule: RuleConfig) -> Window:
        return Window(rule.window_s, with_counter=self.keeps_counter, compact=True)

    def counter(self, p: ProcessSnapshot) -> float | None:
        """The second value stored with each point (only for kinds with keeps_counter; leak: resident
        bytes)."""
        return None

    def worth_tracking(self, rule: RuleConfig, value: float) -> bool:
        """False when a value is so far from firing that no window needs to be kept for it."""
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
        """Judge the window after a new point: None when there is nothing to decide (the quiet fast path).

        idle: no episode is open or pending; current: the fit kept from earlier cycles.
        """
        raise NotImplementedError

    def rate_fit(self, w: Window, current: Fit | None) -> Fit | None:
        """The fit that gives an alert's rate (kinds that fit anyway return theirs)."""
        return current

    # ---- text ----
    def fire_summary(self, rule: RuleConfig, value: float, rate: float | None, f: Fit | None) -> str:
        raise NotImplementedError

    def clear_summary(self, rule: RuleConfig, value: float | None, f: Fit | None) -> str:
        raise NotImplementedError

    def rule_text(self, rule: RuleConfig) -> str:
        """What the rule watches, for messages ("growth of rss ≥ 60M/h over 10s, held 2s")."""
        raise NotImplementedError

    def headline(self, t: Transition) -> str:
        """The short state of one process in titles and group lines."""
        if t.reason == "resolved":
            return "resolved"
        return f"+{format_rate(t.record.rate or 0.0)}"


def held(rule: RuleConfig) -> str:
    """ ", held 2m" when the rule has a `for`."""
    return f", held {format_duration(rule.for_s)}" if rule.for_s else ""


def fit_when_ready(w: Window) -> Fit | None:
    return fit(w.t, w.v) if window_ready(w) else None
