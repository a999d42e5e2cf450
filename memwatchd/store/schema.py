"""Database schema and its migrations (PRAGMA user_version).

Layout (all timestamps are integer unix milliseconds, sizes integer KiB, eBPF byte counters bytes):

- ``snapshots``: one row per snapshot (id = sequence number, wall time, host meminfo, monotonic interval).
  ``kf = 1`` marks a keyframe snapshot: every live process has a ``raw_head`` row there, so a compaction
  range starting at a keyframe is self-contained.
- ``processes``: one row per identity (pid, start_ticks). ``first_snap``/``last_snap`` bound its presence;
  ``last_snap IS NULL`` means "still live at the latest snapshot".
- ``raw_head``: the uncompacted recent past (at most ~75 minutes): one plain row per process per snapshot
  where its values changed (plus keyframes). The writer compacts it, period by period, into ``chunks``.
- ``chunks``: compact series, one blob per (tier, process, compaction period). tier 0 = every change
  (keyed by snapshot id), tier 1 = per-minute rollups, tier 2 = per-hour rollups; see codec.py.
- ``current``: the latest stored values of every live process with the merge's deltas (for ``top``).
- ``status``, ``meta``: daemon status key/values (shown by ``memwatchctl status``), writer bookkeeping.
- ``alerts``, ``ooms``: alert episodes (rule engine) and OOM kills.
- ``triage``: leak triage results (allocation stacks of one process over a bounded window); see
  memwatchd/store/triage.py (added by schema version 2).
"""

from __future__ import annotations

from memwatchd.store.triage import SCHEMA as TRIAGE_SCHEMA

SCHEMA_VERSION = 2

# Column order of a raw sample; most frequently changing first so the change mask stays one byte.
RAW_FIELDS = (
    "rss_kb",
    "anon_kb",
    "vm_kb",
    "mmap_count",
    "mmap_bytes",
    "munmap_count",
    "munmap_bytes",
    "swap_kb",
    "hwm_kb",
    "brk_count",
    "brk_bytes",
    "pss_kb",
    "uss_kb",
)

TIER_RAW, TIER_MINUTE, TIER_HOUR = 0, 1, 2
TIER_NAMES = {TIER_RAW: "raw", TIER_MINUTE: "minute", TIER_HOUR: "hour"}
BUCKET_MS = {TIER_MINUTE: 60_000, TIER_HOUR: 3_600_000}

_RAW_COLS = ", ".join(f"{f} INTEGER" for f in RAW_FIELDS)

_V1 = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE status (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE snapshots (
    id INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    dt_ms INTEGER,
    kf INTEGER NOT NULL DEFAULT 0,
    nproc INTEGER NOT NULL,
    mem_total_kb INTEGER,
    mem_available_kb INTEGER,
    swap_total_kb INTEGER,
    swap_free_kb INTEGER,
    scan_errors INTEGER
);
CREATE INDEX snapshots_ts ON snapshots (ts_ms);
CREATE TABLE processes (
    id INTEGER PRIMARY KEY,
    pid INTEGER NOT NULL,
    start_ticks INTEGER NOT NULL,
    comm TEXT NOT NULL,
    unit TEXT,
    cgroup TEXT,
    start_time REAL,
    first_snap INTEGER NOT NULL,
    last_snap INTEGER,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER,
    exit_ms INTEGER,
    exit_code INTEGER,
    UNIQUE (pid, start_ticks)
);
CREATE INDEX processes_comm ON processes (comm);
CREATE INDEX processes_unit ON processes (unit);
CREATE INDEX processes_last ON processes (last_snap);
CREATE INDEX processes_seen ON processes (last_seen_ms);
CREATE TABLE raw_head (
    proc INTEGER NOT NULL,
    snap INTEGER NOT NULL,
    {_RAW_COLS},
    PRIMARY KEY (proc, snap)
) WITHOUT ROWID;
CREATE TABLE chunks (
    id INTEGER PRIMARY KEY,
    tier INTEGER NOT NULL,
    proc INTEGER NOT NULL,
    t0_ms INTEGER NOT NULL,
    t1_ms INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX chunks_proc ON chunks (tier, proc, t0_ms);
CREATE INDEX chunks_age ON chunks (tier, t1_ms);
CREATE TABLE current (
    proc INTEGER PRIMARY KEY,
    snap INTEGER NOT NULL,
    {_RAW_COLS},
    d_mmap_count INTEGER,
    d_mmap_bytes INTEGER,
    d_munmap_bytes INTEGER,
    d_brk_bytes INTEGER,
    dt_ms INTEGER
);
CREATE TABLE ooms (
    id INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    comm TEXT NOT NULL,
    total_vm_kb INTEGER,
    anon_rss_kb INTEGER,
    file_rss_kb INTEGER,
    shmem_rss_kb INTEGER,
    uid INTEGER,
    oom_score_adj INTEGER
);
CREATE INDEX ooms_ts ON ooms (ts_ms);
CREATE TABLE alerts (
    rule TEXT NOT NULL,
    pid INTEGER NOT NULL,
    start_ticks INTEGER NOT NULL,
    since REAL NOT NULL,
    kind TEXT NOT NULL,
    comm TEXT NOT NULL,
    unit TEXT,
    state TEXT NOT NULL,
    fired_at REAL,
    resolved_at REAL,
    notified_state TEXT,
    notified_at REAL,
    value REAL,
    rate REAL,
    summary TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (rule, pid, start_ticks, since)
) WITHOUT ROWID;
CREATE INDEX alerts_state ON alerts (state);
"""

# MIGRATIONS[i] brings a database from user_version i to i + 1.
MIGRATIONS: tuple[str, ...] = (_V1, TRIAGE_SCHEMA)
assert len(MIGRATIONS) == SCHEMA_VERSION


def pending_migrations(user_version: int) -> list[tuple[int, str]]:
    """The (target_version, script) pairs still to apply to a database at ``user_version``."""
    return [(v + 1, MIGRATIONS[v]) for v in range(user_version, SCHEMA_VERSION)]
