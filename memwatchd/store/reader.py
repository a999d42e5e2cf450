"""Read-only queries over the store for memwatchctl (plain sqlite3, ``mode=ro``, bound parameters only).

Every public method runs in one read transaction, so a compaction running meanwhile (head rows moving
into chunks) is never seen half done. Rows come back as plain dicts with the stable field names of the
interface contract (``ts`` in unix seconds, sizes in KiB, eBPF counters in bytes and calls).
"""

from __future__ import annotations

import dataclasses
import fcntl
import fnmatch
import os
import sqlite3
import urllib.parse
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from memwatchd.store import codec, series_read
from memwatchd.store.rollup import Buckets, constant, last_of, merge_sorted, rollup
from memwatchd.store.rows import (
    HISTORY_FIELDS,
    AlertRow,
    HistoryRow,
    ProcessRow,
    Top,
    TopRow,
    TopSummary,
)
from memwatchd.store.schema import (
    ALERT_COLS,
    BUCKET_MS,
    RAW_FIELDS,
    SCHEMA_VERSION,
    TIER_HOUR,
    TIER_MINUTE,
    TIER_NAMES,
    TIER_RAW,
)

_RAW_COLS = ", ".join(RAW_FIELDS)
_METRICS = ("rss", "anon", "swap")
AUTO_RAW_MAX_S = 6 * 3600.0
AUTO_MINUTE_MAX_S = 3 * 86400.0


class ReaderError(Exception):
    """The database cannot be read; str() is a one-line message for the user."""


@dataclass(frozen=True, slots=True)
class Proc:
    """One process identity as stored."""

    id: int
    pid: int
    start_ticks: int
    comm: str
    unit: str | None
    cgroup: str | None
    start_time: float | None
    first_snap: int
    last_snap: int | None
    first_seen_ms: int
    last_seen_ms: int | None
    exit_ms: int | None
    exit_code: int | None
    exit_signal: int | None
    oom_killed: int | None


_PROC_COLS = ", ".join(f.name for f in dataclasses.fields(Proc))


def _s(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


def _connect(path: str, *, immutable: bool) -> tuple[sqlite3.Connection, int]:
    uri = (
        "file:"
        + urllib.parse.quote(os.path.abspath(path))
        + "?mode=ro"
        + ("&immutable=1" if immutable else "")
    )
    db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA busy_timeout = 5000")
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.Error:
        db.close()
        raise
    return db, version


def _cannot_create_shm(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    return isinstance(code, int) and (code & 0xFF) in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN)


def _quiescent(path: str) -> bool:
    """No daemon holds the database's writer lock and its WAL holds nothing (a clean stop)."""
    try:
        if os.stat(path + "-wal").st_size > 0:
            return False
    except FileNotFoundError:
        pass
    except OSError:
        return False
    try:
        fd = os.open(path + ".lock", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return False  # a live daemon holds it
    finally:
        os.close(fd)  # closing releases the shared lock at once
    return True


class StoreReader:
    """A read-only view of a memwatchd database."""

    def __init__(self, path: str) -> None:
        self.path = path
        if not os.path.exists(path):
            raise ReaderError(f"database {path} does not exist (is memwatchd running? see --db and --config)")
        if os.path.isdir(path):
            raise ReaderError(f"database {path} is a directory")
        if not os.access(path, os.R_OK):
            raise ReaderError(f"cannot read database {path}: permission denied")
        try:
            self.db, version = _connect(path, immutable=False)
        except sqlite3.Error as e:
            # a member of the database's group cannot create the -shm file SQLite wants for a WAL database;
            # when no daemon writes it and its WAL is empty, the file alone is the whole database
            if not (_cannot_create_shm(e) and _quiescent(path)):
                raise ReaderError(f"cannot read database {path}: {e}") from None
            try:
                self.db, version = _connect(path, immutable=True)
            except sqlite3.Error as e2:
                raise ReaderError(f"cannot read database {path}: {e2}") from None
        if version == 0:
            self.db.close()
            raise ReaderError(f"{path} is not a memwatchd database")
        if version > SCHEMA_VERSION:
            self.db.close()
            raise ReaderError(
                f"{path} has schema version {version}; this memwatchctl knows up to {SCHEMA_VERSION}"
            )
        self.version = version  # a daemon not yet restarted on a newer memwatchd writes an older schema
        self._snap0 = "snap0" if version >= 5 else "NULL"

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _read(self) -> Iterator[None]:
        try:
            self.db.execute("BEGIN")
            try:
                yield
            finally:
                self.db.execute("COMMIT")
        except sqlite3.Error as e:
            raise ReaderError(f"cannot read database {self.path}: {e}") from None

    def _meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _latest(self) -> tuple[int, int] | None:
        row = self.db.execute("SELECT id, ts_ms FROM snapshots ORDER BY id DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else None

    def _cutoff(self, tier: int) -> int:
        return int(self._meta(f"cutoff_{tier}_ms") or 0)

    # ---- processes --------------------------------------------------------------------------------------
    def find_processes(
        self,
        pid: int | None = None,
        comm: str | None = None,
        comm_glob: str | None = None,
        unit: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[Proc]:
        """Process identities matching every given filter and seen in [since, until] (unix seconds)."""
        with self._read():
            return self._find(pid, comm, comm_glob, unit, since, until)

    def _find(
        self,
        pid: int | None,
        comm: str | None,
        comm_glob: str | None,
        unit: str | None,
        since: float | None,
        until: float | None,
    ) -> list[Proc]:
        nul_glob = comm_glob if comm_glob is not None and "\x00" in comm_glob else None
        if nul_glob is not None:
            comm_glob = None  # GLOB stops at a NUL ("*\x00*" matched every process): matched below instead
        where, params = [], []
        for cond, value in (
            ("pid = ?", pid),
            ("comm = ?", comm),
            ("comm GLOB ?", comm_glob),
            ("unit = ?", unit),
        ):
            if value is not None:
                where.append(cond)
                params.append(value)
        if until is not None:
            where.append("first_seen_ms <= ?")
            params.append(round(until * 1000))
        if since is not None:
            where.append("(last_seen_ms IS NULL OR last_seen_ms >= ?)")
            params.append(round(since * 1000))
        sql = f"SELECT {_PROC_COLS} FROM processes"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY first_seen_ms, pid, start_ticks"
        found = [Proc(*r) for r in self.db.execute(sql, params)]
        if nul_glob is not None:
            found = [p for p in found if fnmatch.fnmatchcase(p.comm, nul_glob)]
        return found

    def processes(self, **filters: Any) -> list[ProcessRow]:
        """Processes seen in a range (exited ones included) with first/last seen and exit times."""
        with self._read():
            latest = self._latest()
            out = []
            for p in self._find(
                **{k: filters.get(k) for k in ("pid", "comm", "comm_glob", "unit", "since", "until")}
            ):
                live = p.last_snap is None
                last_ms = latest[1] if live and latest else p.last_seen_ms
                out.append(
                    ProcessRow(
                        pid=p.pid,
                        start_ticks=p.start_ticks,
                        start_time=p.start_time,
                        comm=p.comm,
                        unit=p.unit,
                        cgroup=p.cgroup,
                        first_seen=_s(p.first_seen_ms),
                        last_seen=_s(last_ms),
                        exit_time=_s(p.exit_ms),
                        exit_code=p.exit_code,
                        exit_signal=p.exit_signal,
                        oom_killed=None if p.oom_killed is None else bool(p.oom_killed),
                        live=live,
                    )
                )
            return out

    # ---- history ----------------------------------------------------------------------------------------
    def choose_tier(self, since: float, until: float) -> int:
        """The finest tier that keeps a range readable (a few thousand points) and still covers its start."""
        with self._read():
            return self._choose_tier(since, until)

    def _choose_tier(self, since: float, until: float) -> int:
        span = until - since
        tier = TIER_RAW if span <= AUTO_RAW_MAX_S else TIER_MINUTE if span <= AUTO_MINUTE_MAX_S else TIER_HOUR
        while tier < TIER_HOUR and self._cutoff(tier) > since * 1000:
            tier += 1
        return tier

    def history(
        self, procs: Sequence[Proc], since: float, until: float, tier: int | None = None
    ) -> list[HistoryRow]:
        """Each process's values over [since, until], oldest first.

        Raw tier: a row at each stored change, plus rows at the first and last snapshot of the range in
        which the process was present (values carried forward). Rollup tiers: one row per bucket (ts =
        bucket start) with the last values and min/max/avg of rss, anon and swap.
        """
        with self._read():
            if tier is None:
                tier = self._choose_tier(since, until)
            since_ms, until_ms = round(since * 1000), round(until * 1000)
            latest = self._latest()
            if latest is None:
                return []
            rows: list[HistoryRow] = []
            ctx = _Ctx(self, tier, since_ms, until_ms, latest)
            for p in procs:
                rows += ctx.raw(p) if tier == TIER_RAW else ctx.rolled(p)
            rows.sort(key=lambda r: (r.ts, r.pid, r.start_ticks))
            return rows

    def _chunks(self, tier: int, proc: int, lo_ms: int, hi_ms: int) -> list[tuple[int | None, bytes]]:
        """(snap0, blob) of the chunks of one process and tier overlapping [lo_ms, hi_ms], oldest first,
        and the latest one before lo_ms: a process that did not change since holds its values."""
        return [
            (r[0], r[1])
            for r in self.db.execute(
                f"SELECT {self._snap0}, data FROM chunks WHERE tier = :t AND proc = :p AND t0_ms <= :hi"
                " AND t1_ms >= coalesce((SELECT max(t1_ms) FROM chunks WHERE tier = :t AND proc = :p"
                " AND t1_ms < :lo), :lo) ORDER BY t0_ms, id",
                {"t": tier, "p": proc, "lo": lo_ms, "hi": hi_ms},
            )
        ]

    def _entries(self, tier: int, proc: int, lo_ms: int, hi_ms: int) -> list[tuple[int, codec.Values]]:
        out: list[tuple[int, codec.Values]] = []
        dec = codec.decode_raw if tier == TIER_RAW else codec.decode_agg
        for _, data in self._chunks(tier, proc, lo_ms, hi_ms):
            out += dec(data)
        return out

    def _head(self, proc: int) -> list[tuple[int, codec.Values]]:
        return [
            (r[0], tuple(r[1:]))
            for r in self.db.execute(
                f"SELECT snap, {_RAW_COLS} FROM raw_head WHERE proc = ? ORDER BY snap", (proc,)
            )
        ]

    # ---- top --------------------------------------------------------------------------------------------
    def top(self, window_s: float = 600.0) -> Top:
        """The latest snapshot: a host summary and one row per live process with rates and growth."""
        with self._read():
            snap = self.db.execute(
                "SELECT id, ts_ms, dt_ms, nproc, mem_total_kb, mem_available_kb, swap_total_kb, swap_free_kb"
                " FROM snapshots ORDER BY id DESC LIMIT 1"
            ).fetchone()
            if snap is None:
                return Top(None, ())
            sid, ts_ms, dt_ms, nproc, mtot, mavail, stot, sfree = snap
            compacted = int(self._meta("compacted_through") or 0)
            head = dict(
                self.db.execute("SELECT id, ts_ms FROM snapshots WHERE id > ?", (compacted,)).fetchall()
            )
            w = self.db.execute(
                "SELECT id FROM snapshots WHERE id > ? AND ts_ms <= ? ORDER BY id DESC LIMIT 1",
                (compacted, ts_ms - round(window_s * 1000)),
            ).fetchone()
            w_snap = w[0] if w else min(head, default=sid)
            sql = (
                "SELECT p.pid, p.start_ticks, p.start_time, p.comm, p.unit, p.first_snap, c.snap,"
                f" {', '.join('c.' + f for f in RAW_FIELDS)},"
                " c.d_mmap_count, c.d_mmap_bytes, c.d_munmap_bytes, c.d_brk_bytes, c.dt_ms,"
                " (SELECT h.snap FROM raw_head h WHERE h.proc = c.proc AND h.snap <= :w"
                " ORDER BY h.snap DESC LIMIT 1),"
                " (SELECT h.rss_kb FROM raw_head h WHERE h.proc = c.proc AND h.snap <= :w"
                " ORDER BY h.snap DESC LIMIT 1),"
                " (SELECT h.snap FROM raw_head h WHERE h.proc = c.proc ORDER BY h.snap LIMIT 1),"
                " (SELECT h.rss_kb FROM raw_head h WHERE h.proc = c.proc ORDER BY h.snap LIMIT 1)"
                " FROM current c JOIN processes p ON p.id = c.proc"
            )
            rows: list[TopRow] = []
            nf = len(RAW_FIELDS)
            for r in self.db.execute(sql, {"w": w_snap}):
                pid, st, start_time, comm, unit, first_snap, csnap = r[:7]
                vals = dict(zip(RAW_FIELDS, r[7 : 7 + nf], strict=True))
                d_mc, d_mb, d_ub, d_bb, p_dt = r[7 + nf : 12 + nf]
                ws, wrss, fs, frss = r[12 + nf :]
                base_snap, base_rss = (ws, wrss) if ws is not None else (fs, frss)
                if fs is None and first_snap <= w_snap:
                    # no head row at all (version 5 stores none for a process that did not change in the
                    # head's periods): it held its current values over the whole window
                    base_snap, base_rss = w_snap, vals["rss_kb"]
                growth = None
                if (
                    base_snap is not None
                    and base_snap in head
                    and vals["rss_kb"] is not None
                    and base_rss is not None
                ):
                    el = (ts_ms - head[base_snap]) / 1000
                    if el >= 60:
                        growth = (vals["rss_kb"] - base_rss) * 3600 / el
                fresh = csnap == sid
                dt = (p_dt if fresh and p_dt else dt_ms) or 0
                mmaps_s = mmap_bps = brk_bps = None
                if vals["mmap_count"] is not None and dt > 0:
                    mmaps_s = (d_mc or 0) * 1000 / dt if fresh else 0.0
                    mmap_bps = (d_mb or 0) * 1000 / dt if fresh else 0.0
                    brk_bps = (d_bb or 0) * 1000 / dt if fresh else 0.0
                mc, mb = vals["mmap_count"], vals["mmap_bytes"]
                rows.append(
                    TopRow(
                        pid=pid,
                        start_ticks=st,
                        start_time=start_time,
                        comm=comm,
                        unit=unit,
                        **vals,
                        growth_kb_per_h=None if growth is None else round(growth, 1),
                        mmaps_per_s=None if mmaps_s is None else round(mmaps_s, 2),
                        mmap_bytes_per_s=None if mmap_bps is None else round(mmap_bps, 1),
                        brk_bytes_per_s=None if brk_bps is None else round(brk_bps, 1),
                        mean_mmap_bytes=round(mb / mc) if mc and mb is not None else None,
                    )
                )
            summary = TopSummary(
                ts=ts_ms / 1000,
                interval_s=None if dt_ms is None else dt_ms / 1000,
                mem_total_kb=mtot,
                mem_available_kb=mavail,
                swap_used_kb=None if stot is None or sfree is None else stot - sfree,
                swap_total_kb=stot,
                processes=nproc,
                mmaps_per_s=round(sum(r.mmaps_per_s or 0 for r in rows), 2),
                mmap_bytes_per_s=round(sum(r.mmap_bytes_per_s or 0 for r in rows), 1),
                brk_bytes_per_s=round(sum(r.brk_bytes_per_s or 0 for r in rows), 1),
            )
            return Top(summary, tuple(rows))

    # ---- groups and host series --------------------------------------------------------------------------
    def groups(self, by: str = "cgroup", window_s: float = 600.0) -> list[dict[str, Any]]:
        """Live memory cgroups (by="cgroup") or systemd units (by="unit") with sums, charge and growth."""
        with self._read():
            return series_read.groups(self.db, by, window_s)

    def series_history(
        self, kind: str, name: str, since: float, until: float, tier: int | None = None
    ) -> list[dict[str, Any]]:
        """The series of one group (kind "cgroup"/"unit") or of the host (kind "host"), oldest first."""
        with self._read():
            if tier is None:
                tier = self._choose_tier(since, until)
            return series_read.history(
                self.db,
                kind,
                name,
                round(since * 1000),
                round(until * 1000),
                tier,
                self._cutoff(tier) if tier != TIER_RAW else 0,
                int(self._meta("compacted_through") or 0),
            )

    # ---- status and alerts ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Daemon status key/values plus the database's size, time span and contents."""
        with self._read():
            out: dict[str, Any] = dict(
                self.db.execute("SELECT key, value FROM status ORDER BY key").fetchall()
            )
            latest = self._latest()
            first = self.db.execute("SELECT min(ts_ms) FROM snapshots").fetchone()[0]
            oldest_chunk = self.db.execute(
                "SELECT min(t0_ms) FROM chunks WHERE tier = ?", (TIER_HOUR,)
            ).fetchone()[0]
            if oldest_chunk is not None:  # a constant live process's one old chunk is kept past the cut
                oldest_chunk = max(oldest_chunk, self._cutoff(TIER_HOUR))
            starts = [t for t in (first, oldest_chunk) if t is not None]
            out["latest_snapshot_ts"] = _s(latest[1]) if latest else None
            out["span_start_ts"] = _s(min(starts)) if starts else None
            out["span_end_ts"] = out["latest_snapshot_ts"]
            out["processes_live"] = self.db.execute("SELECT count(*) FROM current").fetchone()[0]
            out["processes_known"] = self.db.execute("SELECT count(*) FROM processes").fetchone()[0]
            out["snapshots_raw"] = self.db.execute("SELECT count(*) FROM snapshots").fetchone()[0]
            out["ooms"] = self.db.execute("SELECT count(*) FROM ooms").fetchone()[0]
            out["host_memory"] = series_read.host_latest(self.db)
        out["db_path"] = os.path.abspath(self.path)
        out["db_bytes"] = _size(self.path)
        out["wal_bytes"] = _size(self.path + "-wal")
        return out

    def alerts(self, since: float | None = None, state: str | None = None) -> list[AlertRow]:
        """Alert episodes (newest last), optionally only those still open at or after ``since``."""
        where: list[str] = []
        params: list[object] = []
        if since is not None:
            where.append("(resolved_at IS NULL OR resolved_at >= ?)")
            params.append(since)
        if state is not None:
            where.append("state = ?")
            params.append(state)
        sql = f"SELECT {', '.join(ALERT_COLS)} FROM alerts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY since, rule, pid, start_ticks"
        with self._read():
            return [AlertRow(*r) for r in self.db.execute(sql, params)]

    def ooms(self, since: float | None = None) -> list[dict[str, Any]]:
        """OOM kills recorded since ``since`` (unix seconds)."""
        with self._read():
            cur = self.db.execute(
                "SELECT ts_ms, pid, comm, total_vm_kb, anon_rss_kb, file_rss_kb, shmem_rss_kb, uid,"
                " oom_score_adj"
                " FROM ooms WHERE ts_ms >= ? ORDER BY ts_ms, id",
                (round((since or 0) * 1000),),
            )
            cols = ["ts", *(d[0] for d in cur.description[1:])]
            return [dict(zip(cols, (r[0] / 1000, *r[1:]), strict=True)) for r in cur]

    def triage(self, pid: int | None = None, triage_id: int | None = None) -> dict[str, Any] | None:
        """The latest triage result of `pid`, or the one with `triage_id` (None when there is none)."""
        from memwatchd.store import triage

        with self._read():
            if not triage.has_table(self.db):
                return None
            if triage_id is not None:
                return triage.by_id(self.db, triage_id)
            return triage.latest(self.db, pid or 0)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


class _Ctx:
    """State shared by the per-process parts of one history query."""

    def __init__(
        self, r: StoreReader, tier: int, since_ms: int, until_ms: int, latest: tuple[int, int]
    ) -> None:
        self.r, self.tier, self.since_ms, self.until_ms, self.latest = r, tier, since_ms, until_ms, latest
        db = r.db
        self.compacted = int(r._meta("compacted_through") or 0)
        if tier == TIER_RAW:
            rng = db.execute(
                "SELECT id, ts_ms FROM snapshots WHERE ts_ms >= ? AND ts_ms <= ? ORDER BY id",
                (since_ms, until_ms),
            ).fetchall()
            self.ids = [x[0] for x in rng]
            self.ts = dict(rng)
        else:
            self.bucket_ms = BUCKET_MS[tier]
            self.cutoff = r._cutoff(tier)
            self.lo_ms = max(since_ms - self.bucket_ms + 1, self.cutoff)
            head = db.execute(
                "SELECT id, ts_ms, kf FROM snapshots WHERE id > ? ORDER BY id", (self.compacted,)
            ).fetchall()
            self.head_buckets = Buckets([x[0] for x in head], [x[1] for x in head], self.bucket_ms)
            # the head's periods: [first id, last id] between period starts
            starts = [x[0] for k, x in enumerate(head) if k == 0 or x[2]]
            self.head_periods = [
                (a, (starts[k + 1] - 1) if k + 1 < len(starts) else head[-1][0]) for k, a in enumerate(starts)
            ]
            # compacted periods of version 5 in the range: (snap0, snap1, blob); decoded when first needed
            self.periods = (
                db.execute(
                    "SELECT snap0, snap1, data FROM periods WHERE t1_ms >= ? AND t0_ms <= ? ORDER BY snap0",
                    (self.lo_ms, until_ms),
                ).fetchall()
                if r.version >= 5
                else []
            )
            self._period_runs: dict[int, list[tuple[int, int, int]]] = {}

    def _runs(self, snap0: int, data: bytes) -> list[tuple[int, int, int]]:
        runs = self._period_runs.get(snap0)
        if runs is None:
            runs = self._period_runs[snap0] = codec.decode_period(data)
        return runs

    def _base(self, p: Proc) -> dict[str, Any]:
        return {
            "pid": p.pid,
            "start_ticks": p.start_ticks,
            "start_time": p.start_time,
            "comm": p.comm,
            "unit": p.unit,
            "tier": TIER_NAMES[self.tier],
        }

    def raw(self, p: Proc) -> list[HistoryRow]:
        ids = self.ids
        end = p.last_snap if p.last_snap is not None else self.latest[0]
        lo, hi = bisect_left(ids, p.first_snap), bisect_right(ids, end)
        if lo >= hi:
            return []
        first, last = ids[lo], ids[hi - 1]
        entries = []
        head = self.r._head(p.id) if last > self.compacted else []
        if first <= self.compacted or not head or head[0][0] > first:
            # the values held at `first` may be those of its last change before the range (version 5
            # stores nothing for a period in which a process did not change)
            entries = self.r._entries(TIER_RAW, p.id, self.ts[first], self.ts[last])
        entries += head
        keys = [e[0] for e in entries]
        emit = {first, last}
        # keyframe entries repeat the held values: only real changes become rows
        emit.update(
            k
            for i, k in enumerate(keys)
            if first <= k <= last and k in self.ts and (i == 0 or entries[i][1] != entries[i - 1][1])
        )
        base = self._base(p)
        out = []
        for s in sorted(emit):
            i = bisect_right(keys, s) - 1
            if i < 0:
                continue
            vals = dict(zip(RAW_FIELDS, entries[i][1], strict=True))
            row = {"ts": self.ts[s] / 1000, **base, "samples": 1, **vals}
            for m in _METRICS:
                v = vals[f"{m}_kb"]
                row[f"{m}_min_kb"], row[f"{m}_max_kb"], row[f"{m}_avg_kb"] = (
                    v,
                    v,
                    None if v is None else float(v),
                )
            out.append(HistoryRow(**{k: row[k] for k in HISTORY_FIELDS}))
        return out

    def rolled(self, p: Proc) -> list[HistoryRow]:
        bm = self.bucket_ms
        end = p.last_snap if p.last_snap is not None else self.latest[0]
        parts = self._stored_and_implied(p, end)
        base = self._base(p)
        out = []
        for b, a in merge_sorted(parts):
            start = b * bm
            if start + bm <= self.since_ms or start > self.until_ms or start < self.cutoff:
                continue
            row: dict[str, Any] = {"ts": start / 1000, **base, "samples": a[0]}
            for f in RAW_FIELDS:
                row[f] = last_of(a, f)
            for m in _METRICS:
                o = 1 + 5 * _METRICS.index(m)
                mn, mx, sm, cnt, _ = a[o : o + 5]
                row[f"{m}_min_kb"], row[f"{m}_max_kb"] = mn, mx
                row[f"{m}_avg_kb"] = round(sm / cnt, 3) if cnt and sm is not None else None
            out.append(HistoryRow(**{k: row[k] for k in HISTORY_FIELDS}))
        return out

    def _stored_and_implied(self, p: Proc, end: int) -> list[list[tuple[int, codec.Values]]]:
        """The process's buckets, period by period in time order: a stored chunk, the head's rows, or (a
        period in which it did not change) the values it held, over the period's snapshots."""
        parts: list[list[tuple[int, codec.Values]]] = []
        carry: codec.Values | None = None
        chunks = self.r._chunks(self.tier, p.id, self.lo_ms, self.until_ms)
        stored = {s0 for s0, _ in chunks if s0 is not None}
        items: list[tuple[int, int, bytes]] = [(-1 if s0 is None else s0, 0, d) for s0, d in chunks]
        items += [
            (s0, 1, d)
            for s0, s1, d in self.periods
            if s0 not in stored and s1 >= p.first_snap and s0 <= end and s0 <= self.compacted
        ]
        items.sort(key=lambda x: (x[0], x[1]))
        for s0, implied, data in items:
            if not implied:
                buckets = codec.decode_agg(data)
                parts.append(buckets)
                if buckets:
                    carry = tuple(last_of(buckets[-1][1], f) for f in RAW_FIELDS)
            elif carry is not None:
                runs = self._runs(s0, data)
                parts.append(constant(carry, runs, max(s0, p.first_snap), end, self.bucket_ms))
        if end > self.compacted:
            head = self.r._head(p.id)
            keys = [h[0] for h in head]
            for a, b in self.head_periods:
                if b < p.first_snap or a > end:
                    continue
                rows = head[bisect_left(keys, a) : bisect_right(keys, b)]
                if rows:
                    parts.append(rollup(rows, self.head_buckets, max(rows[0][0], p.first_snap), min(b, end)))
                    carry = rows[-1][1]
                elif carry is not None:
                    parts.append(rollup([(a, carry)], self.head_buckets, max(a, p.first_snap), min(b, end)))
        return parts


__all__ = [
    "HISTORY_FIELDS",
    "AlertRow",
    "HistoryRow",
    "Proc",
    "ProcessRow",
    "ReaderError",
    "StoreReader",
    "Top",
    "TopRow",
]
