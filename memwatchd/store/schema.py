"""Database schema and its migrations (PRAGMA user_version).

Layout (all timestamps are integer unix milliseconds, sizes integer KiB, eBPF byte counters bytes):

- ``snapshots``: one row per snapshot (id = sequence number, wall time, host meminfo, monotonic interval).
  ``kf`` marks the snapshot that starts a compaction period: 2 = a full keyframe (the first of a writer's
  run: every live process has a ``raw_head`` row there), 1 = a period start (version 5: only processes that
  change in the period get a row there, see ``raw_head``; before version 5 every live process had one).
- ``processes``: one row per identity (pid, start_ticks). ``first_snap``/``last_snap`` bound its presence;
  ``last_snap IS NULL`` means "still live at the latest snapshot".
- ``raw_head``: the uncompacted recent past (at most ~75 minutes): one plain row per process per snapshot
  where its values changed. A process that changes in a period also gets a row at the period's first
  snapshot holding the values it had then (written with its first change), so each process's rows of a
  period are self-contained; a process that does not change in a period has no row in it (version 5).
- ``chunks``: compact series, one blob per (tier, process, compaction period in which the process
  changed). tier 0 = every change (keyed by snapshot id), tier 1 = per-minute rollups, tier 2 = per-hour
  rollups; see codec.py. ``snap0`` (version 5) is the first snapshot id of the chunk's period (NULL in
  chunks written before). A period without a chunk of a process present in it is implied: its values
  are those of the process's previous chunk (or head row), held for every snapshot of the period listed
  in ``periods``. Retention keeps each process's latest chunk per tier while it is present after the cut,
  since later periods are read from it.
- ``periods`` (version 5): one row per compacted period: its snapshot ids [snap0, snap1], its wall times
  and a blob of its snapshots (codec entries keyed by snapshot id holding ts_ms), so implied rollups can be
  counted after the snapshot rows are past raw retention; kept as long as the hourly tier.
- ``current``: the latest stored values of every live process with the merge's deltas (for ``top``).
- ``status``, ``meta``: daemon status key/values (shown by ``memwatchctl status``), writer bookkeeping.
- ``alerts``, ``ooms``: alert episodes (rule engine) and OOM kills.
- ``series``, ``series_head``, ``series_chunks`` (version 2): the group and host series, stored like the
  processes' (change-only head rows, a row per live series at each keyframe, compacted into per-series chunks
  per tier). ``series.kind`` is "cgroup" (name = cgroup path), "unit" (name = systemd unit) or "host" (one
  series, name "host"). Values sit in generic columns v0..v10 in the order of GROUP_FIELDS or HOST_FIELDS;
  rollup chunks hold the last values of each minute/hour (the series are sums and kernel counters, whose
  last value per bucket is what the `groups` view and rules read).

Version 3 added the eBPF fields ``mremap_count``, ``mremap_grow_bytes``, ``mremap_shrink_bytes`` and
``mapped_bytes`` at the end of RAW_FIELDS (chunks written before decode them as None: a chunk stores only
the fields it knew), and ``exit_signal``/``oom_killed`` to ``processes`` (``exit_code`` is the exit status,
or -N for signal N). An exited process's last raw row holds its VmHWM at the exit in ``hwm_kb``.

Version 4 added ``triage``: leak triage results (allocation stacks of one process over a bounded
window); see memwatchd/store/triage.py.

Version 5 (issue 18): writes proportional to change. Periods no longer start with a row for every live
process (``kf`` above), compaction writes chunks only for processes that changed in the period
(``chunks.snap0``), and ``periods`` lists each compacted period's snapshots. Databases of version 4 keep their
full keyframes and chunks and read the same.
"""

from __future__ import annotations

from memwatchd.store.triage import SCHEMA as TRIAGE_SCHEMA

SCHEMA_VERSION = 5

# Column order of a raw sample; most frequently changing first so the change mask stays one byte. New
# fields go at the end, so chunks written by an older version still decode (their masks never set them).
_RAW_FIELDS_V1 = (
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
_RAW_FIELDS_V3 = ("mapped_bytes", "mremap_count", "mremap_grow_bytes", "mremap_shrink_bytes")
RAW_FIELDS = _RAW_FIELDS_V1 + _RAW_FIELDS_V3

# The series of a group (kind "cgroup" or "unit") and of the host, in column order v0, v1, ...
GROUP_FIELDS = ("processes", "rss_kb", "anon_kb", "swap_kb", "memory_current_kb", "memory_limit_kb")
HOST_FIELDS = (
    "total_kb",
    "available_kb",
    "processes_rss_kb",
    "processes_anon_kb",
    "page_cache_kb",
    "shmem_kb",
    "slab_reclaimable_kb",
    "slab_unreclaimable_kb",
    "kernel_stack_kb",
    "page_tables_kb",
    "unaccounted_kb",
)
SERIES_FIELDS = {"cgroup": GROUP_FIELDS, "unit": GROUP_FIELDS, "host": HOST_FIELDS}
SERIES_WIDTH = max(len(f) for f in SERIES_FIELDS.values())
SERIES_COLS = tuple(f"v{i}" for i in range(SERIES_WIDTH))

TIER_RAW, TIER_MINUTE, TIER_HOUR = 0, 1, 2
KF_PERIOD, KF_FULL = 1, 2  # snapshots.kf: a period start; a period start where every live process has a row
TIER_NAMES = {TIER_RAW: "raw", TIER_MINUTE: "minute", TIER_HOUR: "hour"}
BUCKET_MS = {TIER_MINUTE: 60_000, TIER_HOUR: 3_600_000}

_RAW_COLS = ", ".join(f"{f} INTEGER" for f in _RAW_FIELDS_V1)

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

_V2 = f"""
CREATE TABLE series (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    unit TEXT,
    cgroup TEXT,
    first_snap INTEGER NOT NULL,
    last_snap INTEGER,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER,
    UNIQUE (kind, name)
);
CREATE INDEX series_last ON series (last_snap);
CREATE TABLE series_head (
    series INTEGER NOT NULL,
    snap INTEGER NOT NULL,
    {", ".join(f"{c} INTEGER" for c in SERIES_COLS)},
    PRIMARY KEY (series, snap)
) WITHOUT ROWID;
CREATE TABLE series_chunks (
    id INTEGER PRIMARY KEY,
    tier INTEGER NOT NULL,
    series INTEGER NOT NULL,
    t0_ms INTEGER NOT NULL,
    t1_ms INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX series_chunks_series ON series_chunks (tier, series, t0_ms);
CREATE INDEX series_chunks_age ON series_chunks (tier, t1_ms);
"""

_V3 = "\n".join(
    [f"ALTER TABLE {t} ADD COLUMN {f} INTEGER;" for t in ("raw_head", "current") for f in _RAW_FIELDS_V3]
    + [f"ALTER TABLE processes ADD COLUMN {c} INTEGER;" for c in ("exit_signal", "oom_killed")]
)

_V5 = """
ALTER TABLE chunks ADD COLUMN snap0 INTEGER;
CREATE TABLE periods (
    snap0 INTEGER PRIMARY KEY,
    snap1 INTEGER NOT NULL,
    t0_ms INTEGER NOT NULL,
    t1_ms INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX periods_t1 ON periods (t1_ms);
"""

# MIGRATIONS[i] brings a database from user_version i to i + 1.
MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, TRIAGE_SCHEMA, _V5)
assert len(MIGRATIONS) == SCHEMA_VERSION


def pending_migrations(user_version: int) -> list[tuple[int, str]]:
    """The (target_version, script) pairs still to apply to a database at ``user_version``."""
    return [(v + 1, MIGRATIONS[v]) for v in range(user_version, SCHEMA_VERSION)]


# Columns of the alerts table in AlertRecord field order (writer and reader share them).
ALERT_COLS = (
    "rule",
    "pid",
    "start_ticks",
    "since",
    "kind",
    "comm",
    "unit",
    "state",
    "fired_at",
    "resolved_at",
    "notified_state",
    "notified_at",
    "value",
    "rate",
    "summary",
)
