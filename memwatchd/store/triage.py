"""The triage table: one row per bounded allocation trace (memwatchd/triage), written by the daemon's one
writer connection, read by memwatchctl triage.

Columns follow the store's conventions (integer unix ms for times) plus the whole result as JSON in
``result`` (the stacks, limits and counters), so readers get exactly what the tracer returned.
Rows older than [storage] retention are removed whenever a new one is written.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from memwatchd.triage.report import TriageResult

SCHEMA = """
CREATE TABLE triage (
    id INTEGER PRIMARY KEY,
    pid INTEGER NOT NULL,
    start_ticks INTEGER NOT NULL,
    comm TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    ended_ms INTEGER NOT NULL,
    sample_every INTEGER NOT NULL,
    sampled_bytes INTEGER NOT NULL,
    estimated_bytes INTEGER NOT NULL,
    status TEXT NOT NULL,
    limits TEXT NOT NULL,
    reason TEXT NOT NULL,
    stacks TEXT NOT NULL,
    result TEXT NOT NULL
);
CREATE INDEX triage_proc ON triage (pid, ended_ms);
CREATE INDEX triage_age ON triage (ended_ms)
"""

INSERT = (
    "INSERT INTO triage (pid, start_ticks, comm, started_ms, ended_ms, sample_every, sampled_bytes,"
    " estimated_bytes, status, limits, reason, stacks, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
PRUNE = "DELETE FROM triage WHERE ended_ms < ?"


def insert_params(r: TriageResult) -> tuple[Any, ...]:
    """Parameters of INSERT for one result."""
    d = r.to_dict()
    return (
        r.pid,
        r.start_ticks,
        r.comm,
        int(r.started_at * 1000),
        int(r.ended_at * 1000),
        r.sample_every,
        r.sampled_bytes,
        r.estimated_bytes,
        r.status,
        "\n".join(r.limits + ((r.error,) if r.error else ())),
        r.reason,
        json.dumps(d["stacks"]),
        json.dumps(d, sort_keys=True),
    )


def latest(db: sqlite3.Connection, pid: int, since_ms: int = 0) -> dict[str, Any] | None:
    """The latest triage result of any process that had `pid` (ended at or after since_ms), with its id."""
    row = db.execute(
        "SELECT id, result FROM triage WHERE pid = ? AND ended_ms >= ?"
        " ORDER BY ended_ms DESC, id DESC LIMIT 1",
        (pid, since_ms),
    ).fetchone()
    return _row(row)


def by_id(db: sqlite3.Connection, triage_id: int) -> dict[str, Any] | None:
    row = db.execute("SELECT id, result FROM triage WHERE id = ?", (triage_id,)).fetchone()
    return _row(row)


def _row(row: Any) -> dict[str, Any] | None:
    if row is None:
        return None
    d: dict[str, Any] = json.loads(row[1])
    d["id"] = int(row[0])
    return d


def has_table(db: sqlite3.Connection) -> bool:
    return (
        db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'triage'").fetchone()
        is not None
    )
