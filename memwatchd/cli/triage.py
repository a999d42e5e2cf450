"""`memwatchctl triage`: where a process allocates (the latest leak triage result, or a new trace).

Reading needs only read access to the database. `--duration` asks the running daemon for a trace through
its control socket (DB + ".sock", group-writable for the database's group) and waits for it; memwatchctl
itself attaches nothing and writes nothing.
"""

from __future__ import annotations

import json
from typing import Any

import click

from memwatchd.cli.main import Obj, errors
from memwatchd.triage.control import REPLY_MARGIN_S, ControlError, call, socket_path
from memwatchd.triage.message import summary_lines
from memwatchd.triage.report import TriageResult
from memwatchd.units import parse_duration


def _duration(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        s = parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--duration") from None
    if not 1 <= s <= 3600:
        raise click.BadParameter("must be between 1s and 1h", param_hint="--duration")
    return s


def _print(d: dict[str, Any], as_json: bool, max_stacks: int) -> None:
    if as_json:
        click.echo(json.dumps(d, indent=2, sort_keys=True))
        return
    r = TriageResult.from_dict(d)
    reason = f", {r.reason}" if r.reason else ""
    click.echo(f"Triage #{d.get('id', '-')} of {r.comm} (pid {r.pid}){reason}: {r.status}")
    for line in summary_lines(r, max_stacks):
        click.echo(line)


@click.command("triage")
@click.option("--pid", type=int, required=True, help="The process to show (or to trace with --duration).")
@click.option(
    "--duration",
    metavar="DURATION",
    default=None,
    help="Ask the running daemon to trace the process for this long now (e.g. 30s), wait, and print.",
)
@click.option("--stacks", "max_stacks", type=int, default=10, show_default=True, help="Stacks to print.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON.")
@click.pass_obj
@errors
def triage(obj: Obj, pid: int, duration: str | None, max_stacks: int, as_json: bool) -> None:
    """Where a process allocates: outstanding bytes by allocation stack, from a bounded sampled trace.

    The daemon traces a process by itself when a growth or leak alert fires on it ([triage] in its
    configuration); without --duration this prints the latest result for PID. Bytes and counts are
    estimates for the whole process, scaled up from the sampled allocations (sampling rate shown).

    \b
    Examples:
      memwatchctl triage --pid 1234                  # the latest result for pid 1234
      memwatchctl triage --pid 1234 --duration 30s   # trace it now for 30 s (daemon must run), then print
      memwatchctl triage --pid 1234 --json | jq '.stacks[0].frames[0].function'
    """
    seconds = _duration(duration)
    reader = obj.reader()
    if seconds is None:
        d = reader.triage(pid=pid)
        if d is None:
            raise click.ClickException(
                f"no triage result for pid {pid} (ask for one: memwatchctl triage --pid {pid} --duration 30s)"
            )
        _print(d, as_json, max_stacks)
        return
    if not as_json:
        click.echo(f"Tracing pid {pid} for {duration} ...", err=True)
    try:
        reply = call(
            socket_path(reader.path),
            {"op": "triage", "pid": pid, "duration_s": seconds},
            seconds + REPLY_MARGIN_S,
        )
    except ControlError as e:
        raise click.ClickException(str(e)) from None
    if not reply.get("ok"):
        raise click.ClickException(str(reply.get("error", "the daemon refused")))
    stored = reader.triage(triage_id=int(reply["id"])) if reply.get("id") else None
    d = stored or {**reply["result"], "id": reply.get("id")}
    _print(d, as_json, max_stacks)
    if d.get("status") == "failed":
        raise SystemExit(1)
