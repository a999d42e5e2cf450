"""Which traces run, when: on a firing growth/leak alert and on request, at most max_concurrent at once.

Owned by the daemon. It starts nothing until a trace is due (zero cost otherwise: no probe is attached
outside a trace), runs each trace through runner.run_trace (a child process), stores every result, and
hands results of alert-triggered traces to the daemon's follow-up callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from memwatchd.config import TriageConfig
from memwatchd.models import AlertRecord
from memwatchd.triage.report import STATUS_FAILED, TriageResult
from memwatchd.triage.runner import failed_result, run_trace
from memwatchd.triage.tracer import start_ticks_of

log = logging.getLogger("memwatchd.triage")

TRIGGER_KINDS = ("growth", "leak")
MAX_WAITING = 16  # alert-triggered traces queued behind max_concurrent; more are skipped (said in the log)
UNAVAILABLE = "uprobes unavailable"

Key = tuple[int, int]
Runner = Callable[[dict[str, Any]], Awaitable[TriageResult]]


class TriageRefused(Exception):
    """A requested trace cannot start (disabled, no such process, queue full); str() is one line."""


@dataclass(frozen=True, slots=True)
class Done:
    """A stored trace: its row id and result, and the alert that asked for it (None: on request)."""

    triage_id: int
    result: TriageResult
    alert: AlertRecord | None
    rule: Any = None  # the alert's RuleConfig (for its notification URLs)


class TriageManager:
    """Schedules traces; save(result) stores one and returns its id; on_done(done) follows up on alerts."""

    def __init__(
        self,
        cfg: TriageConfig,
        save: Callable[[TriageResult], Awaitable[int]],
        on_done: Callable[[Done], None],
        *,
        proc: str = "/proc",
        runner: Runner = run_trace,
    ) -> None:
        self.cfg = cfg
        self._save = save
        self._on_done = on_done
        self._proc = proc
        self._runner = runner
        self._slots = asyncio.Semaphore(cfg.max_concurrent)
        self._max = cfg.max_concurrent
        self._tasks: dict[Key, asyncio.Task[Done]] = {}
        self._told: set[str] = set()
        self.running = 0
        self.completed = 0
        self.failed = 0
        self.skipped = 0
        self.unavailable: str | None = None  # the last "uprobes unavailable" reason, for status output

    def update_config(self, cfg: TriageConfig) -> None:
        """Apply a reload; a new max_concurrent applies to traces that start from now on."""
        if cfg.max_concurrent != self._max:
            self._slots = asyncio.Semaphore(cfg.max_concurrent)
            self._max = cfg.max_concurrent
        self.cfg = cfg

    @property
    def waiting(self) -> int:
        return len(self._tasks) - self.running

    def on_transitions(self, due: Sequence[Any]) -> None:
        """Start a trace for each growth/leak alert that just went firing (not on repeats or restarts)."""
        if not self.cfg.enabled:
            return
        for t in due:
            r = t.record
            if t.reason != "firing" or r.kind not in TRIGGER_KINDS or r.state != "firing":
                continue
            key = (r.pid, r.start_ticks)
            if key in self._tasks:
                continue  # already being traced (another rule fired on it too)
            if self.waiting >= MAX_WAITING:
                self.skipped += 1
                log.warning("triage of pid %d skipped: %d traces already waiting", r.pid, self.waiting)
                continue
            self._spawn(key, self.cfg.duration_s, f"alert {r.rule}", r, t.rule)

    async def request(self, pid: int, duration_s: float) -> Done:
        """Trace `pid` now (on request) and return the stored result; TriageRefused when it cannot start."""
        if not self.cfg.enabled:
            raise TriageRefused("triage is disabled in the daemon's configuration ([triage] enabled = false)")
        ticks = start_ticks_of(pid, self._proc)
        if ticks is None:
            raise TriageRefused(f"no process {pid} is running")
        key = (pid, ticks)
        task = self._tasks.get(key)
        if task is None:
            if self.waiting >= MAX_WAITING:
                raise TriageRefused(f"{self.waiting} traces are already waiting; try again later")
            task = self._spawn(key, duration_s, "request", None, None)
        return await asyncio.shield(task)

    async def close(self) -> None:
        """Cancel every trace (their children are killed, which detaches their probes)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    def _spawn(
        self, key: Key, duration_s: float, reason: str, alert: AlertRecord | None, rule: Any
    ) -> asyncio.Task[Done]:
        req = {
            "pid": key[0],
            "start_ticks": key[1],
            "duration_s": duration_s,
            "sample_every": self.cfg.sample_every,
            "max_stacks": self.cfg.max_stacks,
            "reason": reason,
            "alert_rule": alert.rule if alert else "",
            "alert_since": alert.since if alert else 0.0,
        }
        task = asyncio.get_running_loop().create_task(
            self._run(key, req, alert, rule), name=f"triage-{key[0]}"
        )
        self._tasks[key] = task
        return task

    async def _run(self, key: Key, req: dict[str, Any], alert: AlertRecord | None, rule: Any) -> Done:
        try:
            async with self._slots:
                self.running += 1
                log.info("triage of pid %d started (%s, %gs)", key[0], req["reason"], req["duration_s"])
                try:
                    result = await self._runner(req)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # the runner returns failures as results; this is a bug guard
                    result = failed_result(req, f"triage failed: {type(e).__name__}: {e}")
                finally:
                    self.running -= 1
            self._account(result)
            try:
                triage_id = await self._save(result)
            except Exception as e:  # StoreError: the result still goes out, it is just not kept
                log.warning("could not store the triage result of pid %d: %s", key[0], e)
                triage_id = 0
            done = Done(triage_id, result, alert, rule)
            if alert is not None:
                try:
                    self._on_done(done)
                except Exception:
                    log.exception("triage follow-up failed")
            return done
        finally:
            self._tasks.pop(key, None)

    def _account(self, r: TriageResult) -> None:
        if r.status != STATUS_FAILED:
            self.completed += 1
            self.unavailable = None
            log.info(
                "triage of pid %d (%s): %s, ~%d bytes outstanding in %d stacks",
                r.pid,
                r.comm,
                r.status,
                r.estimated_bytes,
                len(r.stacks),
            )
            return
        self.failed += 1
        if r.error.startswith(UNAVAILABLE):
            self.unavailable = r.error
            if r.error not in self._told:  # said once, not per alert
                self._told.add(r.error)
                log.warning("leak triage: %s", r.error)
            return
        log.info("triage of pid %d failed: %s", r.pid, r.error)
