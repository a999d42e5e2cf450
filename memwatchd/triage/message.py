"""Pure: a triage result as text (the follow-up notification on an alert, and memwatchctl's table)."""

from __future__ import annotations

import time

from memwatchd.models import AlertRecord
from memwatchd.notify.render import Message
from memwatchd.triage.report import STATUS_FAILED, TriageResult, format_stack, share, top_functions
from memwatchd.units import format_duration, format_size

MESSAGE_STACKS = 5


def _count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 10_000:
        return f"{n / 1e3:.0f}k"
    if n >= 1_000:
        return f"{n / 1e3:.1f}k"
    return str(n)


def _local(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


def how(r: TriageResult) -> str:
    """How the process was traced, in words."""
    if r.mode == "uprobes":
        what = f"uprobes on {r.allocator} malloc"
    elif r.mode == "syscalls":
        what = "mmap/brk syscalls (no malloc to probe)"
    else:
        what = "not traced"
    return f"{what}, sampling every {format_size(r.sample_every)} allocated"


def summary_lines(r: TriageResult, max_stacks: int) -> list[str]:
    """The body shared by the notification and memwatchctl triage's plain output."""
    lines = [
        f"Traced:   {_local(r.started_at)} for {format_duration(r.duration_s)} ({how(r)})",
    ]
    if r.status == STATUS_FAILED:
        lines.append(f"Failed:   {r.error}")
    else:
        lines.append(
            f"Outstanding: ~{format_size(r.estimated_bytes)} in ~{_count(r.estimated_count)} allocations"
            f" made during the window and not freed (estimated from {r.sampled_count} samples,"
            f" {format_size(r.sampled_bytes)} sampled; {_count(r.calls)} allocator calls traced)"
        )
        if r.stacks:
            lines.append("Top stacks (estimated outstanding bytes; the first frame called the allocator):")
        for i, s in enumerate(r.stacks[:max_stacks], 1):
            lines.append(
                f"  {i}. ~{format_size(s.estimated_bytes)} ({share(s.estimated_bytes, r.estimated_bytes)})"
                f" in ~{_count(s.estimated_count)} allocations, {s.sampled_count} sampled"
            )
            lines += format_stack(s.frames, indent="       ")
        if len(r.stacks) > max_stacks:
            lines.append(f"  ... and {len(r.stacks) - max_stacks} more stacks")
        if not r.stacks:
            lines.append(
                "No sampled allocation stayed outstanding: nothing allocated in the window was leaked."
            )
    for lim in r.limits:
        lines.append(f"Limit:    {lim}")
    return lines


def followup(
    r: TriageResult, alert: AlertRecord, host: str, urls: tuple[str, ...], triage_id: int
) -> Message:
    """The "where it allocates" follow-up of a firing alert (records=(): it changes no alert state)."""
    fns = top_functions(r)
    where = ", ".join(fns) if fns else "no outstanding stacks"
    if r.status == STATUS_FAILED:
        where = "triage failed"
    title = f"[memwatchd] WHERE {alert.rule}: {alert.comm} (pid {alert.pid}) allocates in {where} on {host}"
    lines = [
        f"WHERE IT ALLOCATES: {alert.rule} on {host}",
        f"Process:  {alert.comm} (pid {alert.pid})",
        f"Alert:    fired {_local(alert.fired_at or alert.since)}: {alert.summary}",
        *summary_lines(r, MESSAGE_STACKS),
        f"Next:     memwatchctl triage --pid {alert.pid}   (result #{triage_id})",
    ]
    return Message(title, "\n".join(lines), urls, (), ("triage",))
