"""Alert dispatch: due transitions -> grouped messages -> the deliverer, paced by [notify] group_wait.

After a message goes out, whatever comes due within group_wait is held and then sent as one message per
rule; a lone alert after a quiet spell goes out at once. Time is the snapshot's monotonic clock, passed in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from memwatchd.alerts.engine import Transition
from memwatchd.alerts.kinds import kind_of
from memwatchd.alerts.scopes import ScopeTransition
from memwatchd.notify.alertmanager import AlertmanagerFeed
from memwatchd.notify.render import Message, render
from memwatchd.notify.render_scopes import render_scoped

log = logging.getLogger("memwatchd")


class AlertDispatch:
    """Holds due transitions for group_wait, renders them and hands the messages to `send`."""

    def __init__(
        self,
        send: Callable[[Message], None],
        *,
        host: str,
        urls: tuple[str, ...],
        group_wait_s: float,
        alertmanager: AlertmanagerFeed | None = None,
    ) -> None:
        self.send = send
        self.alertmanager = alertmanager  # posted every cycle (Alertmanager groups itself), not held
        self.host = host
        self.urls = urls
        self.group_wait_s = group_wait_s
        self.held: list[Transition | ScopeTransition] = []  # alert transitions waiting for group_wait
        self._last_sent = float("-inf")  # mono of the last messages handed to `send`

    def offer(self, due: Iterable[Transition | ScopeTransition], mono: float) -> None:
        """Take this cycle's due transitions; send what is held when group_wait has passed since the last.

        OOM kills go out at once (those of one cycle grouped), never held by group_wait.
        """
        due = list(due)
        if self.alertmanager is not None:
            self.alertmanager.offer(due, mono)  # also re-posts firing alerts every alertmanager_repeat
        now: list[Transition | ScopeTransition] = [
            t for t in due if isinstance(t, Transition) and kind_of(t.record.kind).instant
        ]
        self._send(now)
        self.held.extend(t for t in due if not any(t is n for n in now))
        if self.held and mono - self._last_sent >= self.group_wait_s:
            self._last_sent = mono
            self.flush()

    def flush(self) -> None:
        """Send everything held now (at shutdown: do not sit on a held group)."""
        due, self.held = self.held, []
        self._send(due)

    def _send(self, due: list[Transition | ScopeTransition]) -> None:
        if not due:
            return
        procs = [t for t in due if isinstance(t, Transition)]
        scoped = [t for t in due if isinstance(t, ScopeTransition)]
        for msg in [*render(procs, self.host, self.urls), *render_scoped(scoped, self.host, self.urls)]:
            if msg.urls:
                self.send(msg)
            else:
                log.info("alert (no notification URLs configured): %s", msg.title)
