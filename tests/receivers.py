"""Real notification endpoints on 127.0.0.1 for tests: an HTTP webhook (Apprise json://) and an SMTP server.

with WebhookReceiver() as hook:            # json://127.0.0.1:{hook.port}/
    hook.fail_next(2)                      # answer 500 twice, then recover
    hook.stall_next(1, 5.0)                # hold the next request 5 s without answering
    ...
    hook.wait_for(1)                       # the JSON bodies received (title, message, ...)

with SmtpReceiver(user="alert", password="s3cret") as smtp:   # mailto://alert:s3cret@127.0.0.1:{smtp.port}
    smtp.wait_for(1)                       # list of email.message.EmailMessage
"""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
import time
import warnings
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        srv = self.server
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        with srv.lock:
            srv.requests += 1
            srv.auth_headers.append(self.headers.get("Authorization"))
            stall = srv.stalls.pop(0) if srv.stalls else 0.0
            fail = srv.failures > 0
            if fail:
                srv.failures -= 1
        if stall:
            srv.stop_stalling.wait(stall)
            return  # answer nothing: the client times out
        if fail:
            self.send_response(srv.fail_status)
            self.end_headers()
            return
        try:
            doc: Any = json.loads(raw.decode("utf-8"))
        except ValueError:
            doc = {"raw": raw.decode("utf-8", "replace")}
        with srv.lock:
            srv.bodies.append(doc)
            srv.paths.append(self.path)
            srv.cond.notify_all()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (base class signature)
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.bodies: list[Any] = []
        self.paths: list[str] = []
        self.auth_headers: list[str | None] = []
        self.requests = 0
        self.failures = 0
        self.fail_status = 500
        self.stalls: list[float] = []
        self.stop_stalling = threading.Event()


class WebhookReceiver:
    """An HTTP server thread collecting POSTed JSON bodies; can answer errors or stall, then recover."""

    def __init__(self) -> None:
        self._srv = _Server()
        self.port: int = self._srv.server_address[1]
        self._thread = threading.Thread(target=self._srv.serve_forever, name="webhook", daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._srv.stop_stalling.set()
        self._srv.shutdown()
        self._srv.server_close()
        self._thread.join(5)

    def url(self, userinfo: str = "", path: str = "/") -> str:
        """The Apprise json:// URL of this receiver."""
        at = f"{userinfo}@" if userinfo else ""
        return f"json://{at}127.0.0.1:{self.port}{path}"

    def fail_next(self, n: int, status: int = 500) -> None:
        with self._srv.lock:
            self._srv.failures, self._srv.fail_status = n, status

    def stall_next(self, n: int, seconds: float) -> None:
        with self._srv.lock:
            self._srv.stalls = [seconds] * n

    @property
    def bodies(self) -> list[Any]:
        with self._srv.lock:
            return list(self._srv.bodies)

    @property
    def requests(self) -> int:
        with self._srv.lock:
            return self._srv.requests

    @property
    def auth_headers(self) -> list[str | None]:
        with self._srv.lock:
            return list(self._srv.auth_headers)

    def wait_for(self, n: int, timeout: float = 20.0) -> list[Any]:
        """Wait until at least n bodies arrived; returns all bodies (fewer on timeout)."""
        deadline = time.monotonic() + timeout
        with self._srv.cond:
            while len(self._srv.bodies) < n and time.monotonic() < deadline:
                self._srv.cond.wait(max(0.01, deadline - time.monotonic()))
            return list(self._srv.bodies)


class _MailHandler:
    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd API)
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append(msg)  # type: ignore[arg-type]
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            self.lock.notify_all()
        return "250 OK"


def _free_port() -> int:
    # aiosmtpd's Controller checks readiness by connecting to its port, so it cannot bind port 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SmtpReceiver:
    """A real aiosmtpd SMTP server on 127.0.0.1 (no TLS), optionally requiring AUTH with user/password."""

    def __init__(self, user: str | None = None, password: str | None = None) -> None:
        self.handler = _MailHandler()
        self.user, self.password = user, password
        kwargs: dict[str, Any] = {}
        if user is not None:
            # plain AUTH without TLS is what a loopback test server needs
            warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
            kwargs = {"authenticator": self._auth, "auth_require_tls": False, "auth_required": True}
        self.port = _free_port()
        self._ctl = Controller(self.handler, hostname="127.0.0.1", port=self.port, **kwargs)

    def _auth(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == self.user
            and auth_data.password.decode() == self.password
        )
        return AuthResult(success=ok, handled=False)

    def __enter__(self) -> SmtpReceiver:
        self._ctl.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ctl.stop()

    def url(self, to: str = "oncall@example.com", sender: str = "memwatchd@example.com") -> str:
        """The Apprise mailto:// URL (plain SMTP, no TLS) of this receiver."""
        cred = f"{self.user}:{self.password}@" if self.user is not None else ""
        return f"mailto://{cred}127.0.0.1:{self.port}?to={to}&from={sender}&smtp=127.0.0.1"

    def wait_for(self, n: int, timeout: float = 20.0) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout
        with self.handler.lock:
            while len(self.handler.messages) < n and time.monotonic() < deadline:
                self.handler.lock.wait(max(0.01, deadline - time.monotonic()))
            return list(self.handler.messages)
