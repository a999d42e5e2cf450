"""Delivery of rendered messages in the background, through a short-lived Apprise child process.

Delivery never imports apprise in this process (it costs ~30 MB, the daemon's budget is 40 MB): each attempt
runs `python -m memwatchd.notify.child` as a short-lived child, with the message and the URLs as JSON on its
stdin (never argv: argv is world-readable in /proc). The child reports one result per URL; only failed URLs
are retried, so an endpoint that recovers receives the message once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import random
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence

import memwatchd
from memwatchd.notify.render import Message
from memwatchd.secrets import mask_url

log = logging.getLogger("memwatchd.notify")

QUEUE_MAX = 256
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0
CHILD_STARTUP_S = 10.0  # python + import apprise, on a loaded host


def _child_cmd() -> tuple[list[str], dict[str, str]]:
    # -P: the daemon's working directory must not shadow modules; PYTHONPATH points at this very package
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(memwatchd.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return [sys.executable, "-P", "-m", "memwatchd.notify.child"], env


def _payload(title: str, body: str, urls: Sequence[str], timeout_s: float) -> bytes:
    return json.dumps({"title": title, "body": body, "urls": list(urls), "timeout_s": timeout_s}).encode()


def _child_deadline(timeout_s: float, n_urls: int) -> float:
    return CHILD_STARTUP_S + timeout_s * 2 * max(1, n_urls)  # connect + read per URL


def _parse_results(out: bytes, n: int) -> list[tuple[bool, str]]:
    try:
        doc = json.loads(out.decode("utf-8", "replace") or "{}")
        res = [(bool(x.get("ok")), str(x.get("error", ""))) for x in doc["results"]]
    except (ValueError, KeyError, TypeError, AttributeError):
        return [(False, "delivery helper gave no result")] * n
    if len(res) != n:
        return [(False, "delivery helper gave a wrong number of results")] * n
    return res


def send_sync(title: str, body: str, urls: Sequence[str], timeout_s: float) -> list[tuple[bool, str]]:
    """Deliver once, blocking, through the same child as the daemon (memwatchctl notify-test)."""
    cmd, env = _child_cmd()
    try:
        p = subprocess.run(
            cmd,
            input=_payload(title, body, urls, timeout_s),
            capture_output=True,
            env=env,
            timeout=_child_deadline(timeout_s, len(urls)),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return [(False, "timed out")] * len(urls)
    return _parse_results(p.stdout, len(urls))


def check_urls_child(urls: Sequence[str], timeout_s: float = 30.0) -> list[str]:
    """Problems with Apprise URLs (masked), checked in a child so the caller never imports apprise."""
    if not urls:
        return []
    cmd, env = _child_cmd()
    try:
        p = subprocess.run(
            [*cmd, "--check"],
            input=json.dumps({"urls": list(urls)}).encode(),
            capture_output=True,
            env=env,
            timeout=timeout_s,
            check=False,
        )
        return [str(x) for x in json.loads(p.stdout.decode("utf-8", "replace"))["problems"]]
    except subprocess.TimeoutExpired:
        return ["checking the notification URLs timed out"]
    except (ValueError, KeyError, TypeError):
        return ["checking the notification URLs failed (is apprise installed?)"]


def check_each_child(urls: Sequence[str], timeout_s: float = 30.0) -> list[str | None] | None:
    """Per URL, None when Apprise can use it, else the (masked) problem; None when the check could not run
    (no apprise, a timeout). Checked in a child, so the caller never imports apprise."""
    if not urls:
        return []
    cmd, env = _child_cmd()
    try:
        p = subprocess.run(
            [*cmd, "--check"],
            input=json.dumps({"urls": list(urls)}).encode(),
            capture_output=True,
            env=env,
            timeout=timeout_s,
            check=False,
        )
        each = json.loads(p.stdout.decode("utf-8", "replace"))["each"]
    except (subprocess.TimeoutExpired, OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(each, list) or len(each) != len(urls):
        return None
    return [None if x is None else str(x) for x in each]


class Deliverer:
    """Background delivery with retries, capped exponential backoff with jitter, and a bounded queue.

    Messages are delivered in order, one at a time. on_delivered(msg) is awaited once a message reached at
    least one of its URLs (then the alert counts as told; the rest are still retried).
    Counters: delivered (messages that reached all URLs), failures (failed attempts, one per URL),
    given_up (messages that never reached some URL), dropped (queue overflow).
    """

    def __init__(
        self,
        timeout_s: float,
        max_retries: int,
        on_delivered: Callable[[Message], Awaitable[None]] | None,
        *,
        queue_max: int = QUEUE_MAX,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_cap_s: float = BACKOFF_CAP_S,
    ) -> None:
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.on_delivered = on_delivered
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.delivered = 0
        self.failures = 0
        self.given_up = 0
        self.dropped = 0
        self._queue: collections.deque[Message] = collections.deque(maxlen=queue_max)
        self._wake = asyncio.Event()
        self._busy = False
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._child: asyncio.subprocess.Process | None = None

    @property
    def pending(self) -> int:
        """Messages queued or in delivery."""
        return len(self._queue) + (1 if self._busy else 0)

    def submit(self, msg: Message) -> None:
        """Queue a message; never blocks. A full queue drops its oldest message (counted in `dropped`)."""
        if self._closing or not msg.urls:
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
            log.warning(
                "notification queue full: dropped the oldest message (%d dropped so far)", self.dropped
            )
        self._queue.append(msg)
        self._wake.set()

    async def run(self) -> None:
        """Deliver queued messages until close()."""
        self._task = asyncio.current_task()
        try:
            while True:
                while not self._queue:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                msg = self._queue.popleft()
                self._busy = True
                try:
                    await self._deliver(msg)
                finally:
                    self._busy = False
        finally:
            await self._kill_child()

    async def close(self, timeout: float) -> None:
        """Stop taking messages; finish what is queued within `timeout` seconds, then give up on the rest."""
        self._closing = True
        self._wake.set()
        task = self._task
        if task is None or task.done():
            return
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(task), timeout)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if self._queue:
                log.warning("shutdown: %d notification(s) not delivered", len(self._queue))

    async def _deliver(self, msg: Message) -> None:
        remaining = list(msg.urls)
        told = False
        attempt = 0
        while True:
            results = await self._attempt(msg, remaining)
            failed = []
            for url, (ok, err) in zip(remaining, results, strict=True):
                if ok:
                    continue
                self.failures += 1
                failed.append(url)
                log.warning(
                    "notification %r to %s failed (attempt %d of %d): %s",
                    msg.title,
                    mask_url(url),
                    attempt + 1,
                    self.max_retries + 1,
                    err or "unknown error",
                )
            if len(failed) < len(remaining) and not told:
                told = True
                if self.on_delivered is not None:
                    try:
                        await self.on_delivered(msg)
                    except Exception:  # the callback belongs to the daemon; delivery must go on
                        log.exception("on_delivered callback failed")
            remaining = failed
            if not remaining:
                self.delivered += 1
                return
            if attempt >= self.max_retries or self._closing:
                self.given_up += 1
                log.error(
                    "notification %r not delivered to %s after %d attempt(s); giving up",
                    msg.title,
                    ", ".join(mask_url(u) for u in remaining),
                    attempt + 1,
                )
                return
            delay = min(self.backoff_cap_s, self.backoff_base_s * 2**attempt) * random.uniform(0.5, 1.0)
            attempt += 1
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                # close() cuts the wait short; the final attempt then follows at once
                await asyncio.wait_for(self._closing_event(), delay)

    async def _closing_event(self) -> None:
        while not self._closing:
            self._wake.clear()
            await self._wake.wait()

    async def _attempt(self, msg: Message, urls: list[str]) -> list[tuple[bool, str]]:
        cmd, env = _child_cmd()
        try:
            child = self._child = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,  # apprise's own logs may quote URLs: never relay them
                env=env,
            )
        except OSError as e:
            return [(False, f"cannot start the delivery helper: {e.strerror}")] * len(urls)
        try:
            out, _ = await asyncio.wait_for(
                child.communicate(_payload(msg.title, msg.body, urls, self.timeout_s)),
                _child_deadline(self.timeout_s, len(urls)),
            )
        except TimeoutError:
            await self._kill_child()
            return [(False, "timed out")] * len(urls)
        # (when cancelled by close(), self._child stays set and run() kills it)
        self._child = None
        return _parse_results(out, len(urls))

    async def _kill_child(self) -> None:
        child, self._child = self._child, None
        if child is not None and child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            with contextlib.suppress(Exception):
                await child.wait()
