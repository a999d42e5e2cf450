"""A failure that repeats every interval is told once in full, then in one line per repeat, then its end."""

from __future__ import annotations

import logging


class RepeatedFailure:
    """Logs the first failure of `what` with its traceback, each repeat as one line, and the recovery."""

    def __init__(self, what: str, log: logging.Logger) -> None:
        self.what = what
        self.log = log
        self.count = 0  # failures in a row

    def failed(self, exc: BaseException) -> None:
        self.count += 1
        if self.count == 1:
            self.log.error("%s failed", self.what, exc_info=exc)
        else:
            self.log.error(
                "%s failed again (%d in a row): %s: %s", self.what, self.count, type(exc).__name__, exc
            )

    def ok(self) -> None:
        if self.count:
            self.log.info("%s works again after %d failures", self.what, self.count)
            self.count = 0
