"""Messages for cgroup- and host-scope alerts (pure). Process alerts are rendered by notify/render.py.

A cgroup message names the group (path and unit), its limit and the level that sets it, its charge, its
largest members, and the time to its limit at the current rate. A host message names the component of the
host breakdown (shmem, slab, page tables, unaccounted, available) and what it means.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from memwatchd.alerts.scopes import ScopeTransition, falls, largest_text
from memwatchd.config import RuleConfig
from memwatchd.notify.render import Message, shown_lines, shown_record, sparkline
from memwatchd.text import shown
from memwatchd.units import format_duration, format_rate, format_size

COMPONENTS = {
    "shmem": "shared memory and tmpfs files (Shmem: /dev/shm, /run, memfd, SysV shm)",
    "slab_unreclaimable": "unreclaimable kernel slab (SUnreclaim)",
    "page_tables": "page tables (PageTables)",
    "unaccounted": "memory no process, cache, slab or page table explains (see `memwatchctl status`)",
    "available": "host MemAvailable",
}
MAX_LINES = 20


def _local(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


def _label(reason: str) -> str:
    return {"firing": "FIRING", "repeat": "STILL FIRING", "resolved": "RESOLVED"}[reason]


def _rule_text(rule: RuleConfig | None) -> str:
    if rule is None:
        return "(rule no longer configured)"
    held = f", held {format_duration(rule.for_s)}" if rule.for_s else ""
    scope = f"{rule.scope} scope"
    if rule.kind == "growth":
        what = "decline" if falls(rule) else "growth"
        rate, window = format_rate(rule.min_rate), format_duration(rule.window_s)
        return f"{what} of {rule.metric} ≥ {rate} over {window}{held} ({scope})"
    op = "≤" if falls(rule) else "≥"
    return f"{rule.metric} {op} {format_size(rule.threshold)}{held} ({scope})"


def _who(t: ScopeTransition) -> str:
    r = t.record
    if t.rule is not None and t.rule.scope == "host" or r.comm == "host":
        metric = t.rule.metric if t.rule is not None else "host"
        return f"host {metric}"
    unit = f" (unit {r.unit})" if r.unit else ""
    return f"cgroup {r.comm}{unit}"


def _limit_line(t: ScopeTransition) -> str:
    g = t.group
    if g is None:
        return ""
    if g.memory_limit_kb is None:
        return "Limit:    none (unlimited: the host's memory is the limit)"
    where = f" set on {g.limit_cgroup}" if g.limit_cgroup and g.limit_cgroup != g.group else ""
    cur = f"; charge {format_size(g.memory_current_kb * 1024.0)}" if g.memory_current_kb is not None else ""
    left = f", {format_size(g.free_kb * 1024.0)} left" if g.free_kb is not None else ""
    return f"Limit:    {format_size(g.memory_limit_kb * 1024.0)}{where}{cur}{left}"


def _forecast(t: ScopeTransition) -> str:
    parts = []
    g = t.group
    if t.limit_forecast_s is not None and g is not None and g.memory_limit_kb is not None:
        parts.append(
            f"cgroup {g.limit_cgroup or g.group} reaches its limit"
            f" ({format_size(g.memory_limit_kb * 1024.0)}) in ~{format_duration(t.limit_forecast_s)}"
        )
    if t.forecast_s is not None and t.host is not None:
        parts.append(
            f"host MemAvailable ({format_size(t.host.available_kb * 1024.0)}) runs out in"
            f" ~{format_duration(t.forecast_s)}"
        )
    return "; ".join(parts) + " at this rate" if parts else ""


def _next(t: ScopeTransition) -> str:
    r = t.record
    if t.rule is not None and t.rule.scope == "host" or r.comm == "host":
        return "memwatchctl history --host --since 1h"
    return f"memwatchctl history --cgroup {r.comm} --since 1h; memwatchctl groups"


def _headline(t: ScopeTransition) -> str:
    r = t.record
    if t.reason == "resolved":
        return "resolved"
    if r.kind == "threshold" and t.rule is not None:
        op = "≤" if falls(t.rule) else "≥"
        return f"{t.rule.metric} {format_size(r.value)} {op} {format_size(t.rule.threshold)}"
    sign = "-" if t.rule is not None and falls(t.rule) else "+"
    return f"{sign}{format_rate(r.rate or 0.0)}"


def _single(t: ScopeTransition, host: str) -> tuple[str, str]:
    r = t.record
    label = _label(t.reason)
    title = f"[memwatchd] {label} {r.rule}: {_who(t)} {_headline(t)} on {host}"
    if t.reason == "resolved":
        title = f"[memwatchd] RESOLVED {r.rule}: {_who(t)} on {host}"
    lines = [f"{label}: {r.rule} on {host}"]
    metric = t.rule.metric if t.rule is not None else ""
    if t.rule is not None and t.rule.scope == "host":
        lines.append(f"Component: {metric}: {COMPONENTS.get(metric, metric)}")
    else:
        lines.append(f"Group:    {_who(t)}")
        lim = _limit_line(t)
        if lim:
            lines.append(lim)
    lines.append(f"Rule:     {_rule_text(t.rule)}")
    if t.reason == "resolved":
        lines.append(f"Why:      {r.summary}")
        lines.append(
            f"Since:    {_local(r.since)} (lasted {format_duration((r.resolved_at or t.at) - r.since)})"
        )
    else:
        rate = (
            f"{'-' if t.rule is not None and falls(t.rule) else '+'}{format_rate(r.rate)}"
            if r.rate is not None
            else "-"
        )
        detail = f" ({t.detail})" if t.detail and r.kind != "threshold" else ""
        lines.append(f"Rate:     {rate}{detail}")
        lines.append(f"Since:    {_local(r.since)} (for {format_duration((t.at or r.since) - r.since)})")
    now = f"Now:      {metric} {format_size(r.value)}"
    if t.host is not None and t.rule is not None and t.rule.scope == "host":
        total, avail = format_size(t.host.total_kb * 1024.0), format_size(t.host.available_kb * 1024.0)
        now += f" (host total {total}, MemAvailable {avail})"
    lines.append(now)
    if t.group is not None and t.group.largest:
        lines.append(f"Largest:  {largest_text(t.group.largest)} ({t.group.processes} processes)")
    vals = [v for _, v in t.series]
    if len(vals) >= 2:
        span = t.series[-1][0] - t.series[0][0]
        lines.append(
            f"Window:   {sparkline(vals)} {format_size(vals[0])} → {format_size(vals[-1])}"
            f" over {format_duration(span)}"
        )
    fc = _forecast(t) if t.reason != "resolved" else ""
    if fc:
        lines.append(f"Forecast: {fc}")
    lines.append(f"Next:     {_next(t)}")
    return title, "\n".join(lines)


def _group(ts: Sequence[ScopeTransition], host: str) -> tuple[str, str]:
    r0 = ts[0].record
    n_res = sum(1 for t in ts if t.reason == "resolved")
    n_fire = len(ts) - n_res
    label = "FIRING" if n_fire else "RESOLVED"
    what = (
        f"{n_fire} groups firing" + (f", {n_res} resolved" if n_res else "") if n_fire else f"{n_res} groups"
    )
    title = f"[memwatchd] {label} {r0.rule}: {what} on {host}"
    lines = [f"{label}: {r0.rule} on {host}, {what}", f"Rule:     {_rule_text(ts[0].rule)}", ""]
    for t in sorted(
        ts, key=lambda t: (t.reason == "resolved", -(t.record.rate or 0), -(t.record.value or 0))
    )[:MAX_LINES]:
        g = t.group
        lim = (
            "unlimited"
            if g is None or g.memory_limit_kb is None
            else f"limit {format_size(g.memory_limit_kb * 1024.0)}"
        )
        state = f"RESOLVED, {t.record.summary}" if t.reason == "resolved" else f"{_headline(t)}, {lim}"
        lines.append(f"  {_who(t)}: {state}")
        fc = _forecast(t) if t.reason != "resolved" else ""
        if fc:
            lines.append(f"    {fc}")
    if len(ts) > MAX_LINES:
        lines.append(f"  ... and {len(ts) - MAX_LINES} more")
    lines += ["", "Next:     memwatchctl groups --sort growth"]
    return title, "\n".join(lines)


def render_scoped(
    transitions: Sequence[ScopeTransition], host: str, default_urls: tuple[str, ...]
) -> list[Message]:
    """One message per rule (and URL set); rules without URLs send nothing."""
    groups: dict[tuple[str, tuple[str, ...]], list[ScopeTransition]] = {}
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


def _shown(t: ScopeTransition) -> ScopeTransition:
    """Cgroup paths, units and member names escaped before they are placed in lines (text.shown)."""
    g = t.group
    if g is not None:
        g = dataclasses.replace(
            g,
            group=shown(g.group),
            unit=None if g.unit is None else shown(g.unit),
            cgroup=None if g.cgroup is None else shown(g.cgroup),
            limit_cgroup=None if g.limit_cgroup is None else shown(g.limit_cgroup),
            largest=tuple(dataclasses.replace(m, comm=shown(m.comm)) for m in g.largest),
        )
    return dataclasses.replace(t, record=shown_record(t.record), group=g)
