"""Pure alert lifecycle: pending -> firing -> resolved, per rule and per process identity.

AlertEngine.observe() takes one merged Snapshot and returns the records to persist and the notifications that
are due. It reads no clock: windows, `for`, hysteresis and the repeat interval run on snap.mono;
snap.ts (wall) is only written into records for display, so a wall-clock step changes no decision.

Only firing and resolved records are persisted: a pending condition lives in memory (its window does too),
so a restart starts pending from scratch, while a firing episode comes back from the store through
`open_alerts` and
is neither forgotten nor re-sent (notified_state says what was already delivered).
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from memwatchd.alerts.axis import Axis, Series
from memwatchd.alerts.fit import Fit, Window, fit, forecast_s, metric_value
from memwatchd.alerts.kinds import kind_of
from memwatchd.alerts.kinds.oom import OomKind
from memwatchd.config import RuleConfig
from memwatchd.models import AlertRecord, OomKill, ProcessSnapshot, Snapshot

OOM_HISTORY_S = 300.0  # rss history kept per process for OOM messages
OOM_HISTORY_POINTS = 30  # at 10 s resolution: enough for the message, small for 10,000 processes
OOM_GRACE_S = 30.0  # history of a vanished process is kept this long: the OOM event may arrive a cycle later
MAX_GONE = 1024  # cap on vanished histories kept (process churn)
MAX_CLOSING = 10000  # resolved episodes waiting for their notification to be confirmed
_ORDER = {None: 0, "pending": 0, "firing": 1, "resolved": 2}

Episode = tuple[str, int, int, float]
# (pid, start_ticks): a plain tuple hashes in C; ProcKey's generated __hash__ costs ~10x at 10,000
# processes per cycle
Key = tuple[int, int]


def episode(r: AlertRecord) -> Episode:
    """What identifies one alert episode: rule, process identity, and when the condition began."""
    return (r.rule, r.pid, r.start_ticks, r.since)


@dataclass(frozen=True, slots=True)
class Transition:
    """A notification is due for `record` (state "firing" or "resolved").

    reason: "firing" | "resolved" | "repeat". series: (wall ts, value) points of the window (for OOM: the
    victim's rss history). The remaining fields are context for the message only.
    """

    record: AlertRecord
    reason: str
    series: tuple[tuple[float, float], ...] = ()
    at: float = 0.0  # wall time of the observation that made it due
    rule: RuleConfig | None = None
    forecast_s: float | None = None  # seconds until host MemAvailable is used up at record.rate
    mem_available: float | None = None  # bytes, host MemAvailable at `at`
    detail: str = ""  # fit quality, for the message
    limit_forecast_s: float | None = None  # seconds until the process's memory cgroup limit is reached
    limit_cgroup: str | None = None  # the cgroup level whose limit is tightest
    limit_bytes: float | None = None
    cgroup: str | None = None  # OOM: the victim's memory cgroup as last seen by /proc
    oom_scope: str | None = None  # OOM kills: "cgroup-local: cgroup /x reached its limit (32M)" or host-wide


def _recency(sn: _Seen) -> float:
    """Still present beats gone; among gone, the latest to go."""
    return math.inf if sn.gone_at is None else sn.gone_at


class _Track(Series):
    """Mutable state of one rule for one process identity: its window (a Series on the rule's Axis, one
    object with the state below: ~100 bytes less per process than two) and its episode."""

    __slots__ = (
        "comm",
        "unit",
        "record",
        "pending_since",
        "pending_wall",
        "confirmed",
        "watch",
        "clear_since",
        "last_emit",
        "fit",
    )

    def __init__(
        self, rule: RuleConfig, comm: str, unit: str | None, record: AlertRecord | None = None
    ) -> None:
        super().__init__(with_counter=kind_of(rule.kind).keeps_counter)
        self.comm = comm
        self.unit = unit
        self.record = record  # the open (firing) episode
        self.pending_since: float | None = None  # mono: the fire condition has held since
        self.pending_wall = 0.0  # wall time the evidence starts (becomes record.since)
        self.confirmed = False  # strong evidence was seen while pending (growth and leak rules)
        # the window could show growth: looked at every cycle even when its record is unchanged
        self.watch = False
        self.clear_since: float | None = None  # mono: the clear condition has held since
        self.last_emit = 0.0  # mono of the last notification made due
        self.fit: Fit | None = None


@dataclass(slots=True)
class _Seen:
    """Short rss history of a process, for OOM messages; kept a little after the process vanishes."""

    window: Window
    comm: str
    unit: str | None
    cgroup: str | None = None
    gone_at: float | None = None
    upto: float | None = None


@dataclass(slots=True)
class _Cycle:
    snap: Snapshot
    changed: list[AlertRecord] = field(default_factory=list)
    due: list[Transition] = field(default_factory=list)


class AlertEngine:
    """Evaluates rules per process identity and drives each alert episode's lifecycle."""

    def __init__(
        self, rules: Sequence[RuleConfig], open_alerts: Sequence[AlertRecord], repeat_interval_s: float
    ) -> None:
        self._rules: dict[str, RuleConfig] = {}
        self._tracks: dict[str, dict[Key, _Track]] = {}
        self._axes: dict[str, Axis] = {}  # per rule with windows: the point times its tracks share
        self._seen: dict[Key, _Seen] = {}
        self._closing: dict[Episode, AlertRecord] = {}
        self._restored: list[AlertRecord] | None = list(open_alerts)
        self._orphans: list[AlertRecord] = []  # open episodes of rules removed by a reload
        self.repeat_interval_s = repeat_interval_s
        # Work in proportion to change. A process whose record did not change since the previous snapshot is
        # not looked at: its windows are caught up with its (unchanged) value when it next changes, from the
        # shared time axis of the snapshots seen (Window.add_run), which gives the same points as adding it
        # every time. Tracks with an open, pending or clearing episode are looked at every time ("active").
        self._axis = array("d")  # mono of every snapshot observed, over the longest window
        self._keep_s = OOM_HISTORY_S
        self._present: dict[Key, ProcessSnapshot] | None = None
        self._seq: int | None = None
        self._active: dict[str, set[Key]] = {}
        self._recheck: set[str] = set()  # rules to evaluate over every present process at the next observe
        self._gone_q: deque[tuple[float, Key]] = deque()  # (gone_at, key) of vanished OOM histories
        self._donated: dict[Key, _Track] = {}  # donor tracks of processes gone this snapshot
        self.update_rules(rules)

    # ----- public API -----

    def shrink(self) -> None:
        """Per-process tables sized for the processes there are (see Merger.shrink)."""
        self._tracks = {name: dict(t) for name, t in self._tracks.items()}
        self._seen = dict(self._seen)
        if self._present is not None:
            self._present = dict(self._present)
        self._active = {name: set(a) for name, a in self._active.items()}

    def update_rules(self, rules: Sequence[RuleConfig]) -> None:
        """Apply a reloaded rule set.

        Unchanged rules keep their windows and alerts; a changed metric or window restarts the rule's windows
        (alerts stay open); alerts of removed rules resolve at the next observe.
        """
        new = {r.name: r for r in rules}
        for name, old in self._rules.items():
            r = new.get(name)
            tracks = self._tracks.get(name, {})
            if r is None or r.kind != old.kind:
                self._orphans += [t.record for t in tracks.values() if t.record is not None]
                self._tracks.pop(name, None)
                self._active.pop(name, None)
                self._axes.pop(name, None)
            elif (r.metric, r.window_s) != (old.metric, old.window_s):
                self._axes.pop(name, None)
                for t in tracks.values():
                    t.reset()
                    t.pending_since = t.clear_since = None
                    t.fit = None
        for name, r in new.items():
            if self._rules.get(name) != r:
                self._recheck.add(name)  # new or changed: every present process is looked at once
        self._rules = new
        for name, r in new.items():
            self._tracks.setdefault(name, {})
            self._active.setdefault(name, set())
            if not kind_of(r.kind).instant and name not in self._axes:
                self._axes[name] = Axis(r.window_s)
        self._keep_s = max([OOM_HISTORY_S] + [r.window_s for r in new.values() if r.window_s > 0]) + 60.0

    def observe(self, snap: Snapshot) -> tuple[list[AlertRecord], list[Transition]]:
        """Evaluate one snapshot: returns (records to persist, notifications due)."""
        cyc = _Cycle(snap)
        self._advance_axis(snap.mono)
        for ax in self._axes.values():
            ax.advance(snap.mono)
        changed, gone = self._changes(snap)
        present = self._present
        assert present is not None
        if self._restored is not None:
            self._restore(cyc, present)
        for rec in self._orphans:
            self._resolve_record(cyc, rec, None, "rule removed from the configuration")
        self._orphans = []
        donor = self._donor
        self._donated = {}
        for rule in self._rules.values():
            if not kind_of(rule.kind).instant:
                items = list(present.items()) if rule.name in self._recheck else changed
                self._evaluate_rule(cyc, rule, items, gone, rule.name == donor)
        # OOM histories after the rules: a process the donor rule tracks needs none of its own
        self._update_seen(snap, changed, gone)
        for rule in self._rules.values():
            if kind_of(rule.kind).instant:
                for oom in snap.ooms:
                    self._oom(cyc, rule, oom)
        self._recheck.clear()
        return cyc.changed, cyc.due

    def _changes(self, snap: Snapshot) -> tuple[list[tuple[Key, ProcessSnapshot]], list[Key]]:
        """(live processes whose record changed, identities gone) since the previous snapshot observed."""
        present = self._present
        if (
            present is not None
            and snap.fresh is not None
            and snap.base_seq is not None
            and snap.base_seq == self._seq
        ):
            gone = list(snap.gone)
            for k in gone:
                present.pop(k, None)
            changed = []
            for p in snap.fresh:
                k = p.ident
                if p.exited:
                    if present.pop(k, None) is not None:
                        gone.append(k)
                else:
                    present[k] = p
                    changed.append((k, p))
        else:  # no change list, or not relative to the last snapshot seen: compare every record
            new = {p.ident: p for p in snap.processes if not p.exited}
            old = present or {}
            changed = [(k, p) for k, p in new.items() if old.get(k) is not p]
            gone = [k for k in old if k not in new]
            self._present = new
        self._seq = snap.seq
        return changed, gone

    def _advance_axis(self, now: float) -> None:
        axis = self._axis
        if axis and now < axis[-1]:
            del axis[:]  # cannot happen with a monotonic clock; never mix two time bases
        axis.append(now)
        cut = bisect_right(axis, now - self._keep_s)
        if cut > 256:  # trimmed in batches: deleting from the front moves the rest
            del axis[:cut]

    def _catch_up(self, w: Window, upto: float | None, end: int) -> None:
        """Add the window's last value at the snapshots after `upto` before axis index `end`."""
        if upto is None or not len(w):
            return
        axis = self._axis
        i = bisect_right(axis, upto)
        if i < end:
            w.add_run(axis, i, end, w.v[-1], w.c[-1] if w.c is not None else None)

    def _view(self, rule: str, tr: _Track) -> Window:
        """The track's points as a Window (what kinds judge and messages show)."""
        return tr.view(self._axes[rule])

    def _add(self, w: Window, upto: float | None, now: float, value: float, counter: float | None) -> bool:
        """Window.add(now, ...) after catching the window up with the snapshots it was not shown."""
        self._catch_up(w, upto, len(self._axis) - 1)
        return w.add(now, value, counter)

    def mark_notified(self, record: AlertRecord, state: str, at: float) -> AlertRecord:
        """Record that a notification for `record` in `state` was delivered at wall time `at`.

        Pass record.state. Returns the engine's current version of the episode to persist; a late confirmation
        of an older state (firing confirmed after the episode resolved) never moves notified_state backwards.
        """
        if kind_of(record.kind).instant:
            state = record.state  # fired and resolved at once: one message covers both
        ep = episode(record)
        tr = self._tracks.get(record.rule, {}).get((record.pid, record.start_ticks))
        if tr is not None and tr.record is not None and episode(tr.record) == ep:
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

    def open_alerts(self) -> list[AlertRecord]:
        """Firing episodes currently held (for status output, every cycle).

        A track with an open episode is always in its rule's active set: only those are looked at.
        """
        out = []
        for name, keys in self._active.items():
            tracks = self._tracks.get(name, {})
            for k in keys:
                t = tracks.get(k)
                if t is not None and t.record is not None:
                    out.append(t.record)
        return out

    # ----- evaluation -----

    def _evaluate_rule(
        self,
        cyc: _Cycle,
        rule: RuleConfig,
        items: list[tuple[Key, ProcessSnapshot]],
        gone: list[Key],
        donor: bool = False,
    ) -> None:
        tracks = self._tracks[rule.name]
        active = self._active[rule.name]
        for key, p in items:
            self._observe_one(cyc, rule, tracks, active, key, p, fresh=True)
        if active:
            present = self._present
            assert present is not None
            done = {k for k, _ in items} if len(items) < len(present) else present.keys()
            for key in [k for k in active if k not in done]:
                cur = present.get(key)
                if cur is not None:
                    self._observe_one(cyc, rule, tracks, active, key, cur)
                else:  # an episode restored from the store whose process is not here
                    gone.append(key)
        axis = self._axes[rule.name]
        for key in dict.fromkeys(gone):
            tr = tracks.pop(key, None)
            active.discard(key)
            if tr is not None and (tr.record is not None or donor):
                # it was last seen at the previous snapshot
                tr.catch_up(axis, axis.last - 1 if axis.new else axis.last)
                if donor:
                    self._donated[key] = tr  # its rss history outlives it a little, for an OOM message
            if tr is not None and tr.record is not None:
                self._resolve_record(cyc, tr.record, tr, "process exited")

    def _observe_one(
        self,
        cyc: _Cycle,
        rule: RuleConfig,
        tracks: dict[Key, _Track],
        active: set[Key],
        key: Key,
        p: ProcessSnapshot,
        fresh: bool = False,
    ) -> None:
        if not rule.match.matches(p.comm, p.unit):
            tr = tracks.pop(key, None)
            active.discard(key)
            if tr is not None and tr.record is not None:
                self._resolve_record(cyc, tr.record, tr, "process no longer matches the rule")
            return
        kind = kind_of(rule.kind)
        value = metric_value(p, rule.metric)
        tr = tracks.get(key)
        if tr is None:
            if value is None or value <= 0:
                return  # kernel threads, no BPF data: nothing to watch yet
            if not kind.worth_tracking(rule, value):
                return  # far from firing: no state needed
            tr = tracks[key] = _Track(rule, p.comm, p.unit)
        elif value is not None and tr.record is None and not kind.worth_tracking(rule, value):
            del tracks[key]
            active.discard(key)
            return
        tr.comm, tr.unit = p.comm, p.unit
        if value is None:
            tr.stop_carry()  # a source missing for a moment does not end an episode; no points now
            return
        appended = tr.add(self._axes[rule.name], value, kind.counter(p))
        # a changed record is always worth a look (the window's newest point may only have been replaced)
        self._step(cyc, rule, tr, key, appended or fresh)
        if tr.record is not None or tr.pending_since is not None or tr.clear_since is not None or tr.watch:
            active.add(key)
        else:
            active.discard(key)

    def _step(self, cyc: _Cycle, rule: RuleConfig, tr: _Track, key: Key, appended: bool) -> None:
        w, now = self._view(rule.name, tr), cyc.snap.mono
        value = w.last
        assert value is not None
        j = kind_of(rule.kind).judge(
            rule,
            w,
            idle=tr.record is None and tr.pending_since is None,
            appended=appended,
            now=now,
            wall=cyc.snap.ts,
            current=tr.fit,
        )
        # a window the kind looked at (it could show growth) is looked at next cycle even when the record
        # does not change: a stair's last step shows in the slice medians only some seconds after it happened
        # (a sample that only replaced the window's newest point says nothing new: the watch stays as it was)
        tr.watch = j is not None or (tr.watch and not appended)
        if j is None:
            tr.fit = None
            return
        tr.fit = j.fit
        fire, clear, clear_hold, since_wall = j.fire, j.clear, j.clear_hold_s, j.since_wall
        confirm = fire if j.confirm is None else j.confirm
        if tr.record is None:
            if not fire:
                tr.pending_since = None
                tr.confirmed = False
                return
            if tr.pending_since is None:
                tr.pending_since, tr.pending_wall = now, since_wall
            tr.confirmed = tr.confirmed or confirm
            if tr.confirmed and now - tr.pending_since >= rule.for_s:
                self._fire(cyc, rule, tr, key)
            return
        if clear is True:
            if tr.clear_since is None:
                tr.clear_since = now
            if now - tr.clear_since >= clear_hold:
                self._resolve_record(cyc, tr.record, tr, self._clear_summary(rule, tr))
                tr.record = None
                return
        elif clear is False:
            tr.clear_since = None
        if self.repeat_interval_s > 0 and now - tr.last_emit >= self.repeat_interval_s:
            rec = tr.record = replace(tr.record, value=value, rate=self._rate(rule, tr))
            cyc.changed.append(rec)
            cyc.due.append(self._transition(cyc, rule, tr, rec, "repeat"))
            tr.last_emit = now

    def _rate(self, rule: RuleConfig, tr: _Track) -> float | None:
        tr.fit = kind_of(rule.kind).rate_fit(self._view(rule.name, tr), tr.fit)
        return tr.fit.slope if tr.fit is not None else None

    def _fire(self, cyc: _Cycle, rule: RuleConfig, tr: _Track, key: Key) -> None:
        s = cyc.snap
        value = tr.last
        rate = self._rate(rule, tr)
        assert value is not None
        summary = kind_of(rule.kind).fire_summary(rule, value, rate, tr.fit)
        rec = AlertRecord(
            rule=rule.name,
            kind=rule.kind,
            pid=key[0],
            start_ticks=key[1],
            comm=tr.comm,
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
        return kind_of(rule.kind).clear_summary(rule, tr.last, tr.fit)

    def _resolve_record(self, cyc: _Cycle, rec: AlertRecord, tr: _Track | None, why: str) -> None:
        s = cyc.snap
        value = tr.last if tr is not None and len(tr) else rec.value
        rate = tr.fit.slope if tr is not None and tr.fit is not None else rec.rate
        done = replace(rec, state="resolved", resolved_at=s.ts, value=value, rate=rate, summary=why)
        cyc.changed.append(done)
        rule = self._rules.get(rec.rule)
        if tr is not None and rule is not None:
            cyc.due.append(self._transition(cyc, rule, tr, done, "resolved"))
        else:
            cyc.due.append(Transition(done, "resolved", at=s.ts, rule=rule))
        self._remember_closing(done)

    def _remember_closing(self, rec: AlertRecord) -> None:
        self._closing[episode(rec)] = rec
        while len(self._closing) > MAX_CLOSING:
            del self._closing[next(iter(self._closing))]

    def _transition(
        self, cyc: _Cycle, rule: RuleConfig, tr: _Track, rec: AlertRecord, reason: str
    ) -> Transition:
        s = cyc.snap
        avail = s.meminfo.mem_available_kb * 1024.0 if s.meminfo is not None else None
        return Transition(
            record=rec,
            reason=reason,
            series=self._view(rule.name, tr).series(s.ts, s.mono),
            at=s.ts,
            rule=rule,
            forecast_s=forecast_s(rec.rate, s.meminfo) if reason != "resolved" else None,
            mem_available=avail,
            detail=tr.fit.describe() if tr.fit is not None else "",
        )

    # ----- restart -----

    def _restore(self, cyc: _Cycle, present: dict[Key, ProcessSnapshot]) -> None:
        """First snapshot after start: adopt open episodes from the store without re-sending them."""
        restored, self._restored = self._restored or [], None
        s = cyc.snap
        for rec in restored:
            if rec.state == "resolved":
                if rec.notified_state != "resolved":
                    cyc.due.append(Transition(rec, "resolved", at=s.ts, rule=self._rules.get(rec.rule)))
                    self._remember_closing(rec)
                continue
            if rec.state != "firing":
                continue  # pending is never persisted; tolerate it anyway
            rule = self._rules.get(rec.rule)
            if rule is None or rule.kind != rec.kind:
                self._resolve_record(cyc, rec, None, "rule removed from the configuration")
                continue
            key = (rec.pid, rec.start_ticks)
            tr = _Track(rule, rec.comm, rec.unit, record=rec)
            # the repeat clock continues from the last delivery; wall time is all the store has
            last = rec.notified_at or rec.fired_at or rec.since
            tr.last_emit = s.mono - min(max(s.ts - last, 0.0), self.repeat_interval_s)
            self._tracks[rule.name][key] = tr
            self._active[rule.name].add(key)
            if rec.notified_state != "firing" and key in present:
                tr.last_emit = s.mono
                cyc.due.append(self._transition(cyc, rule, tr, rec, "firing"))

    # ----- OOM -----

    @property
    def _donor(self) -> str | None:
        """A rule whose windows already hold every process's rss history (OOM messages borrow it).

        An rss rule over all processes with a window at least OOM_HISTORY_S long (the shipped rss-growth
        rule): then the OOM kind keeps no history of its own for the processes it tracks.
        """
        if not any(kind_of(r.kind).keeps_history for r in self._rules.values()):
            return None
        for r in self._rules.values():
            if (
                r.metric == "rss"
                and not kind_of(r.kind).instant
                and r.kind != "threshold"  # keeps windows only near its threshold
                and r.window_s >= OOM_HISTORY_S
                and r.scope == "process"
                and (r.match.comm, r.match.unit, r.match.cgroup) == (None, None, None)
            ):
                return r.name
        return None

    def _update_seen(
        self, snap: Snapshot, changed: list[tuple[Key, ProcessSnapshot]], gone: list[Key]
    ) -> None:
        if not any(kind_of(r.kind).keeps_history for r in self._rules.values()):
            self._seen.clear()
            self._gone_q.clear()
            return
        now = snap.mono
        seen = self._seen
        donor = self._donor
        lent = self._tracks.get(donor, {}) if donor is not None else {}
        for key, p in changed:
            sn = seen.get(key)
            if key in lent:
                if sn is not None and sn.gone_at is None:
                    del seen[key]  # the donor rule's window holds its history now
                continue
            if not p.rss_kb:
                if sn is not None:
                    sn.upto = None
                    sn.gone_at = None
                continue
            if sn is None:
                sn = seen[key] = _Seen(
                    Window(OOM_HISTORY_S, compact=True, max_points=OOM_HISTORY_POINTS), p.comm, p.unit
                )
            sn.comm, sn.unit, sn.cgroup, sn.gone_at = p.comm, p.unit, p.cgroup, None
            self._add(sn.window, sn.upto, now, p.rss_kb * 1024.0, None)
            sn.upto = now
        q = self._gone_q
        for key in gone:
            sn = seen.get(key)
            tr = self._donated.get(key)
            if tr is not None and donor is not None and (sn is None or sn.gone_at is None):
                sn = seen[key] = _Seen(self._view(donor, tr), tr.comm, tr.unit)
            if sn is not None and sn.gone_at is None:
                self._catch_up(sn.window, sn.upto, len(self._axis) - 1)  # it was last seen before now
                sn.upto = None
                sn.gone_at = now
                q.append((now, key))
        self._donated = {}
        while q and (now - q[0][0] > OOM_GRACE_S or len(q) > MAX_GONE):
            at, key = q.popleft()
            sn = seen.get(key)
            if sn is not None and sn.gone_at == at:
                del seen[key]

    def _victim(self, pid: int) -> tuple[Key, _Seen] | None:
        best: tuple[Key, _Seen] | None = None
        for key, sn in self._seen.items():
            if key[0] == pid and (best is None or _recency(sn) > _recency(best[1])):
                best = (key, sn)
        donor = self._donor
        if donor is not None and (best is None or best[1].gone_at is not None):
            for key, tr in self._tracks.get(donor, {}).items():
                if key[0] == pid:  # still here: its history is the donor rule's window, through this snapshot
                    axis = self._axes[donor]
                    tr.catch_up(axis, axis.last)
                    best = (key, _Seen(self._view(donor, tr), tr.comm, tr.unit))
                    break
        if best is not None and best[1].gone_at is None:
            self._catch_up(best[1].window, best[1].upto, len(self._axis))  # through this snapshot
            if self._axis:
                best[1].upto = self._axis[-1]
        return best

    def _oom(self, cyc: _Cycle, rule: RuleConfig, oom: OomKill) -> None:
        s = cyc.snap
        found = self._victim(oom.pid)
        unit = found[1].unit if found else None
        if not rule.match.matches(oom.comm, unit):
            return
        kill_mono = oom.mono_ns / 1e9
        kill_wall = s.ts - (s.mono - kill_mono) if 0 < s.mono - kill_mono < 86400 else s.ts
        series: tuple[tuple[float, float], ...] = ()
        rate = None
        if found is not None:
            w = found[1].window
            keep = bisect_left(w.t, s.mono - OOM_HISTORY_S)  # a borrowed window is longer
            series = w.series(s.ts, s.mono)[keep:]
            f = fit(w.t[keep:], w.v[keep:])
            rate = f.slope if f is not None else None
        k = 1024
        kind = kind_of(rule.kind)
        assert isinstance(kind, OomKind)
        rec = AlertRecord(
            rule=rule.name,
            kind=rule.kind,
            pid=oom.pid,
            start_ticks=found[0][1] if found else 0,
            comm=oom.comm,
            unit=unit,
            state="resolved",  # an OOM kill is over when we hear of it: one message, nothing to clear
            since=kill_wall,
            fired_at=s.ts,
            resolved_at=s.ts,
            value=float((oom.anon_rss_kb + oom.file_rss_kb + oom.shmem_rss_kb) * k),
            rate=rate,
            summary=kind.kill_summary(oom),
        )
        cyc.changed.append(rec)
        avail = s.meminfo.mem_available_kb * 1024.0 if s.meminfo is not None else None
        cgroup = found[1].cgroup if found else None
        cyc.due.append(
            Transition(rec, "firing", series, at=s.ts, rule=rule, mem_available=avail, cgroup=cgroup)
        )
