"""Pure: sampled outstanding allocations -> estimated outstanding bytes by stack; the result record.

Sampling (triage.bpf.c): an allocation of s bytes is sampled with probability p = min(1, s/R), R the
sampling rate ([triage] sample_every). A sampled allocation stands for s/p = max(s, R) bytes and 1/p
allocations, so the sums below are unbiased estimates of what the whole process left outstanding.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from memwatchd.triage.symbolize import Frame

STATUS_COMPLETE = "complete"
STATUS_EXITED = "process exited"
STATUS_FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Sample:
    """One sampled allocation still outstanding at the end of the window."""

    size: int
    frames: tuple[Frame, ...]


@dataclass(frozen=True, slots=True)
class StackTotal:
    """Outstanding allocations of one stack: sampled sums and their estimates for the whole process."""

    frames: tuple[Frame, ...]
    estimated_bytes: int
    estimated_count: int
    sampled_bytes: int
    sampled_count: int


@dataclass(frozen=True, slots=True)
class TriageResult:
    """One bounded trace of one process (stored in the triage table, shown by memwatchctl triage)."""

    pid: int
    start_ticks: int
    comm: str
    started_at: float  # wall time the probes were attached
    ended_at: float  # wall time they were detached (or the process exited)
    sample_every: int  # bytes (the sampling rate R)
    status: str  # complete | process exited | failed
    allocator: str = ""
    mode: str = ""  # uprobes | syscalls
    sampled_bytes: int = 0  # sampled outstanding bytes (sum of sizes)
    sampled_count: int = 0
    estimated_bytes: int = 0  # estimated outstanding bytes of the whole process
    estimated_count: int = 0
    calls: int = 0  # allocator calls seen during the window (every one trapped)
    frees: int = 0
    map_full: int = 0  # sampled allocations dropped: map full (estimates are then low)
    stacks: tuple[StackTotal, ...] = ()
    limits: tuple[str, ...] = ()
    error: str = ""
    reason: str = ""  # what asked for it: "alert <rule>" or "request"
    alert_rule: str = ""
    alert_since: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return max(0.0, self.ended_at - self.started_at)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["duration_s"] = round(self.duration_s, 3)
        for s in d["stacks"]:
            for f in s["frames"]:
                f["addr"] = f"0x{f['addr']:x}"
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TriageResult:
        stacks = tuple(
            StackTotal(
                frames=tuple(
                    Frame(int(str(f["addr"]), 0), str(f["function"]), int(f["offset"]), str(f["module"]))
                    for f in s["frames"]
                ),
                estimated_bytes=int(s["estimated_bytes"]),
                estimated_count=int(s["estimated_count"]),
                sampled_bytes=int(s["sampled_bytes"]),
                sampled_count=int(s["sampled_count"]),
            )
            for s in d.get("stacks", ())
        )
        known = {f for f in cls.__dataclass_fields__ if f not in ("stacks", "limits")}
        kw = {k: v for k, v in d.items() if k in known}
        return cls(**kw, stacks=stacks, limits=tuple(d.get("limits", ())))


def weight(size: int, rate: int) -> tuple[float, float]:
    """(bytes, allocations) one sampled allocation of `size` stands for at sampling rate `rate`."""
    if size <= 0:
        return 0.0, 0.0
    if size >= rate:
        return float(size), 1.0
    return float(rate), rate / size


def by_stack(samples: Iterable[Sample], rate: int, max_stacks: int) -> tuple[list[StackTotal], StackTotal]:
    """Outstanding totals per stack, largest estimate first, at most max_stacks; plus the grand total.

    Stacks are told apart by their frames' functions and offsets, not raw addresses, so junk frames that
    survived the walk's checks do not split one call site in many.
    """
    groups: dict[tuple[tuple[str, str, int], ...], list[Any]] = {}
    for s in samples:
        key = tuple((f.module, f.function, f.offset if f.function != "?" else f.addr) for f in s.frames)
        g = groups.setdefault(key, [s.frames, 0.0, 0.0, 0, 0])
        b, n = weight(s.size, rate)
        g[1] += b
        g[2] += n
        g[3] += s.size
        g[4] += 1
    totals = [StackTotal(frames, round(eb), round(en), sb, sc) for frames, eb, en, sb, sc in groups.values()]
    totals.sort(key=lambda t: (-t.estimated_bytes, -t.sampled_count))
    grand = StackTotal(
        (),
        sum(t.estimated_bytes for t in totals),
        sum(t.estimated_count for t in totals),
        sum(t.sampled_bytes for t in totals),
        sum(t.sampled_count for t in totals),
    )
    return totals[:max_stacks], grand


def top_functions(result: TriageResult, n: int = 3) -> list[str]:
    """The functions that called the allocator on the largest stacks (deduplicated), for summaries."""
    out: list[str] = []
    for s in result.stacks:
        name = next((f.function for f in s.frames if f.function != "?"), None)
        if name is not None and name not in out:
            out.append(name)
        if len(out) >= n:
            break
    return out


def share(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.0f}%" if whole > 0 else "-"


def format_stack(frames: Sequence[Frame], indent: str = "    ", max_frames: int = 8) -> list[str]:
    lines = [indent + f.text() for f in frames[:max_frames]]
    if len(frames) > max_frames:
        lines.append(f"{indent}... {len(frames) - max_frames} more frames")
    return lines or [indent + "(no stack)"]
