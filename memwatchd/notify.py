"""Telling: render alert transitions into messages (pure) and deliver them in the background.

Delivery never imports apprise in this process (it costs ~30 MB, the daemon's budget is 40 MB): each attempt
runs `python -m memwatchd.deliver` as a short-lived child, with the message and the URLs as JSON on its stdin
(never argv: argv is world-readable in /proc). The child reports one result per URL; only failed URLs are
retried, so an endpoint that recovers receives the message once.
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
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import memwatchd
from memwatchd.alerting import Transition
from memwatchd.config import RuleConfig, mask_url
from memwatchd.models import AlertRecord
from memwatchd.units import format_duration, format_rate, format_size

log = logging.getLogger("memwatchd.notify")

SPARK = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 24
MAX_GROUP_LINES = 20
QUEUE_MAX = 256
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0
CHILD_STARTUP_S = 10.0  # python + import apprise, on a loaded host


@dataclass(frozen=True, slots=True)
class Message:
    """One notification: sent to every URL in `urls`; `records` are the episodes it tells about."""

    title: str
    body: str
    urls: tuple[str, ...]
    records: tuple[AlertRecord, ...]
    reasons: tuple[str, ...]


# ----- rendering (pure) -----


def sparkline(values: Sequence[float], width: int = SPARK_WIDTH) -> str:
    """▁▂▃▄▅▆▇█ of the values, averaged down to at most `width` characters."""
    if not values:
        return ""
    if len(values) > width:
        n = len(values)
        values = [
            sum(values[i * n // width : (i + 1) * n // width]) / max(1, (i + 1) * n // width - i * n // width)
            for i in range(width)
        ]
    lo, hi = min(values), max(values)
    if hi <= lo:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(7, int((v - lo) / (hi - lo) * 8))] for v in values)


def _local(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


def _hm(ts: float) -> str:
    return time.strftime("%H:%M", time.localtime(ts))


def _proc(r: AlertRecord) -> str:
    unit = f", unit {r.unit}" if r.unit else ""
    return f"{r.comm} (pid {r.pid}{unit})"


def _metric(t: Transition) -> str:
    return t.rule.metric if t.rule is not None else "rss"


def _since_arg(t: Transition) -> str:
    """A --since wide enough to show the whole episode and the window before it."""
    r = t.record
    end = r.resolved_at or t.at or r.fired_at or r.since
    window = t.rule.window_s if t.rule is not None else 0.0
    span = max(0.0, end - r.since) + max(window, 300.0)
    for step, text in ((600, "10m"), (3600, "1h"), (6 * 3600, "6h"), (86400, "1d"), (7 * 86400, "7d")):
        if span <= step:
            return text
    return f"{int(span // 86400) + 1}d"


def _rule_text(rule: RuleConfig | None) -> str:
    if rule is None:
        return "(rule no longer configured)"
    held = f", held {format_duration(rule.for_s)}" if rule.for_s else ""
    if rule.kind == "growth":
        rate, window = format_rate(rule.min_rate), format_duration(rule.window_s)
        return f"growth of {rule.metric} ≥ {rate} over {window}{held}"
    if rule.kind == "leak":
        rate = format_rate(rule.min_rate) if rule.min_rate > 0 else "1.0M/min"
        return (
            f"leak: mapped memory grows ≥ {rate} over {format_duration(rule.window_s)}"
            f" while the process keeps allocating{held}"
        )
    if rule.kind == "threshold":
        return f"{rule.metric} ≥ {format_size(rule.threshold)}{held}"
    return "a process was killed by the OOM killer"


def _forecast(t: Transition) -> str:
    parts = []
    if t.limit_forecast_s is not None and t.limit_bytes is not None:
        parts.append(
            f"cgroup {t.limit_cgroup} reaches its limit ({format_size(t.limit_bytes)}) in"
            f" ~{format_duration(t.limit_forecast_s)}"
        )
    if t.forecast_s is not None and t.mem_available is not None:
        parts.append(
            f"host MemAvailable ({format_size(t.mem_available)}) runs out in ~{format_duration(t.forecast_s)}"
        )
    return "; ".join(parts) + " at this rate" if parts else ""


def _window_line(t: Transition) -> str:
    vals = [v for _, v in t.series]
    if len(vals) < 2:
        return ""
    span = t.series[-1][0] - t.series[0][0]
    return f"{sparkline(vals)} {format_size(vals[0])} → {format_size(vals[-1])} over {format_duration(span)}"


def _headline(t: Transition) -> str:
    """The short state of one process: used in titles and group lines."""
    r = t.record
    if r.kind == "oom":
        return f"killed at {format_size(r.value)}"
    if t.reason == "resolved":
        return "resolved"
    if r.kind == "threshold":
        thr = t.rule.threshold if t.rule is not None else 0
        return f"{_metric(t)} {format_size(r.value)} ≥ {format_size(thr)}"
    return f"+{format_rate(r.rate or 0.0)}"


def _label(reason: str, kind: str) -> str:
    if kind == "oom":
        return "OOM KILL"
    return {"firing": "FIRING", "repeat": "STILL FIRING", "resolved": "RESOLVED"}[reason]


def _single(t: Transition, host: str) -> tuple[str, str]:
    r = t.record
    label = _label(t.reason, r.kind)
    title = f"[memwatchd] {label} {r.rule}: {r.comm} (pid {r.pid}) {_headline(t)} on {host}"
    if t.reason == "resolved" and r.kind != "oom":
        title = f"[memwatchd] RESOLVED {r.rule}: {r.comm} (pid {r.pid}) on {host}"
    lines = [f"{label}: {r.rule} on {host}"]
    if r.kind == "oom":
        lines += [
            f"Victim:   {_proc(r)}",
            f"Killed:   {_local(r.since)}",
            f"Memory:   {r.summary}",
        ]
        if len(t.series) >= 2:
            lines.append(f"History:  {_window_line(t)}")
            lines += _history_table(t.series)
        else:
            lines.append("History:  none (the process was not seen before it was killed)")
        if t.mem_available is not None:
            lines.append(f"Host:     MemAvailable {format_size(t.mem_available)} now")
    else:
        lines += [f"Process:  {_proc(r)}", f"Rule:     {_rule_text(t.rule)}"]
        if t.reason == "resolved":
            lines.append(f"Why:      {r.summary}")
            lasted = (r.resolved_at or t.at) - r.since
            lines.append(f"Since:    {_local(r.since)} (lasted {format_duration(lasted)})")
        else:
            rate = f"+{format_rate(r.rate)}" if r.rate is not None else "-"
            detail = f" ({t.detail})" if t.detail and r.kind != "threshold" else ""
            lines.append(f"Rate:     {rate}{detail}")
            lines.append(
                f"Since:    {_local(r.since)}"
                f" (for {format_duration((t.at or r.fired_at or r.since) - r.since)})"
            )
        lines.append(f"Now:      {_metric(t)} {format_size(r.value)}")
        wl = _window_line(t)
        if wl:
            lines.append(f"Window:   {wl}")
        fc = _forecast(t)
        if fc:
            lines.append(f"Forecast: {fc}")
    lines.append(f"Next:     memwatchctl history --pid {r.pid} --since {_since_arg(t)}")
    return title, "\n".join(lines)


def _history_table(series: tuple[tuple[float, float], ...]) -> list[str]:
    """About one line per minute of the victim's last minutes: when on-call asks "how fast did it go?"."""
    out: list[str] = []
    last_ts = None
    for ts, v in series:
        if last_ts is None or ts - last_ts >= 60 or (ts, v) == series[-1]:
            out.append(f"          {time.strftime('%H:%M:%S', time.localtime(ts))}  {format_size(v)}")
            last_ts = ts
    return out[-8:]


def _group(ts: Sequence[Transition], host: str) -> tuple[str, str]:
    r0 = ts[0].record
    n_fire = sum(1 for t in ts if t.reason != "resolved" or t.record.kind == "oom")
    n_res = len(ts) - n_fire
    if r0.kind == "oom":
        label, what = "OOM KILL", f"{len(ts)} processes killed"
    elif n_fire and n_res:
        label, what = "FIRING", f"{n_fire} firing, {n_res} resolved"
    elif n_fire:
        label = "STILL FIRING" if all(t.reason == "repeat" for t in ts) else "FIRING"
        what = f"{n_fire} processes"
    else:
        label, what = "RESOLVED", f"{n_res} processes"
    title = f"[memwatchd] {label} {r0.rule}: {what} on {host}"
    lines = [f"{label}: {r0.rule} on {host}, {what}", f"Rule:     {_rule_text(ts[0].rule)}", ""]
    ordered = sorted(
        ts, key=lambda t: (t.reason == "resolved", -(t.record.rate or 0), -(t.record.value or 0))
    )
    for t in ordered[:MAX_GROUP_LINES]:
        r = t.record
        unit = f", {r.unit}" if r.unit else ""
        head = f"  {r.comm} (pid {r.pid}{unit}): "
        if t.reason == "resolved" and r.kind != "oom":
            lines.append(head + f"RESOLVED, {r.summary}")
        else:
            spark = sparkline([v for _, v in t.series], 12)
            since = f"since {_hm(r.since)} ({format_duration((t.at or r.since) - r.since)})"
            lines.append(
                head + f"{_headline(t)}, {_metric(t)} {format_size(r.value)}, {since} {spark}".rstrip()
            )
    if len(ordered) > MAX_GROUP_LINES:
        lines.append(f"  ... and {len(ordered) - MAX_GROUP_LINES} more")
    fastest = ordered[0]
    fc = _forecast(fastest)
    if fc:
        lines += ["", f"Forecast: {fastest.record.comm} (pid {fastest.record.pid}): {fc}"]
    lines += [
        "",
        f"Next:     memwatchctl alerts;"
        f" memwatchctl history --pid {fastest.record.pid} --since {_since_arg(fastest)}",
    ]
    return title, "\n".join(lines)


def render(transitions: Sequence[Transition], host: str, default_urls: tuple[str, ...]) -> list[Message]:
    """One message per rule (and URL set) for the transitions of one call. Rules without URLs send nothing."""
    groups: dict[tuple[str, tuple[str, ...]], list[Transition]] = {}
    for t in transitions:
        urls = t.rule.notify if t.rule is not None and t.rule.notify is not None else default_urls
        if urls:
            groups.setdefault((t.record.rule, tuple(urls)), []).append(t)
    out = []
    for (_, urls), ts in groups.items():
        title, body = _single(ts[0], host) if len(ts) == 1 else _group(ts, host)
        out.append(Message(title, body, urls, tuple(t.record for t in ts), tuple(t.reason for t in ts)))
    return out


# ----- delivery (child process) -----


def _child_cmd() -> tuple[list[str], dict[str, str]]:
    # -P: the daemon's working directory must not shadow modules; PYTHONPATH points at this very package
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(memwatchd.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return [sys.executable, "-P", "-m", "memwatchd.deliver"], env


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
