"""Rules of scope "cgroup" and "host": the alert lifecycle over group and host series. Pure: no I/O, no clock.

A cgroup-scope rule watches every memory cgroup (snap.groups with by == "cgroup") that matches its globs
(match.cgroup on the path, match.unit on the cgroup's systemd unit) on one metric: memory (the kernel's
charge), rss, anon or swap (its processes' sums). A host-scope rule watches one part of the host breakdown:
shmem, slab_unreclaimable, page_tables, unaccounted or available. Kinds growth and threshold work as for
processes (the same window, fit, verdict and hysteresis as alerts/fit.py); threshold on `available` fires
below the threshold, and growth on `available` means its decline.

An episode is stored as an AlertRecord with pid 0: comm holds the group's path (or "host"), unit its unit,
start_ticks a stable number of the group (so two groups firing at once are two episodes).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from memwatchd.alerts.fit import (
    CLEAR_RATE_SHARE,
    THRESHOLD_CLEAR_SHARE,
    Fit,
    Window,
    could_grow,
    fit,
    growth_cleared,
    growth_verdict,
    window_ready,
)
from memwatchd.config import RuleConfig
from memwatchd.models import AlertRecord, GroupMember, GroupSample, HostMemory, Snapshot
from memwatchd.units import format_duration, format_rate, format_size

HOST = "host"
# the host breakdown field of each host-scope metric
HOST_METRIC_FIELDS = {
    "shmem": "shmem_kb",
    "slab_unreclaimable": "slab_unreclaimable_kb",
    "page_tables": "page_tables_kb",
    "unaccounted": "unaccounted_kb",
    "available": "available_kb",
}
GROUP_METRIC_FIELDS = {"memory": "memory_current_kb", "rss": "rss_kb", "anon": "anon_kb", "swap": "swap_kb"}
_ORDER = {None: 0, "pending": 0, "firing": 1, "resolved": 2}

Episode = tuple[str, int, float]  # rule, group number, since


def group_number(name: str) -> int:
    """A stable positive number for a group path (start_ticks of its records)."""
    return zlib.crc32(name.encode("utf-8", "surrogateescape")) & 0x7FFFFFFF


def is_scoped(rule: RuleConfig | None) -> bool:
    return rule is not None and rule.scope != "process"


def falls(rule: RuleConfig) -> bool:
    """Rules on `available` watch a fall: threshold fires below, growth means decline."""
    return rule.scope == "host" and rule.metric == "available"


@dataclass(frozen=True, slots=True)
class ScopeTransition:
    """A notification due for a cgroup- or host-scope episode (reason "firing" | "repeat" | "resolved").

    Context for the message: the group (path, unit, charge, limit, largest members) or the host breakdown.
    """

    record: AlertRecord
    reason: str
    rule: RuleConfig | None
    at: float
    series: tuple[tuple[float, float], ...] = ()
    detail: str = ""
    group: GroupSample | None = None
    host: HostMemory | None = None
    limit_forecast_s: float | None = None  # seconds until the group's tightest limit at this rate
    forecast_s: float | None = None  # seconds until host MemAvailable runs out at this rate


@dataclass(slots=True)
class _Track:
    window: Window
    name: str
    unit: str | None
    record: AlertRecord | None = None
    pending_since: float | None = None
    pending_wall: float = 0.0
    clear_since: float | None = None
    last_emit: float = 0.0
    fit: Fit | None = None
    group: GroupSample | None = None


@dataclass(slots=True)
class _Cycle:
    snap: Snapshot
    changed: list[AlertRecord] = field(default_factory=list)
    due: list[ScopeTransition] = field(default_factory=list)


def _value(rule: RuleConfig, g: GroupSample | None, host: HostMemory | None) -> float | None:
    """The rule's metric in bytes (negated for a growth rule on `available`: its decline is the growth)."""
    if rule.scope == "host":
        if host is None:
            return None
        kb: int = getattr(host, HOST_METRIC_FIELDS[rule.metric])
        v = kb * 1024.0
        return -v if falls(rule) and rule.kind == "growth" else v
    assert g is not None
    gkb: int | None = getattr(g, GROUP_METRIC_FIELDS[rule.metric])
    return None if gkb is None else gkb * 1024.0


class ScopeEngine:
    """Evaluates cgroup- and host-scope rules and drives their episodes (pending -> firing -> resolved)."""

    def __init__(
        self, rules: Sequence[RuleConfig], open_alerts: Sequence[AlertRecord], repeat_interval_s: float
    ) -> None:
        self._rules: dict[str, RuleConfig] = {}
        self._tracks: dict[str, dict[str, _Track]] = {}
        self._closing: dict[Episode, AlertRecord] = {}
        self._restored: list[AlertRecord] | None = list(open_alerts)
        self._orphans: list[AlertRecord] = []
        self.repeat_interval_s = repeat_interval_s
        self.update_rules(rules)

    @property
    def rule_names(self) -> set[str]:
        return set(self._rules)

    def update_rules(self, rules: Sequence[RuleConfig]) -> None:
        """Apply a reloaded rule set (only the scoped rules are kept; see the process engine for the rest)."""
        new = {r.name: r for r in rules if is_scoped(r)}
        for name, old in self._rules.items():
            r = new.get(name)
            tracks = self._tracks.get(name, {})
            if r is None or (r.kind, r.scope, r.metric, r.window_s) != (
                old.kind,
                old.scope,
                old.metric,
                old.window_s,
            ):
                if r is None or (r.kind, r.scope) != (old.kind, old.scope):
                    self._orphans += [t.record for t in tracks.values() if t.record is not None]
                    self._tracks.pop(name, None)
                else:
                    for t in tracks.values():
                        t.window = Window(r.window_s, compact=True)
                        t.pending_since = t.clear_since = None
                        t.fit = None
        self._rules = new
        for name in new:
            self._tracks.setdefault(name, {})

    def observe(self, snap: Snapshot) -> tuple[list[AlertRecord], list[ScopeTransition]]:
        """Evaluate one snapshot: (records to persist, notifications due)."""
        cyc = _Cycle(snap)
        groups = {g.group: g for g in snap.groups if g.by == "cgroup"}
        if self._restored is not None:
            self._restore(cyc)
        for rec in self._orphans:
            self._resolve(cyc, rec, None, "rule removed from the configuration")
        self._orphans = []
        for rule in self._rules.values():
            tracks = self._tracks[rule.name]
            seen: set[str] = set()
            if rule.scope == "host":
                if snap.host is not None:
                    seen.add(HOST)
                    self._observe_one(cyc, rule, tracks, HOST, None, None)
            else:
                for name, g in groups.items():
                    if rule.match.matches_group(g.cgroup, g.unit):
                        seen.add(name)
                        self._observe_one(cyc, rule, tracks, name, g.unit, g)
            for name in [n for n in tracks if n not in seen]:
                tr = tracks.pop(name)
                if tr.record is not None:
                    why = (
                        "the group has no monitored process any more" if rule.scope == "cgroup" else "no data"
                    )
                    self._resolve(cyc, tr.record, tr, why)
        return cyc.changed, cyc.due

    def mark_notified(self, record: AlertRecord, state: str, at: float) -> AlertRecord:
        """Record a delivered notification; never moves notified_state backwards (see AlertEngine)."""
        ep = (record.rule, record.start_ticks, record.since)
        tr = self._tracks.get(record.rule, {}).get(record.comm)
        if tr is not None and tr.record is not None and _ep(tr.record) == ep:
            cur = tr.record
        else:
            tr = None
            cur = self._closing.get(ep, record)
        if _ORDER.get(cur.notified_state, 0) > _ORDER.get(state, 0):
            return cur
        new = replace(cur, notified_state=state, notified_at=at)
        if tr is not None:
            tr.record = new
        elif ep in self._closing:
            if new.state == "resolved" and state == "resolved":
                del self._closing[ep]
            else:
                self._closing[ep] = new
        return new

    # ----- evaluation -----

    def _observe_one(
        self,
        cyc: _Cycle,
        rule: RuleConfig,
        tracks: dict[str, _Track],
        name: str,
        unit: str | None,
        g: GroupSample | None,
    ) -> None:
        value = _value(rule, g, cyc.snap.host)
        tr = tracks.get(name)
        if tr is None:
            if value is None:
                return
            tr = tracks[name] = _Track(Window(rule.window_s, compact=True), name, unit)
        tr.unit, tr.group = unit, g
        if value is None:
            return  # a charge unreadable for a moment does not end an episode
        appended = tr.window.add(cyc.snap.mono, value)
        self._step(cyc, rule, tr, appended)

    def _fires(self, rule: RuleConfig, v: float) -> bool:
        return v <= rule.threshold if falls(rule) else v >= rule.threshold

    def _clears(self, rule: RuleConfig, v: float) -> bool:
        if falls(rule):
            return v > rule.threshold / THRESHOLD_CLEAR_SHARE
        return v < THRESHOLD_CLEAR_SHARE * rule.threshold

    def _step(self, cyc: _Cycle, rule: RuleConfig, tr: _Track, appended: bool) -> None:
        w, now = tr.window, cyc.snap.mono
        value = w.last
        assert value is not None
        if rule.kind == "growth":
            ready = window_ready(w)
            if (
                tr.record is None
                and tr.pending_since is None
                and not (appended and ready and could_grow(w, rule.min_rate))
            ):
                tr.fit = None
                return
            f = tr.fit = fit(w.t, w.v) if ready else None
            fire = f is not None and growth_verdict(f, rule.min_rate)
            clear: bool | None = None if f is None else growth_cleared(f, rule.min_rate)
            clear_hold = max(rule.for_s, rule.window_s / 2)
            since_wall = cyc.snap.ts - (now - w.t[0])
        else:
            fire = self._fires(rule, value)
            clear = self._clears(rule, value)
            clear_hold = rule.for_s
            since_wall = cyc.snap.ts
            if tr.fit is None and window_ready(w):
                tr.fit = fit(w.t, w.v)
        if tr.record is None:
            if not fire:
                tr.pending_since = None
                return
            if tr.pending_since is None:
                tr.pending_since, tr.pending_wall = now, since_wall
            if now - tr.pending_since >= rule.for_s:
                self._fire(cyc, rule, tr)
            return
        if clear is True:
            if tr.clear_since is None:
                tr.clear_since = now
            if now - tr.clear_since >= clear_hold:
                self._resolve(cyc, tr.record, tr, self._clear_summary(rule, tr))
                tr.record = None
                return
        elif clear is False:
            tr.clear_since = None
        if self.repeat_interval_s > 0 and now - tr.last_emit >= self.repeat_interval_s:
            rec = tr.record = replace(tr.record, value=self._shown(rule, value), rate=self._rate(rule, tr))
            cyc.changed.append(rec)
            cyc.due.append(self._transition(cyc, rule, tr, rec, "repeat"))
            tr.last_emit = now

    @staticmethod
    def _shown(rule: RuleConfig, v: float) -> float:
        return -v if falls(rule) and rule.kind == "growth" else v

    @staticmethod
    def _rate(rule: RuleConfig, tr: _Track) -> float | None:
        """Bytes per second of the watched quantity (for `available` growth rules: of its decline)."""
        return tr.fit.slope if tr.fit is not None else None

    def _fire(self, cyc: _Cycle, rule: RuleConfig, tr: _Track) -> None:
        s = cyc.snap
        value = self._shown(rule, tr.window.last or 0.0)
        rate = self._rate(rule, tr)
        if rule.kind == "threshold":
            op = "≤" if falls(rule) else "≥"
            summary = f"{rule.metric} {format_size(value)} {op} {format_size(rule.threshold)}"
        else:
            assert tr.fit is not None and rate is not None
            word = "falls" if falls(rule) else "+"
            summary = (
                f"{rule.metric} {word}{format_rate(rate)} over {format_duration(tr.fit.span_s)}"
                f" ({tr.fit.describe()})"
            )
        rec = AlertRecord(
            rule=rule.name,
            kind=rule.kind,
            pid=0,
            start_ticks=0 if rule.scope == "host" else group_number(tr.name),
            comm=tr.name,
            unit=tr.unit,
            state="firing",
            since=tr.pending_wall,
            fired_at=s.ts,
            value=value,
            rate=rate,
            summary=summary,
        )
        tr.record = rec
        tr.pending_since = tr.clear_since = None
        tr.last_emit = s.mono
        cyc.changed.append(rec)
        cyc.due.append(self._transition(cyc, rule, tr, rec, "firing"))

    def _clear_summary(self, rule: RuleConfig, tr: _Track) -> str:
        if rule.kind == "threshold":
            v = tr.window.last or 0.0
            if falls(rule):
                return (
                    f"{rule.metric} {format_size(v)} > {format_size(rule.threshold / THRESHOLD_CLEAR_SHARE)}"
                )
            return f"{rule.metric} {format_size(v)} < {format_size(THRESHOLD_CLEAR_SHARE * rule.threshold)}"
        slope = tr.fit.slope if tr.fit is not None else 0.0
        floor = format_rate(CLEAR_RATE_SHARE * rule.min_rate)
        return f"growth stopped: {rule.metric} {format_rate(slope)} (< {floor})"

    def _resolve(self, cyc: _Cycle, rec: AlertRecord, tr: _Track | None, why: str) -> None:
        s = cyc.snap
        rule = self._rules.get(rec.rule)
        value = rec.value
        if tr is not None and len(tr.window) and rule is not None:
            value = self._shown(rule, tr.window.last or 0.0)
        rate = tr.fit.slope if tr is not None and tr.fit is not None else rec.rate
        done = replace(rec, state="resolved", resolved_at=s.ts, value=value, rate=rate, summary=why)
        cyc.changed.append(done)
        if tr is not None and rule is not None:
            cyc.due.append(self._transition(cyc, rule, tr, done, "resolved"))
        else:
            cyc.due.append(ScopeTransition(done, "resolved", rule, s.ts))
        self._closing[_ep(done)] = done

    def _transition(
        self, cyc: _Cycle, rule: RuleConfig, tr: _Track, rec: AlertRecord, reason: str
    ) -> ScopeTransition:
        s = cyc.snap
        rate = rec.rate
        growing = reason != "resolved" and rate is not None and rate > 0
        limit_fc = None
        g = tr.group
        if growing and g is not None and g.free_kb is not None and rate:
            limit_fc = g.free_kb * 1024.0 / rate
        host_fc = None
        if growing and rate and s.meminfo is not None and not falls(rule):
            host_fc = s.meminfo.mem_available_kb * 1024.0 / rate
        elif growing and rate and falls(rule) and rule.kind == "growth" and s.host is not None:
            host_fc = s.host.available_kb * 1024.0 / rate
        series = tr.window.series(s.ts, s.mono)
        if falls(rule) and rule.kind == "growth":
            series = tuple((t, -v) for t, v in series)
        return ScopeTransition(
            record=rec,
            reason=reason,
            rule=rule,
            at=s.ts,
            series=series,
            detail=tr.fit.describe() if tr.fit is not None else "",
            group=g,
            host=s.host,
            limit_forecast_s=limit_fc,
            forecast_s=host_fc,
        )

    def _restore(self, cyc: _Cycle) -> None:
        """First snapshot after start: adopt open episodes without re-sending them."""
        restored, self._restored = self._restored or [], None
        s = cyc.snap
        for rec in restored:
            rule = self._rules.get(rec.rule)
            if rec.state == "resolved":
                if rec.notified_state != "resolved":
                    cyc.due.append(ScopeTransition(rec, "resolved", rule, s.ts))
                    self._closing[_ep(rec)] = rec
                continue
            if rec.state != "firing":
                continue
            if rule is None or rule.kind != rec.kind:
                self._resolve(cyc, rec, None, "rule removed from the configuration")
                continue
            tr = _Track(Window(rule.window_s, compact=True), rec.comm, rec.unit, record=rec)
            last = rec.notified_at or rec.fired_at or rec.since
            tr.last_emit = s.mono - min(max(s.ts - last, 0.0), self.repeat_interval_s)
            self._tracks[rule.name][rec.comm] = tr


def _ep(r: AlertRecord) -> Episode:
    return (r.rule, r.start_ticks, r.since)


def largest_text(members: Sequence[GroupMember]) -> str:
    """ "api (pid 12) 300M, worker (pid 13) 120M" """
    return ", ".join(f"{m.comm} (pid {m.pid}) {format_size(m.rss_kb * 1024.0)}" for m in members)
