"""Wiring of leak triage into the daemon: the manager, the control socket, storing and following up.

Kept out of daemon/app.py so the sampling loop only calls on_transitions() with what the alert engine
made due; everything else (child processes, socket, messages) happens here, off the sampling path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from memwatchd.config import TriageConfig
from memwatchd.notify.render import Message
from memwatchd.triage.control import ControlError, ControlServer, socket_path
from memwatchd.triage.manager import Done, TriageManager, TriageRefused
from memwatchd.triage.message import followup
from memwatchd.triage.report import TriageResult

if TYPE_CHECKING:
    from memwatchd.alerts.engine import Transition


class TriageStore(Protocol):
    """What triage needs of the store (StoreWriter)."""

    async def save_triage(self, result: TriageResult, now: float) -> int: ...


log = logging.getLogger("memwatchd.triage")

MAX_REQUEST_S = 3600.0


class TriageService:
    """Owns the TriageManager and the control socket of one daemon."""

    def __init__(
        self,
        cfg: TriageConfig,
        store: TriageStore,
        submit: Callable[[Message], None],
        host: str,
        default_urls: tuple[str, ...],
        db_path: str,
        proc: str = "/proc",
    ) -> None:
        self._store = store
        self._submit = submit
        self.host = host
        self.default_urls = default_urls
        self._db_path = db_path
        self.manager = TriageManager(cfg, self._save, self._follow_up, proc=proc)
        self.control = ControlServer(socket_path(db_path), self._handle)
        self.control_state = "not started"

    async def start(self) -> None:
        try:
            await self.control.start(group_of=self._db_path)
        except ControlError as e:
            self.control_state = f"unavailable: {e}"
            log.warning("on-request triage unavailable: %s", e)
            return
        self.control_state = f"listening on {self.control.path}"
        log.info("control socket %s (memwatchctl triage --pid N --duration 30s)", self.control.path)

    def on_transitions(self, due: Sequence[Transition]) -> None:
        self.manager.on_transitions(due)

    def update(self, cfg: TriageConfig, default_urls: tuple[str, ...]) -> None:
        self.manager.update_config(cfg)
        self.default_urls = default_urls

    async def close(self) -> None:
        await self.control.close()
        await self.manager.close()

    async def _save(self, result: TriageResult) -> int:
        row_id: int = await self._store.save_triage(result, time.time())
        return row_id

    def _follow_up(self, done: Done) -> None:
        if done.alert is None:
            return
        rule = done.rule
        urls = tuple(rule.notify) if rule is not None and rule.notify is not None else self.default_urls
        if done.result.error.startswith("uprobes unavailable"):
            return  # said once in the log and in status; not a message per alert
        msg = followup(done.result, done.alert, self.host, urls, done.triage_id)
        if msg.urls:
            self._submit(msg)
        else:
            log.info("triage (no notification URLs configured): %s", msg.title)

    async def _handle(self, req: dict[str, Any]) -> dict[str, Any]:
        if req.get("op") != "triage":
            return {"ok": False, "error": f"unknown request {str(req.get('op'))[:40]!r}"}
        pid, duration = req.get("pid"), req.get("duration_s")
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            return {"ok": False, "error": "pid must be a positive integer"}
        if (
            isinstance(duration, bool)
            or not isinstance(duration, int | float)
            or not 1 <= duration <= MAX_REQUEST_S
        ):
            return {"ok": False, "error": "duration must be between 1s and 1h"}
        try:
            done = await self.manager.request(pid, float(duration))
        except TriageRefused as e:
            return {"ok": False, "error": str(e)}
        return {"ok": True, "id": done.triage_id, "result": done.result.to_dict()}

    def status_fields(self) -> dict[str, str | int | None]:
        m = self.manager
        return {
            "triage_running": m.running,
            "triage_completed": m.completed,
            "triage_failed": m.failed,
            "triage_unavailable": m.unavailable,
        }
