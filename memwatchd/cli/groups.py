"""memwatchctl groups: memory cgroups and systemd units with their processes' sums, charge and limit."""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable
from typing import Any

import click

from memwatchd.cli import render as R
from memwatchd.cli.main import Obj, _print_json, _tier, errors, json_option
from memwatchd.units import parse_duration

GROUP_SORT_KEYS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "memory": lambda r: r["memory_current_kb"] if r["memory_current_kb"] is not None else r["rss_kb"] or 0,
    "growth": lambda r: r["growth_kb_per_h"] if r["growth_kb_per_h"] is not None else float("-inf"),
}
# JSON keys of a row, in order (the interface contract; "members" lists the live processes)
ROW_KEYS = (
    "group",
    "by",
    "unit",
    "cgroup",
    "processes",
    "rss_kb",
    "anon_kb",
    "swap_kb",
    "memory_current_kb",
    "memory_limit_kb",
    "growth_kb_per_h",
    "members",
)


def group_cells(r: dict[str, Any]) -> list[str]:
    """One row of the groups table (shared with the live view)."""
    lim = r["memory_limit_kb"]
    cur = r["memory_current_kb"]
    use = f"{100 * cur / lim:.0f}%" if cur is not None and lim else "-"
    return [
        R.clean(r["group"]),
        R.clean(r["unit"]) if r["by"] == "cgroup" else R.clean(r["cgroup"]),
        str(r["processes"]),
        R.kb(r["rss_kb"]),
        R.kb(r["anon_kb"]),
        R.kb(r["swap_kb"]),
        R.kb(cur),
        "unlimited" if lim is None else R.kb(lim),
        use,
        R.growth(r["growth_kb_per_h"]),
    ]


def group_headers(by: str) -> list[str]:
    return [
        "CGROUP" if by == "cgroup" else "UNIT",
        "UNIT" if by == "cgroup" else "CGROUP",
        "PROCS",
        "RSS",
        "ANON",
        "SWAP",
        "CHARGE",
        "LIMIT",
        "USE",
        "GROWTH",
    ]


def sorted_groups(rows: list[dict[str, Any]], sort_by: str) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (GROUP_SORT_KEYS[sort_by](r), r["group"]), reverse=True)


@click.command()
@click.option(
    "--by",
    type=click.Choice(["cgroup", "unit"]),
    default="cgroup",
    show_default=True,
    help="Group processes by memory cgroup path or by systemd unit.",
)
@click.option(
    "--sort",
    "sort_by",
    type=click.Choice(list(GROUP_SORT_KEYS)),
    default="memory",
    show_default=True,
    help="Order by memory (the cgroup's charge, else the RSS sum) or by its growth per hour.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Show at most this many groups (0: all).",
)
@click.option(
    "--window", default="10m", show_default=True, help="Window over which growth per hour is measured."
)
@json_option
@click.pass_obj
@errors
def groups(obj: Obj, by: str, sort_by: str, limit: int, window: str, as_json: bool) -> None:
    """Memory cgroups (or systemd units) that hold a monitored process, biggest first.

    Per group: its processes and the sums of their RSS, anonymous and swapped memory; the kernel's charge
    of the cgroup (memory.current on cgroup v2, memory.usage_in_bytes on v1: page cache, tmpfs and kernel
    memory included) against its limit (the tightest of the cgroup and its ancestors; "unlimited" and
    JSON null when none is set); and the growth per hour of the charge (of the RSS sum when the charge is
    unknown) over --window.

    \b
    Examples:
      memwatchctl groups                          # memory cgroups, largest charge first
      memwatchctl groups --by unit --sort growth  # systemd units, fastest-growing first
      memwatchctl groups --json | jq '.[] | select(.memory_limit_kb != null)'
      memwatchctl history --cgroup /system.slice/api.service --since 6h   # one group's series
    """
    try:
        window_s = parse_duration(window)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--window") from None
    rows = sorted_groups(obj.reader().groups(by, window_s), sort_by)
    if limit:
        rows = rows[:limit]
    if as_json:
        _print_json([{k: r[k] for k in ROW_KEYS} for r in rows])
        return
    con = R.console()
    if not rows:
        con.print("(no groups: is the daemon running with [groups] enabled?)")
        return
    headers = group_headers(by)
    con.print(R.table(headers, [group_cells(r) for r in rows], right=set(headers[2:])))


def series_history(
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
    """`history --cgroup PATH`, `--unit NAME --group` and `--host`: one group's or the host's series."""
    from memwatchd.store.schema import SERIES_FIELDS

    if pid is not None or comm is not None or comm_glob is not None:
        raise click.UsageError("--cgroup, --group and --host do not combine with --pid or --comm")
    if unit_group and unit is None:
        raise click.UsageError("--group needs --unit NAME")
    if sum((cgroup is not None, unit_group, host)) > 1 or (unit is not None and not unit_group):
        raise click.UsageError("name one series: --cgroup PATH, --unit NAME --group, or --host")
    kind, name = (
        ("host", "host") if host else ("cgroup", cgroup or "") if cgroup is not None else ("unit", unit or "")
    )
    rows = obj.reader().series_history(kind, name, since, until, _tier(tier))
    fields = (
        ["ts", "tier", *SERIES_FIELDS[kind]] if host else ["ts", "by", "group", "tier", *SERIES_FIELDS[kind]]
    )
    if as_json:
        _print_json(rows)
        return
    if as_csv:
        w = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return
    con = R.console()
    if not rows:
        con.print("(no data in range)")
        return
    headers = ["TIME", *(f.removesuffix("_kb").replace("_", " ").upper() for f in SERIES_FIELDS[kind])]
    body = [
        [R.when(r["ts"]), *(str(r[f]) if not f.endswith("_kb") else R.kb(r[f]) for f in SERIES_FIELDS[kind])]
        for r in rows
    ]
    con.print(f"{'host' if host else kind + ' ' + R.clean(name)}, tier: {rows[0]['tier']}")
    con.print(R.table(headers, body, right=set(headers) - {"TIME"}))
