"""Logging for the daemon: journald-style lines under systemd, timestamped lines on a terminal.

Under systemd, stderr goes to the journal, which adds its own timestamps and reads the sd-daemon(3) prefix
"<N>" as the record's priority; so lines there are "<N>logger: message". Elsewhere they carry a local time.
Either way one event is one line (journald would split a multi-line message into several entries), and
secrets are masked before anything is written.
"""

from __future__ import annotations

import logging
import os
import sys

from memwatchd.secrets import mask_secrets
from memwatchd.text import shown

# sd-daemon(3) / syslog priorities, highest logging level first.
_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def syslog_priority(levelno: int) -> int:
    """The sd-daemon(3) prefix number for a logging level (levels in between round down)."""
    return next((prio for lvl, prio in _PRIORITY if levelno >= lvl), 7)


def one_line(text: str) -> str:
    """Newlines shown as a visible marker so one event stays one journal entry."""
    return text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n").replace("\n", " \u23ce ")


class SecretFilter(logging.Filter):
    """Masks secrets in a record's message (arguments merged), for every logger reaching the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the event
            message = f"{record.msg!r} {record.args!r}"
        # text.shown on every line: a process name in a message cannot colour the terminal or forge a line
        # (the message's own newlines stay, and the formatter flattens them with a visible marker)
        record.msg = "\n".join(shown(ln) for ln in mask_secrets(message).split("\n"))
        record.args = None
        return True


class _Formatter(logging.Formatter):
    """Masks and flattens the whole formatted line, tracebacks included."""

    def __init__(self, journal: bool) -> None:
        fmt = "%(name)s: %(message)s" if journal else "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
        super().__init__(fmt, datefmt="%Y-%m-%d %H:%M:%S")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        line = one_line(mask_secrets(super().format(record)))
        if self.journal:
            return f"<{syslog_priority(record.levelno)}>{line}"
        return line


def stderr_is_journal(env: dict[str, str] | None = None) -> bool:
    """True when stderr is connected to journald (systemd.exec(5), $JOURNAL_STREAM).

    JOURNAL_STREAM names the device and inode of the journal stream; it is only trusted when stderr is
    that very stream (a child with redirected stderr inherits the variable). Without it, INVOCATION_ID
    (set for every systemd unit) also counts: the output is then collected by systemd, which adds its own
    timestamps.
    """
    env = dict(os.environ) if env is None else env
    stream = env.get("JOURNAL_STREAM", "")
    if stream:
        try:
            dev, ino = (int(x) for x in stream.split(":", 1))
            st = os.fstat(sys.stderr.fileno())
        except (ValueError, OSError, AttributeError):
            return False
        return (st.st_dev, st.st_ino) == (dev, ino)
    return bool(env.get("INVOCATION_ID"))


def setup_logging(level: str) -> None:
    """Configure the root logger; safe to call again (on reload) to change the level."""
    if level not in _LEVELS:
        raise ValueError(f"unknown log level {level!r} (one of {', '.join(_LEVELS)})")
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_memwatchd", False)]:
        root.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(sys.stderr)
    handler._memwatchd = True  # type: ignore[attr-defined]
    handler.setFormatter(_Formatter(journal=stderr_is_journal()))
    handler.addFilter(SecretFilter())
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    # Libraries chatty at debug level would drown the daemon's own messages.
    for name in ("asyncio", "aiosqlite"):
        logging.getLogger(name).setLevel(max(_LEVELS[level], logging.INFO))
