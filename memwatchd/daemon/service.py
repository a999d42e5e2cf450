"""systemd service protocol (sd_notify) over the `sdnotify` package.

Every method is a no-op when NOTIFY_SOCKET is unset (a foreground run), so the daemon calls them
unconditionally. A socket that stops answering (systemd restarted, socket gone) is reported once in the
log and further messages are dropped: notification must never stop sampling.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

import sdnotify

log = logging.getLogger(__name__)

# systemd reads notifications from a datagram socket; a stuck reader must not stall the event loop.
_SEND_TIMEOUT_S = 1.0


def _one_line(text: str) -> str:
    # A newline inside STATUS= would start a new assignment in the datagram.
    return " ".join(text.split())


class ServiceNotifier:
    """Tells systemd about readiness, status, liveness, reload and shutdown (see sd_notify(3))."""

    def __init__(self) -> None:
        self._notifier: sdnotify.SystemdNotifier | None = None
        self._failed = False
        if os.environ.get("NOTIFY_SOCKET"):
            try:
                notifier = sdnotify.SystemdNotifier(debug=True)
            except OSError as e:
                self._fail(e)
            else:
                if notifier.socket is not None:
                    notifier.socket.settimeout(_SEND_TIMEOUT_S)
                self._notifier = notifier

    @property
    def enabled(self) -> bool:
        """True when a notification socket was given and still works."""
        return self._notifier is not None

    def _fail(self, err: OSError) -> None:
        if not self._failed:
            self._failed = True
            log.warning("systemd notification socket unusable, not notifying any more: %s", err)

    def _send(self, *assignments: str) -> None:
        if self._notifier is None:
            return
        # sdnotify encodes with latin-1; systemd reads UTF-8. Latin-1 maps code points 0-255 to the same
        # bytes, so handing it the UTF-8 bytes as latin-1 text sends exactly those bytes.
        message = "\n".join(assignments).encode("utf-8", "replace").decode("latin-1")
        try:
            self._notifier.notify(message)
        except OSError as e:
            self._notifier = None
            self._fail(e)

    def ready(self, status: str) -> None:
        """Startup (or a reload) is complete: READY=1 with a STATUS= line."""
        self._send("READY=1", f"STATUS={_one_line(status)}")

    def status(self, text: str) -> None:
        """One-line summary shown by `systemctl status`."""
        self._send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> None:
        """Keep-alive; the caller sends it only when a sampling cycle completed since the last one."""
        self._send("WATCHDOG=1")

    def reloading(self) -> None:
        """A reload started; ready() ends it. MONOTONIC_USEC is what systemd >= 253 wants with it."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading configuration")

    def stopping(self) -> None:
        """Shutdown started."""
        self._send("STOPPING=1", "STATUS=stopping")

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to ping: half of WATCHDOG_USEC; None when systemd runs no watchdog for this process."""
        return watchdog_interval_s(os.environ)


def watchdog_interval_s(env: Mapping[str, str]) -> float | None:
    """Half the watchdog timeout from WATCHDOG_USEC, as sd_watchdog_enabled(3) reads it (WATCHDOG_PID,
    when set, must be this process: the variables may be inherited by a child)."""
    raw = env.get("WATCHDOG_USEC", "")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1_000_000 / 2
