"""Daemon side of a trace: run memwatchd.triage.tracer in a child process and read its result.

The daemon never imports bcc: the child compiles, attaches, waits out the window, detaches, symbolizes
and prints one JSON result. Killing the child (shutdown, timeout) detaches everything it attached.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from memwatchd.triage.report import STATUS_FAILED, TriageResult

COMPILE_MARGIN_S = 90.0  # a cold bcc compile on a loaded 2-core host, plus symbolization


def _env() -> dict[str, str]:
    # the child must import this very package, installed or not
    path = [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}


def failed_result(req: dict[str, Any], why: str, comm: str = "") -> TriageResult:
    now = time.time()
    return TriageResult(
        pid=int(req["pid"]),
        start_ticks=int(req.get("start_ticks") or 0),
        comm=comm,
        started_at=now,
        ended_at=now,
        sample_every=int(req["sample_every"]),
        status=STATUS_FAILED,
        error=why,
        reason=str(req.get("reason", "")),
        alert_rule=str(req.get("alert_rule", "")),
        alert_since=float(req.get("alert_since", 0.0)),
    )


async def run_trace(req: dict[str, Any]) -> TriageResult:
    """Trace per `req` (see tracer.Request) in a child; a failed result (never an exception) on problems."""
    deadline = float(req["duration_s"]) + COMPILE_MARGIN_S
    try:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-P",
            "-m",
            "memwatchd.triage.tracer",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_env(),
        )
    except OSError as e:
        return failed_result(req, f"cannot start the triage tracer: {e.strerror}")
    try:
        out, err = await asyncio.wait_for(child.communicate(json.dumps(req).encode()), deadline)
    except TimeoutError:
        await _kill(child)
        return failed_result(req, f"the triage tracer did not finish within {deadline:.0f}s")
    except asyncio.CancelledError:
        await _kill(child)  # shutdown: the uprobes go away with the child
        raise
    try:
        d = json.loads(out.decode("utf-8", "replace") or "{}")
        return TriageResult.from_dict(d)
    except (ValueError, KeyError, TypeError):
        lines = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
        detail = lines[-1].strip() if lines else f"exit status {child.returncode}"
        return failed_result(req, f"the triage tracer failed: {detail}")


async def _kill(child: asyncio.subprocess.Process) -> None:
    if child.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
    with contextlib.suppress(Exception):
        await child.wait()
