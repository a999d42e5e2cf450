"""The daemon's control socket: memwatchctl asks for a trace here (one JSON line each way).

The socket lives beside the database (DB + ".sock"), mode 0660 with the database file's group: whoever may
read the history (the memwatch group) may ask for a trace; memwatchctl itself stays unprivileged and
writes nothing to the database.

Request:  {"op": "triage", "pid": N, "duration_s": S}
Reply:    {"ok": true, "id": ROW_ID, "result": {...}} or {"ok": false, "error": "one line"}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from typing import Any

MAX_REQUEST = 4096
MAX_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
REPLY_MARGIN_S = 150.0  # the daemon's compile margin plus symbolization and storing

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlError(Exception):
    """The daemon cannot be reached or refused; str() is one line for memwatchctl."""


def socket_path(db_path: str) -> str:
    """Where the daemon listens for the database at db_path."""
    return os.path.abspath(db_path) + ".sock"


class ControlServer:
    """A unix stream server at `path`; each connection carries one request and its reply."""

    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._server: asyncio.AbstractServer | None = None

    async def start(self, group_of: str | None = None) -> None:
        """Listen (replacing a stale socket); the socket gets the group of the file `group_of`."""
        if len(os.fsencode(self.path)) > MAX_PATH:
            raise ControlError(f"control socket path too long ({self.path})")
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        old = os.umask(0o117)
        try:
            self._server = await asyncio.start_unix_server(self._client, path=self.path, limit=MAX_REQUEST)
        except OSError as e:
            raise ControlError(f"cannot listen on {self.path}: {e.strerror}") from None
        finally:
            os.umask(old)
        if group_of is not None:
            with contextlib.suppress(OSError):
                os.chown(self.path, -1, os.stat(group_of).st_gid)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), 10.0)
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("not an object")
            except (ValueError, TimeoutError, asyncio.LimitOverrunError):
                reply: dict[str, Any] = {"ok": False, "error": "bad request"}
            else:
                reply = await self._handler(req)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the client went away (memwatchctl interrupted): the trace still completes and is stored
        finally:
            writer.close()


def call(path: str, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Send one request to the daemon and wait for its reply (memwatchctl side, blocking)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    try:
        try:
            s.connect(path)
        except FileNotFoundError:
            raise ControlError(
                f"no daemon listens at {path} (is memwatchd running with this database?)"
            ) from None
        except PermissionError:
            raise ControlError(
                f"cannot connect to {path}: permission denied (join the memwatch group)"
            ) from None
        except OSError as e:
            raise ControlError(f"cannot connect to {path}: {e.strerror}") from None
        s.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            try:
                chunk = s.recv(1 << 16)
            except TimeoutError:
                raise ControlError(f"the daemon did not answer within {timeout_s:.0f}s") from None
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    try:
        reply: dict[str, Any] = json.loads(buf)
    except ValueError:
        raise ControlError("the daemon closed the connection without an answer") from None
    return reply
