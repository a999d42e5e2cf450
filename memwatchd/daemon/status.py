"""DaemonStatus: what the daemon reports about itself, built once per sampling cycle.

One record feeds the three places that show it: the STATUS= line for systemd, the status table in the
database (`memwatchctl status`) and the Prometheus endpoint. Nothing reads the daemon's attributes by name.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from memwatchd.models import AlertRecord

StatusValue = str | int | float | None


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    """The daemon's health after one cycle (counters are cumulative for this run)."""

    processes: int = 0  # processes in the latest snapshot
    last_snapshot_ts: float | None = None  # wall time of the latest snapshot
    bpf_state: str = "disabled"
    scan_source: str = "proc"  # "bpf": the kernel's task iterator (collectors/taskscan.py); "proc": /proc
    allocator: str = "system"  # "jemalloc" or "system" ([daemon] allocator, daemon/allocator.py)
    bpf_tracked: int = 0
    map_full: int = 0
    lost_events: int = 0
    scan_ms: float | None = None  # scan + BPF poll + merge of the latest cycle
    groups_ms: float = 0.0  # reading cgroup charges in the latest cycle
    groups: int = 0  # cgroup/unit groups in the latest snapshot
    scan_errors: int = 0  # processes that vanished or were unreadable in the latest scan
    committed_snapshots: int = 0
    dropped_snapshots: int = 0
    write_errors: int = 0  # failed database writes
    write_failing: str | None = None  # the current database error, None while writes succeed
    last_write_ts: float | None = None  # wall time of the latest snapshot written
    notify_failures: int = 0
    notify_delivered: int = 0
    alerts: tuple[tuple[str, str, int], ...] = ()  # (rule, state, open episodes), sorted

    def line(self) -> str:
        """The one-line STATUS= text."""
        if self.write_failing:
            db = f"db error: {self.write_failing}"
        else:
            ts = self.last_write_ts
            db = f"last write {time.strftime('%H:%M:%S', time.localtime(ts)) if ts else 'never'}"
        return f"{self.processes} processes, bpf {self.bpf_state}, {db}"

    def store_fields(self) -> dict[str, StatusValue]:
        """Key/values for the database's status table (names as `memwatchctl status --json` shows them)."""
        return {
            "last_snapshot_ts": self.last_snapshot_ts,
            "snapshot_processes": self.processes,
            "bpf_state": self.bpf_state,
            "scan_source": self.scan_source,
            "allocator": self.allocator,
            "bpf_tracked": self.bpf_tracked,
            "map_full": self.map_full,
            "lost_events": self.lost_events,
            "scan_ms": None if self.scan_ms is None else round(self.scan_ms, 2),
            "groups_ms": round(self.groups_ms, 2),
            "groups": self.groups,
            "scan_errors": self.scan_errors,
            "committed_snapshots": self.committed_snapshots,
            "dropped_snapshots": self.dropped_snapshots,
            "notify_failures": self.notify_failures,
            "notify_delivered": self.notify_delivered,
        }


def alert_counts(records: Iterable[AlertRecord]) -> tuple[tuple[str, str, int], ...]:
    """Open episodes per (rule, state), sorted."""
    counts = Counter((r.rule, r.state) for r in records)
    return tuple(sorted((rule, state, n) for (rule, state), n in counts.items()))
