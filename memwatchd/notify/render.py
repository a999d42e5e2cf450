"""Telling, the pure half: render alert transitions into messages (no I/O, no clock reads).

Delivery lives in memwatchd.notify.deliverer.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from memwatchd.alerts.engine import Transition
from memwatchd.alerts.kinds import kind_of
from memwatchd.config import RuleConfig
from memwatchd.models import AlertRecord
from memwatchd.text import shown
from memwatchd.units import format_duration, format_rate, format_size

log = logging.getLogger("memwatchd.notify")

SPARK = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 24
MAX_GROUP_LINES = 20
QUEUE_MAX = 256
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0
CHILD_STARTUP_S = 10.0  # python + import apprise, on a loaded host


@dataclass(frozen=True, slots=True)
class Message:
    """One notification: sent to every URL in `urls`; `records` are the episodes it tells about."""

    title: str
    body: str
    urls: tuple[str, ...]
    records: tuple[AlertRecord, ...]
    reasons: tuple[str, ...]


# ----- rendering (pure) -----


def sparkline(values: Sequence[float], width: int = SPARK_WIDTH) -> str:
    """▁▂▃▄▅▆▇█ of the values, averaged down to at most `width` characters."""
    if not values:
        return ""
    if len(values) > width:
        n = len(values)
        values = [
            sum(values[i * n // width : (i + 1) * n // width]) / max(1, (i + 1) * n // width - i * n // width)
            for i in range(width)
        ]
    lo, hi = min(values), max(values)
    if hi <= lo:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(7, int((v - lo) / (hi - lo) * 8))] for v in values)


def _local(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


def _hm(ts: float) -> str:
    return time.strftime("%H:%M", time.localtime(ts))


def _proc(r: AlertRecord) -> str:
    unit = f", unit {r.unit}" if r.unit else ""
    return f"{r.comm} (pid {r.pid}{unit})"


def _metric(t: Transition) -> str:
    return t.rule.metric if t.rule is not None else "rss"


def _since_arg(t: Transition) -> str:
    """A --since wide enough to show the whole episode and the window before it."""
    r = t.record
    end = r.resolved_at or t.at or r.fired_at or r.since
    window = t.rule.window_s if t.rule is not None else 0.0
    span = max(0.0, end - r.since) + max(window, 300.0)
    for step, text in ((600, "10m"), (3600, "1h"), (6 * 3600, "6h"), (86400, "1d"), (7 * 86400, "7d")):
        if span <= step:
            return text
    return f"{int(span // 86400) + 1}d"


def _rule_text(rule: RuleConfig | None) -> str:
    if rule is None:
        return "(rule no longer configured)"
    return kind_of(rule.kind).rule_text(rule)


def _forecast(t: Transition) -> str:
    parts = []
    if t.limit_forecast_s is not None and t.limit_bytes is not None:
        parts.append(
            f"cgroup {t.limit_cgroup} reaches its limit ({format_size(t.limit_bytes)}) in"
            f" ~{format_duration(t.limit_forecast_s)}"
        )
    if t.forecast_s is not None and t.mem_available is not None:
        parts.append(
            f"host MemAvailable ({format_size(t.mem_available)}) runs out in ~{format_duration(t.forecast_s)}"
        )
    return "; ".join(parts) + " at this rate" if parts else ""


def _window_line(t: Transition) -> str:
    vals = [v for _, v in t.series]
    if len(vals) < 2:
        return ""
    span = t.series[-1][0] - t.series[0][0]
    return f"{sparkline(vals)} {format_size(vals[0])} → {format_size(vals[-1])} over {format_duration(span)}"


def _headline(t: Transition) -> str:
    """The short state of one process: used in titles and group lines."""
    return kind_of(t.record.kind).headline(t)


def _label(reason: str, kind: str) -> str:
    k = kind_of(kind)
    if k.instant:
        return k.event_label
    return {"firing": "FIRING", "repeat": "STILL FIRING", "resolved": "RESOLVED"}[reason]


def _single(t: Transition, host: str) -> tuple[str, str]:
    r = t.record
    label = _label(t.reason, r.kind)
    title = f"[memwatchd] {label} {r.rule}: {r.comm} (pid {r.pid}) {_headline(t)} on {host}"
    instant = kind_of(r.kind).instant
    if t.reason == "resolved" and not instant:
        title = f"[memwatchd] RESOLVED {r.rule}: {r.comm} (pid {r.pid}) on {host}"
    lines = [f"{label}: {r.rule} on {host}"]
    if instant:
        lines += [
            f"Victim:   {_proc(r)}",
            f"Killed:   {_local(r.since)}",
            f"Memory:   {r.summary}",
        ]
        if t.oom_scope:
            lines.append(f"Scope:    {t.oom_scope}")
        if len(t.series) >= 2:
            lines.append(f"History:  {_window_line(t)}")
            lines += _history_table(t.series)
        else:
            lines.append("History:  none (the process was not seen before it was killed)")
        if t.mem_available is not None and not (t.oom_scope or "").startswith("cgroup-local"):
            lines.append(f"Host:     MemAvailable {format_size(t.mem_available)} now")
    else:
        lines += [f"Process:  {_proc(r)}", f"Rule:     {_rule_text(t.rule)}"]
        if t.reason == "resolved":
            lines.append(f"Why:      {r.summary}")
            lasted = (r.resolved_at or t.at) - r.since
            lines.append(f"Since:    {_local(r.since)} (lasted {format_duration(lasted)})")
        else:
            rate = f"+{format_rate(r.rate)}" if r.rate is not None else "-"
            detail = f" ({t.detail})" if t.detail and kind_of(r.kind).shows_fit else ""
            lines.append(f"Rate:     {rate}{detail}")
            lines.append(
                f"Since:    {_local(r.since)}"
                f" (for {format_duration((t.at or r.fired_at or r.since) - r.since)})"
            )
        lines.append(f"Now:      {_metric(t)} {format_size(r.value)}")
        wl = _window_line(t)
        if wl:
            lines.append(f"Window:   {wl}")
        fc = _forecast(t)
        if fc:
            lines.append(f"Forecast: {fc}")
    lines.append(f"Next:     memwatchctl history --pid {r.pid} --since {_since_arg(t)}")
    return title, "\n".join(lines)


def _history_table(series: tuple[tuple[float, float], ...]) -> list[str]:
    """About one line per minute of the victim's last minutes: when on-call asks "how fast did it go?"."""
    out: list[str] = []
    last_ts = None
    for ts, v in series:
        if last_ts is None or ts - last_ts >= 60 or (ts, v) == series[-1]:
            out.append(f"          {time.strftime('%H:%M:%S', time.localtime(ts))}  {format_size(v)}")
            last_ts = ts
    return out[-8:]


def _group(ts: Sequence[Transition], host: str) -> tuple[str, str]:
    r0 = ts[0].record
    n_fire = sum(1 for t in ts if t.reason != "resolved" or kind_of(t.record.kind).instant)
    n_res = len(ts) - n_fire
    k0 = kind_of(r0.kind)
    if k0.instant:
        label, what = k0.event_label, f"{len(ts)} {k0.event_group}"
    elif n_fire and n_res:
        label, what = "FIRING", f"{n_fire} firing, {n_res} resolved"
    elif n_fire:
        label = "STILL FIRING" if all(t.reason == "repeat" for t in ts) else "FIRING"
        what = f"{n_fire} processes"
    else:
        label, what = "RESOLVED", f"{n_res} processes"
    title = f"[memwatchd] {label} {r0.rule}: {what} on {host}"
    lines = [f"{label}: {r0.rule} on {host}, {what}", f"Rule:     {_rule_text(ts[0].rule)}", ""]
    ordered = sorted(
        ts, key=lambda t: (t.reason == "resolved", -(t.record.rate or 0), -(t.record.value or 0))
    )
    for t in ordered[:MAX_GROUP_LINES]:
        r = t.record
        unit = f", {r.unit}" if r.unit else ""
        head = f"  {r.comm} (pid {r.pid}{unit}): "
        if kind_of(r.kind).instant:
            # each victim keeps its breakdown (OOM: anon/file/shmem at the kill) and its scope
            where = f"; {t.oom_scope}" if t.oom_scope else ""
            lines.append(head + f"{_headline(t)} ({r.summary.split(': ', 1)[-1]}){where}")
        elif t.reason == "resolved":
            lines.append(head + f"RESOLVED, {r.summary}")
        else:
            spark = sparkline([v for _, v in t.series], 12)
            since = f"since {_hm(r.since)} ({format_duration((t.at or r.since) - r.since)})"
            lines.append(
                head + f"{_headline(t)}, {_metric(t)} {format_size(r.value)}, {since} {spark}".rstrip()
            )
    if len(ordered) > MAX_GROUP_LINES:
        lines.append(f"  ... and {len(ordered) - MAX_GROUP_LINES} more")
    fastest = ordered[0]
    fc = _forecast(fastest) if not k0.instant else ""  # no forecast for the dead
    if fc:
        lines += ["", f"Forecast: {fastest.record.comm} (pid {fastest.record.pid}): {fc}"]
    lines += [
        "",
        f"Next:     memwatchctl alerts;"
        f" memwatchctl history --pid {fastest.record.pid} --since {_since_arg(fastest)}",
    ]
    return title, "\n".join(lines)


def shown_record(r: AlertRecord) -> AlertRecord:
    """The record with its process-chosen text (comm, unit, summary) escaped for display (text.shown)."""
    return dataclasses.replace(
        r, comm=shown(r.comm), unit=None if r.unit is None else shown(r.unit), summary=shown(r.summary)
    )


def shown_lines(title: str, body: str) -> tuple[str, str]:
    """Title and body with anything left unsafe escaped, line by line (the body's own newlines stay)."""
    return shown(title), "\n".join(shown(ln) for ln in body.split("\n"))


def _shown(t: Transition) -> Transition:
    # every value a process or cgroup chose is escaped BEFORE it is placed in a line: a newline in a comm
    # must not start a line of its own
    return dataclasses.replace(
        t,
        record=shown_record(t.record),
        limit_cgroup=None if t.limit_cgroup is None else shown(t.limit_cgroup),
        oom_scope=None if t.oom_scope is None else shown(t.oom_scope),
    )


def render(transitions: Sequence[Transition], host: str, default_urls: tuple[str, ...]) -> list[Message]:
    """One message per rule (and URL set) for the transitions of one call. Rules without URLs send nothing.

    Process names, units and cgroup paths are shown escaped (text.shown): no control character, ANSI
    escape, bidi override or newline from a process reaches a title or a body raw.
    """
    groups: dict[tuple[str, tuple[str, ...]], list[Transition]] = {}
    for t in transitions:
        urls = t.rule.notify if t.rule is not None and t.rule.notify is not None else default_urls
        if urls:
            groups.setdefault((t.record.rule, tuple(urls)), []).append(t)
    out = []
    host = shown(host)
    for (_, urls), ts in groups.items():
        safe = [_shown(t) for t in ts]
        title, body = shown_lines(*(_single(safe[0], host) if len(ts) == 1 else _group(safe, host)))
        # the records are the originals: they identify the episodes to mark as told
        out.append(Message(title, body, urls, tuple(t.record for t in ts), tuple(t.reason for t in ts)))
    return out
