"""memwatchctl: query memwatchd's history (read-only; never needs root beyond reading the database).

Commands are verbs over the store (top, history, processes, plot, status, alerts); shared options are
decorators defined once. Errors reach the user as one line "Error: ..." with exit 1 (2 for usage errors).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib
import json
import math
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click

from memwatchd.cli import render as R
from memwatchd.cli.outcome import OneLineGroup
from memwatchd.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from memwatchd.safefile import not_regular
from memwatchd.text import from_arg
from memwatchd.units import parse_duration

if TYPE_CHECKING:
    from memwatchd.store.reader import Proc, StoreReader
    from memwatchd.store.rows import HistoryRow, ProcessRow

F = TypeVar("F", bound=Callable[..., Any])
NOW_ENV = "MEMWATCHCTL_NOW"  # fixes "now" (unix seconds) for reproducible output
PID_MAX = 4194304  # Linux's PID_MAX_LIMIT: no pid is larger
LAST_TS = 253402300799.0  # 9999-12-31 23:59:59 UTC, the last time datetime can show


def now() -> float:
    """Current time, or MEMWATCHCTL_NOW when set (tests, replaying an incident)."""
    fixed = os.environ.get(NOW_ENV)
    if fixed:
        try:
            t = float(fixed)
        except ValueError:
            t = math.nan
        if not 0 <= t <= LAST_TS:  # also refuses nan
            raise click.UsageError(f"{NOW_ENV} must be unix seconds, got {fixed!r}")
        return t
    return time.time()


class TimeSpec(click.ParamType[float, object]):
    """A point in time: a duration ago ("2h", "1d12h"), "now", an ISO time (local unless it has a zone),
    or "@UNIXSECONDS"."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            ts = self._convert(value, param, ctx)
        except (ValueError, OverflowError, OSError):  # datetime's range ends at year 1 and 9999
            ts = math.nan
        if not 0 <= ts <= LAST_TS:  # also refuses nan
            self.fail(f"{str(value)[:64]!r} is not a time between 1970 and 9999", param, ctx)
        return ts

    def _convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        text = str(value).strip()
        if "\x00" in text or len(text) > 64:
            self.fail("expected a duration like '2h' or an ISO time like '2024-05-01T13:00'", param, ctx)
        if text == "now":
            return now()
        if text.startswith("@"):
            try:
                return float(text[1:])
            except ValueError:
                self.fail(f"expected @UNIXSECONDS, got {text!r}", param, ctx)
        try:
            return now() - parse_duration(text)
        except ValueError:
            pass
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                f"expected a duration like '2h' or an ISO time like '2024-05-01T13:00', got {text!r}",
                param,
                ctx,
            )
        if dt.tzinfo is None:
            dt = dt.astimezone()  # naive: local time
        return dt.timestamp()


TIME = TimeSpec()


class Obj:
    """Per-invocation state: where the database is, opened on first use."""

    def __init__(self, db: str | None, config: str) -> None:
        self.db_path, self.config = db, config
        self._reader: StoreReader | None = None

    def reader(self) -> StoreReader:
        if self._reader is None:
            from memwatchd.store.reader import StoreReader

            path = self.db_path
            if path is None:
                try:
                    path = load_config(self.config).storage.path
                except ConfigError as e:
                    raise click.ClickException(f"{e} (or name the database with --db FILE)") from None
            problem = not_regular(path)  # a FIFO would block SQLite's open forever: refuse before it
            if problem is not None:
                raise click.ClickException(f"database {path}: {problem}")
            self._reader = StoreReader(path)
        return self._reader

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


def errors(fn: F) -> F:
    """Turn store and OS failures into one-line errors (exit 1)."""
    from memwatchd.store.reader import ReaderError

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ReaderError as e:
            raise click.ClickException(str(e)) from None
        except sqlite3.Error as e:
            raise click.ClickException(f"database error: {e}") from None
        except OSError as e:
            raise click.ClickException(f"{e.strerror or e}") from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:  # a corrupt row must not become a traceback
            raise click.ClickException(f"unexpected {type(e).__name__}: {e}") from None

    return wrapper  # type: ignore[return-value]


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(fn)


def range_options(default_since: str) -> Callable[[F], F]:
    def deco(fn: F) -> F:
        fn = click.option(
            "--until",
            type=TIME,
            default="now",
            show_default=True,
            help="End of the range: a duration ago ('30m'), an ISO time ('2024-05-01T13:00', local unless it"
            " has a zone), '@UNIXSECONDS' or 'now'.",
        )(fn)
        fn = click.option(
            "--since",
            type=TIME,
            default=default_since,
            show_default=True,
            help="Start of the range: a duration ago ('2h', '7d'), an ISO time or '@UNIXSECONDS'.",
        )(fn)
        return fn

    return deco


def _kept(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A name as given on the command line, in the form memwatchd keeps names (text.from_arg): bytes that
    are not UTF-8 match the same bytes in a process's name, a backslash matches a backslash."""
    return None if value is None else from_arg(value)


def select_options(fn: F) -> F:
    fn = click.option(
        "--unit",
        callback=_kept,
        help="Only processes of this systemd unit (exact match), e.g. nginx.service.",
    )(fn)
    fn = click.option(
        "--comm-glob",
        callback=_kept,
        help="Only processes whose name matches this glob (* ? [..], case-sensitive).",
    )(fn)
    fn = click.option(
        "--comm",
        callback=_kept,
        help="Only processes with exactly this name, byte for byte as in /proc/PID/comm"
        ' (e.g. --comm "$(cat /proc/1234/comm)").',
    )(fn)
    fn = click.option(
        "--pid",
        type=click.IntRange(0, PID_MAX),
        help="Only this process ID (every process that had it in the range).",
    )(fn)
    return fn


def _as_json(o: object) -> object:
    """Typed rows (frozen dataclasses) print as objects with their field names."""
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=_as_json))


def _check_range(since: float, until: float) -> None:
    if since > until:
        raise click.UsageError("--since is after --until")


class LazyGroup(OneLineGroup):
    """A group whose heavier subcommands are imported only when used (notify-test loads Apprise)."""

    lazy = {
        "notify-test": ("memwatchd.cli.notify_test", "notify_test"),
        "triage": ("memwatchd.cli.triage", "triage"),
        "groups": ("memwatchd.cli.groups", "groups"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module, attr = self.lazy[cmd_name]
            cmd: click.Command = getattr(importlib.import_module(module), attr)
            return cmd
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--db",
    type=click.Path(dir_okay=False),
    default=None,
    help="Database file to read (overrides the one named by the configuration).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=DEFAULT_CONFIG_PATH,
    show_default=True,
    help="memwatchd configuration whose [storage] path names the database.",
)
@click.version_option(package_name="memwatchd", help="Show the version and exit.")
@click.pass_context
def cli(ctx: click.Context, db: str | None, config_path: str) -> None:
    """Query the memory history recorded by memwatchd.

    Reads the daemon's SQLite database read-only (found through --config's [storage] path, or named
    with --db). Times are shown in local time (set TZ to change it); sizes in binary units
    (1K = 1024 bytes). Every command has --help; tables become JSON with --json.

    \b
    Examples:
      memwatchctl top                                   # live, sortable process view
      memwatchctl plot --comm java --since 6h           # chart the java processes' RSS
      memwatchctl --db /tmp/copy.db history --pid 1234  # read a copied database
      eval "$(memwatchctl completion bash)"             # tab completion in this shell
    """
    time.tzset()
    obj = Obj(db, config_path)
    ctx.obj = obj
    ctx.call_on_close(obj.close)


# ---- top ---------------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--sort",
    "sort_by",
    type=click.Choice(list(R.SORT_KEYS)),
    default="rss",
    show_default=True,
    help="Order by resident, anonymous or swapped memory, RSS growth per hour, or mmap activity.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="Show at most this many processes (0: all; the live view shows all unless this is given).",
)
@click.option(
    "--window", default="10m", show_default=True, help="Window over which growth per hour is measured."
)
@click.option(
    "--once",
    is_flag=True,
    help="Print the table once and exit, even on a terminal (the interactive view is the default there).",
)
@click.option(
    "--refresh",
    default="2s",
    show_default=True,
    help="How often the interactive view re-reads the database ('500ms', '2s', '1m').",
)
@json_option
@click.pass_context
@errors
def top(
    ctx: click.Context, sort_by: str, limit: int, window: str, once: bool, refresh: str, as_json: bool
) -> None:
    """Processes in the latest snapshot, biggest first, with a host summary.

    Per process: memory, RSS growth per hour over --window, mmap calls and bytes per second over the last
    interval, and the mean mapping size (mmap bytes / mmap calls) as a fragmentation hint.

    On a terminal this is a live view, re-read every --refresh: keys r a s g m sort by RSS, anon, swap,
    growth or mmap (again: reverse), / filters by name, unit or PID (Esc clears), Enter charts the
    selected process's history, c switches to the group view (memory cgroups; b: by unit, m/g: sort by
    memory/growth, Esc: back), q quits. With --once or --json, or when output is not a terminal, the
    table is printed once.

    \b
    Examples:
      memwatchctl top                       # live view on a terminal
      memwatchctl top --once --sort growth  # print the fastest-growing processes once
      memwatchctl top --json --limit 5 | jq '.processes[].comm'
    """
    obj: Obj = ctx.obj
    try:
        window_s = parse_duration(window)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--window") from None
    try:
        refresh_s = parse_duration(refresh)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--refresh") from None
    if refresh_s <= 0:
        raise click.BadParameter("must be more than 0", param_hint="--refresh")
    # Textual reads keys from stdin and draws on stderr: all three must be the terminal.
    if not once and not as_json and all(f.isatty() for f in (sys.stdin, sys.stdout, sys.stderr)):
        from memwatchd.cli.tui import run_top

        given = ctx.get_parameter_source("limit") is not click.core.ParameterSource.DEFAULT
        reader = obj.reader()  # a missing or foreign database fails here as "Error: ...", before the screen
        run_top(reader, window_s=window_s, sort_by=sort_by, limit=limit if given else 0, refresh_s=refresh_s)
        return
    data = obj.reader().top(window_s)
    rows = sorted(data.processes, key=lambda r: (R.SORT_KEYS[sort_by](r), -r.pid), reverse=True)
    if limit:
        rows = rows[:limit]
    if as_json:
        _print_json({"summary": data.summary, "processes": rows})
        return
    con = R.console()
    if data.summary is None:
        con.print("(no snapshots yet)")
        return
    con.print(R.top_summary(data.summary))
    headers = list(R.TOP_HEADERS)
    body = [R.top_cells(r) for r in rows]
    con.print(
        R.table(
            headers, body, right={"PID", "RSS", "ANON", "SWAP", "GROWTH", "MMAP/S", "MMAP B/S", "MEAN MAP"}
        )
    )


# ---- history -----------------------------------------------------------------------------------------
def _selected(
    obj: Obj,
    pid: int | None,
    comm: str | None,
    comm_glob: str | None,
    unit: str | None,
    since: float,
    until: float,
) -> list[Proc]:
    if pid is None and comm is None and comm_glob is None and unit is None:
        raise click.UsageError("name the processes with --pid, --comm, --comm-glob or --unit")
    return list(
        obj.reader().find_processes(
            pid=pid, comm=comm, comm_glob=comm_glob, unit=unit, since=since, until=until
        )
    )


def _tier(name: str) -> int | None:
    from memwatchd.store.schema import TIER_HOUR, TIER_MINUTE, TIER_RAW

    return {"auto": None, "raw": TIER_RAW, "minute": TIER_MINUTE, "hour": TIER_HOUR}[name]


TIER_CHOICE = click.Choice(["auto", "raw", "minute", "hour"])
TIER_HELP = (
    "Resolution: every change (raw), per-minute or per-hour rollups; auto picks by range length"
    " (raw up to 6h, minute up to 3d) and by what retention still holds."
)


@cli.command()
@select_options
@click.option(
    "--cgroup",
    metavar="PATH",
    callback=_kept,
    help="The series of this memory cgroup (charge, limit, sums of its processes) instead of processes.",
)
@click.option(
    "--group",
    "unit_group",
    is_flag=True,
    help="With --unit: the unit's group series (charge, limit, sums) instead of its processes' rows.",
)
@click.option(
    "--host", is_flag=True, help="The host breakdown's series (page cache, shmem, slab, unaccounted, ...)."
)
@range_options("1h")
@click.option("--tier", type=TIER_CHOICE, default="auto", show_default=True, help=TIER_HELP)
@json_option
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV (one header line, then one line per row).")
@click.pass_obj
@errors
def history(
    obj: Obj,
    pid: int | None,
    comm: str | None,
    comm_glob: str | None,
    unit: str | None,
    cgroup: str | None,
    unit_group: bool,
    host: bool,
    since: float,
    until: float,
    tier: str,
    as_json: bool,
    as_csv: bool,
) -> None:
    """Memory of one process, or all processes of a name or unit, over time (oldest first).

    The raw tier has a row at each stored change plus the first and last snapshot of the range at which
    the process was present (values are held between changes). Rollup tiers have one row per minute or
    hour with the last values and min/max/avg of rss, anon and swap.

    With --cgroup PATH, --unit NAME --group or --host the rows are a group's or the host's series instead
    (memory_current_kb, memory_limit_kb, sums of rss/anon/swap; or the host breakdown's parts); rollup
    tiers hold the last values of each minute or hour.

    \b
    Examples:
      memwatchctl history --pid 1234 --since 2h
      memwatchctl history --unit nginx.service --since 1d --tier minute
      memwatchctl history --comm-glob 'php-fpm*' --since 30m --csv > fpm.csv
      memwatchctl history --cgroup /system.slice/api.service --since 6h --json
      memwatchctl history --unit api.service --group --since 1d
      memwatchctl history --host --since 2h
    """
    from memwatchd.store.reader import HISTORY_FIELDS

    if as_json and as_csv:
        raise click.UsageError("--json and --csv exclude each other")
    _check_range(since, until)
    if cgroup is not None or unit_group or host:
        from memwatchd.cli.groups import series_history

        series_history(
            obj, pid, comm, comm_glob, unit, cgroup, unit_group, host, since, until, tier, as_json, as_csv
        )
        return
    procs = _selected(obj, pid, comm, comm_glob, unit, since, until)
    rows = obj.reader().history(procs, since, until, _tier(tier)) if procs else []
    if as_json:
        _print_json(rows)
        return
    if as_csv:
        w = csv.DictWriter(sys.stdout, fieldnames=list(HISTORY_FIELDS), lineterminator="\n")
        w.writeheader()
        w.writerows(dataclasses.asdict(r) for r in rows)
        return
    con = R.console()
    if not rows:
        con.print("(no data in range)")
        return
    rolled = rows[0].tier != "raw"
    headers = [
        "TIME",
        "PID",
        "COMM",
        "RSS",
        "ANON",
        "SWAP",
        "VM",
        "HWM",
        "MMAPS",
        "MMAP B",
        "MUNMAP B",
        "BRK B",
    ]
    if rolled:
        headers[4:4] = ["RSS MIN", "RSS MAX"]
    body = []
    for r in rows:
        line = [
            R.when(r.ts),
            str(r.pid),
            R.clean(r.comm),
            R.kb(r.rss_kb),
            R.kb(r.anon_kb),
            R.kb(r.swap_kb),
            R.kb(r.vm_kb),
            R.kb(r.hwm_kb),
            R.num(r.mmap_count),
            R.size(r.mmap_bytes),
            R.size(r.munmap_bytes),
            R.size(r.brk_bytes),
        ]
        if rolled:
            line[4:4] = [R.kb(r.rss_min_kb), R.kb(r.rss_max_kb)]
        body.append(line)
    con.print(f"tier: {rows[0].tier}")
    con.print(R.table(headers, body, right=set(headers) - {"TIME", "COMM"}))


# ---- processes ---------------------------------------------------------------------------------------
@cli.command()
@select_options
@range_options("24h")
@json_option
@click.pass_obj
@errors
def processes(
    obj: Obj,
    pid: int | None,
    comm: str | None,
    comm_glob: str | None,
    unit: str | None,
    since: float,
    until: float,
    as_json: bool,
) -> None:
    """Processes seen in a time range, exited ones included, with start, first/last seen and exit times.

    A process is one (PID, start time): a reused PID shows as a second row. Live processes show "live"
    as last seen; exited ones show when they were last seen and, when the daemon saw the exit, its
    time and code.

    \b
    Examples:
      memwatchctl processes                      # the last 24 hours
      memwatchctl processes --comm-glob 'java*' --since 7d
      memwatchctl processes --unit cron.service --since 2024-05-01T00:00 --json
    """
    _check_range(since, until)
    rows = obj.reader().processes(
        pid=pid, comm=comm, comm_glob=comm_glob, unit=unit, since=since, until=until
    )
    if as_json:
        _print_json(rows)
        return
    con = R.console()
    if not rows:
        con.print("(no processes in range)")
        return
    headers = ["PID", "COMM", "UNIT", "STARTED", "FIRST SEEN", "LAST SEEN", "EXITED", "CODE"]
    body = [
        [
            str(r.pid),
            R.clean(r.comm),
            R.clean(r.unit),
            R.when(r.start_time),
            R.when(r.first_seen),
            "live" if r.live else R.when(r.last_seen),
            R.when(r.exit_time),
            _exit_text(r),
        ]
        for r in rows
    ]
    con.print(R.table(headers, body, right={"PID", "CODE"}))


def _exit_text(r: ProcessRow) -> str:
    """The CODE column: the exit status, or -N for signal N, and "OOM" when the OOM killer ended it."""
    if r.exit_code is None:
        return "-"
    return f"{r.exit_code} OOM" if r.oom_killed else str(r.exit_code)


# ---- plot --------------------------------------------------------------------------------------------
@cli.command()
@select_options
@range_options("1h")
@click.option(
    "--metric",
    type=click.Choice(["rss", "anon", "swap"]),
    default="rss",
    show_default=True,
    help="Which memory to chart.",
)
@click.option("--tier", type=TIER_CHOICE, default="auto", show_default=True, help=TIER_HELP)
@click.option(
    "--width", type=click.IntRange(10, 1000), default=72, show_default=True, help="Chart width in columns."
)
@click.option(
    "--height", type=click.IntRange(2, 200), default=12, show_default=True, help="Chart height in lines."
)
@json_option
@click.pass_obj
@errors
def plot(
    obj: Obj,
    pid: int | None,
    comm: str | None,
    comm_glob: str | None,
    unit: str | None,
    since: float,
    until: float,
    metric: str,
    tier: str,
    width: int,
    height: int,
    as_json: bool,
) -> None:
    """A terminal chart of memory over time: one process, or the sum over a name or unit.

    Each column is one time slice holding the last value in it; with several processes the chart is
    their sum, each process's value held between its stored changes. --json prints the points.

    \b
    Examples:
      memwatchctl plot --pid 1234 --since 6h
      memwatchctl plot --unit postgresql.service --metric anon --since 3d --width 120
      memwatchctl plot --comm worker --since 1h --json
    """
    _check_range(since, until)
    procs = _selected(obj, pid, comm, comm_glob, unit, since, until)
    rows = obj.reader().history(procs, since, until, _tier(tier)) if procs else []
    series = _summed(rows, f"{metric}_kb")
    if as_json:
        _print_json([{"ts": t, f"{metric}_kb": v} for t, v in series])
        return
    what = (
        f"pid {pid}"
        if pid is not None
        else f"comm {comm}"
        if comm
        else f"comm {comm_glob}"
        if comm_glob
        else f"unit {unit}"
    )
    con = R.console()
    tier_name = rows[0].tier if rows else "-"
    con.print(
        f"{metric} of {R.clean(what)} ({len(procs)} process{'es' if len(procs) != 1 else ''},"
        f" tier {tier_name})"
    )
    for line in R.chart([(t, v * 1024) for t, v in series], width, height):
        con.print(line)


def _summed(rows: list[HistoryRow], field: str) -> list[tuple[float, int]]:
    """Sum a field over processes at every row time, each process's value held between its rows."""
    times = sorted({r.ts for r in rows})
    per: dict[tuple[int, int], list[tuple[float, int | None]]] = {}
    for r in rows:
        per.setdefault((r.pid, r.start_ticks), []).append((r.ts, getattr(r, field)))
    out = []
    idx = {k: 0 for k in per}
    cur: dict[tuple[int, int], int | None] = {}
    for t in times:
        total, any_value = 0, False
        for k, pts in per.items():
            i = idx[k]
            while i < len(pts) and pts[i][0] <= t:
                cur[k] = pts[i][1]
                i += 1
            idx[k] = i
            v = cur.get(k)
            if pts[0][0] <= t <= pts[-1][0] and v is not None:
                total += v
                any_value = True
        if any_value:
            out.append((t, total))
    return out


# ---- status ------------------------------------------------------------------------------------------
@cli.command()
@json_option
@click.pass_obj
@errors
def status(obj: Obj, as_json: bool) -> None:
    """The daemon's last snapshot, BPF state and lost events, and the database's size and time span.

    Shows whether the daemon is sampling (the last snapshot's age), whether eBPF probes are active or why
    not, how many events were lost, and how much history the database holds.

    \b
    Examples:
      memwatchctl status
      memwatchctl status --json | jq .bpf_state
    """
    st = obj.reader().status()
    if as_json:
        _print_json(st)
        return
    con = R.console()
    last = st.get("latest_snapshot_ts")
    lines = [
        ("database", f"{st['db_path']} ({R.size(st['db_bytes'])}, WAL {R.size(st['wal_bytes'])})"),
        (
            "time span",
            f"{R.when(st['span_start_ts'])} .. {R.when(st['span_end_ts'])}"
            + (
                f" ({R.span(st['span_end_ts'] - st['span_start_ts'])})"
                if st["span_start_ts"] and last
                else ""
            ),
        ),
        ("last snapshot", f"{R.when(last)} ({R.span(now() - last)} ago)" if last else "-"),
        ("daemon pid", str(st.get("pid", "-"))),
        ("BPF", str(st.get("bpf_state", "-"))),
        ("scan source", str(st.get("scan_source", "-"))),
        ("lost events", str(st.get("lost_events", "-"))),
        ("BPF map full", str(st.get("map_full", "-"))),
        *([("allocator", str(st["allocator"]))] if "allocator" in st else []),  # written since this version
        ("processes", f"{st['processes_live']} live, {st['processes_known']} known"),
        ("OOM kills", str(st["ooms"])),
    ]
    shown = {"pid", "bpf_state", "scan_source", "allocator", "lost_events", "map_full", "last_snapshot_ts"}
    computed = {
        "db_path",
        "db_bytes",
        "wal_bytes",
        "span_start_ts",
        "span_end_ts",
        "latest_snapshot_ts",
        "processes_live",
        "processes_known",
        "ooms",
        "snapshots_raw",
        "host_memory",
    }
    hm = st.get("host_memory")
    if hm:
        lines.append(
            (
                "host memory",
                f"total {R.kb(hm['total_kb'])}, available {R.kb(hm['available_kb'])}: processes anon"
                f" {R.kb(hm['processes_anon_kb'])} (rss {R.kb(hm['processes_rss_kb'])}), page cache"
                f" {R.kb(hm['page_cache_kb'])}, shmem {R.kb(hm['shmem_kb'])}, slab"
                f" {R.kb(hm['slab_reclaimable_kb'])} reclaimable + {R.kb(hm['slab_unreclaimable_kb'])}"
                f" unreclaimable, kernel stacks {R.kb(hm['kernel_stack_kb'])}, page tables"
                f" {R.kb(hm['page_tables_kb'])}, unaccounted {R.kb(hm['unaccounted_kb'])}",
            )
        )
    for k, v in st.items():
        if k not in shown and k not in computed:
            lines.append(
                (k.replace("_", " "), R.when(v) if k.endswith("_at") and isinstance(v, float) else str(v))
            )
    w = max(len(k) for k, _ in lines)
    for k, v in lines:
        con.print(f"{k:<{w}}  {R.clean(v)}")  # status values quote errors and paths: shown escaped


# ---- alerts ------------------------------------------------------------------------------------------
@cli.command()
@click.option(
    "--since", type=TIME, default=None, help="Only episodes still open at or after this time ('7d', ISO)."
)
@click.option(
    "--state",
    type=click.Choice(["pending", "firing", "resolved"]),
    default=None,
    help="Only episodes in this state.",
)
@json_option
@click.pass_obj
@errors
def alerts(obj: Obj, since: float | None, state: str | None, as_json: bool) -> None:
    """Alert history: one line per episode of a rule for a process (or the host), oldest first.

    An episode starts when its rule's condition first holds (pending, SINCE), then fires and later
    resolves; VALUE is the measured memory and RATE its growth per hour (growth and leak rules).

    \b
    Examples:
      memwatchctl alerts --since 7d
      memwatchctl alerts --state firing --json
    """
    rows = obj.reader().alerts(since=since, state=state)
    if as_json:
        _print_json(rows)
        return
    con = R.console()
    if not rows:
        con.print("(no alerts)")
        return
    headers = [
        "SINCE",
        "RULE",
        "KIND",
        "PID",
        "COMM",
        "STATE",
        "FIRED",
        "RESOLVED",
        "VALUE",
        "RATE",
        "SUMMARY",
    ]
    body = [
        [
            R.when(r.since),
            R.clean(r.rule),
            r.kind,
            str(r.pid),
            R.clean(r.comm),
            r.state,
            R.when(r.fired_at),
            R.when(r.resolved_at),
            R.size(r.value),
            "-" if r.rate is None else R.rate(r.rate * 3600, "/h"),
            R.clean(r.summary),
        ]
        for r in rows
    ]
    con.print(R.table(headers, body, right={"PID", "VALUE", "RATE"}))


# ---- completion --------------------------------------------------------------------------------------
COMPLETE_VAR = "_MEMWATCHCTL_COMPLETE"


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]), required=False)
def completion(shell: str | None) -> None:
    """Print the shell completion script for memwatchctl (bash, zsh or fish).

    Without SHELL, the one named by $SHELL is used. The script calls memwatchctl with
    _MEMWATCHCTL_COMPLETE set to complete commands, options and choices.

    \b
    Examples:
      eval "$(memwatchctl completion bash)"       # this bash session only
      memwatchctl completion bash > /etc/bash_completion.d/memwatchctl
      memwatchctl completion zsh > "${fpath[1]}/_memwatchctl"
      memwatchctl completion fish > ~/.config/fish/completions/memwatchctl.fish
    """
    from click.shell_completion import get_completion_class

    if shell is None:
        shell = os.path.basename(os.environ.get("SHELL", ""))
        if shell not in ("bash", "zsh", "fish"):
            raise click.UsageError("name the shell: memwatchctl completion bash|zsh|fish")
    comp_cls = get_completion_class(shell)
    assert comp_cls is not None  # click ships all three
    click.echo(comp_cls(cli, {}, "memwatchctl", COMPLETE_VAR).source(), nl=False)


def main() -> None:
    """Entry point of the memwatchctl script."""
    cli.main(prog_name="memwatchctl")
