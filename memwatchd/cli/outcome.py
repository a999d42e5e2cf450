"""How a memwatchctl run ends: one line per error, quiet on a closed pipe, never a traceback.

click's standalone mode prints usage errors as four lines and reports a closed stdout in its own way
(exit 1, or a traceback when the pipe closes during the final flush). Here every command ends the same way:
- an error is one line on stderr, `Error: ...` (usage errors name the --help to read), exit 1 (usage: 2);
- when stdout's reader has gone (`memwatchctl ... | head -1`), the rest of the output is discarded and the
  exit status is 0: the reader took what it wanted, as with `yes | head -1` under a shell that ignores
  SIGPIPE. stderr stays silent.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

import click


class PipeClosed(BaseException):
    """stdout's reader went away. A BaseException, so no `except Exception` on the way turns it into an
    error message."""


class _GuardedStdout:
    """sys.stdout, turning EPIPE on write or flush into PipeClosed; everything else is delegated."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise PipeClosed from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise PipeClosed from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _discard_stdout() -> None:
    """Point fd 1 at /dev/null so the interpreter's final flush of what is still buffered cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.__stdout__.fileno() if sys.__stdout__ is not None else 1)
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _say(line: str) -> None:
    with contextlib.suppress(OSError):  # stderr closed too: the exit status still tells
        click.echo(line, err=True)


def _one_line(text: str) -> str:
    return " ".join(text.split("\n")).strip()


class OneLineGroup(click.Group):
    """A click group whose standalone runs end as the module docstring says."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> NoReturn | Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        real = sys.stdout
        sys.stdout = _GuardedStdout(real)  # type: ignore[assignment,unused-ignore]
        code = 0
        try:
            try:
                rv = super().main(args, prog_name, complete_var, False, **extra)
                code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
                sys.stdout.flush()
            except click.UsageError as e:
                see = f" (see: {e.ctx.command_path} --help)" if e.ctx is not None else ""
                _say(f"Error: {_one_line(e.format_message())}{see}")
                code = e.exit_code
            except click.ClickException as e:
                _say(f"Error: {_one_line(e.format_message())}")
                code = e.exit_code
            except click.Abort:
                _say("Aborted!")
                code = 1
        except PipeClosed:
            _discard_stdout()
            code = 0
        finally:
            sys.stdout = real
        sys.exit(code)
