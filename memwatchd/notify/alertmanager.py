"""Alerts into Prometheus Alertmanager (v2 API): pure payload building, and background delivery.

Each open episode is one Alertmanager alert. Its labels identify it across posts (Alertmanager deduplicates by
label set): `alertname` (the rule), `host`, and where known `comm`, `unit`, `cgroup`, plus `severity` from the
rule. No pid label: label values must stay bounded over a fleet (the pid is in the annotations).
Annotations carry the evidence: `summary` (the Apprise title), `description` (the full Apprise body) and
`command` (the memwatchctl command to run next). `startsAt` is the episode's start, the same on every post and
after a restart; `endsAt` is set on resolve. Firing alerts are re-posted every [notify] alertmanager_repeat,
which must be shorter than Alertmanager's resolve_timeout (default 5m): an alert not re-posted within it is
resolved by Alertmanager itself (what happens when a host dies).

Delivery runs off the event loop (urllib in a worker thread), one worker per Alertmanager URL so that a dead
peer of an HA pair does not hold up the live one; failed posts are retried with capped exponential backoff.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import json
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from memwatchd.alerts.engine import Episode, Transition, episode
from memwatchd.alerts.kinds import kind_of
from memwatchd.alerts.scopes import ScopeTransition
from memwatchd.config import RuleConfig
from memwatchd.models import AlertRecord
from memwatchd.notify import render, render_scopes
from memwatchd.secrets import mask_url
from memwatchd.text import shown

log = logging.getLogger("memwatchd.notify")

API_PATH = "/api/v2/alerts"
QUEUE_MAX = 64  # batches per Alertmanager URL
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 30.0
INSTANT_ENDS_S = 300.0  # an OOM kill is an event: posted with an end this far after it
MAX_DESCRIPTION = 16000


@dataclass(frozen=True, slots=True)
class AmAlert:
    """One alert as posted to Alertmanager (times are wall-clock seconds)."""

    labels: tuple[tuple[str, str], ...]
    annotations: tuple[tuple[str, str], ...]
    starts_at: float
    ends_at: float | None
    urls: tuple[str, ...]
    generator_url: str = ""


def iso(ts: float) -> str:
    """RFC 3339 UTC with milliseconds, as Alertmanager's API takes it."""
    d = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return d.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _label_value(v: str) -> str:
    return shown(v)[:256]


def _scoped(t: Transition | ScopeTransition) -> bool:
    return isinstance(t, ScopeTransition)


def alert_of(
    t: Transition | ScopeTransition, host: str, default_urls: tuple[str, ...], generator_url: str = ""
) -> AmAlert | None:
    """The Alertmanager alert of one due transition; None when its rule posts to no Alertmanager."""
    rule: RuleConfig | None = t.rule
    urls = rule.alertmanager if rule is not None and rule.alertmanager is not None else default_urls
    if not urls:
        return None
    r = t.record
    labels: dict[str, str] = {"alertname": r.rule, "host": host}
    if isinstance(t, ScopeTransition):
        if not (rule is not None and rule.scope == "host" or r.comm == "host"):
            labels["cgroup"] = r.comm
        if r.unit:
            labels["unit"] = r.unit
        title, body = render.shown_lines(*render_scopes._single(render_scopes._shown(t), shown(host)))
    else:
        labels["comm"] = r.comm
        if r.unit:
            labels["unit"] = r.unit
        if t.cgroup:
            labels["cgroup"] = t.cgroup
        title, body = render.shown_lines(*render._single(render._shown(t), shown(host)))
    if rule is not None and rule.severity:
        labels["severity"] = rule.severity
    command = ""
    for line in body.split("\n"):
        if line.startswith("Next:"):
            command = line.split(":", 1)[1].strip()
    annotations = {
        "summary": title.removeprefix("[memwatchd] "),
        "description": body[:MAX_DESCRIPTION],
        "command": command,
    }
    ends: float | None = None
    if isinstance(t, Transition) and kind_of(r.kind).instant:
        ends = r.since + INSTANT_ENDS_S
    elif t.reason == "resolved":
        ends = r.resolved_at or t.at
    return AmAlert(
        labels=tuple((k, _label_value(v)) for k, v in labels.items()),
        annotations=tuple(annotations.items()),
        starts_at=r.since,
        ends_at=ends,
        urls=tuple(urls),
        generator_url=generator_url,
    )


def payload(alerts: Sequence[AmAlert]) -> bytes:
    """The JSON body of POST /api/v2/alerts."""
    out = []
    for a in alerts:
        doc: dict[str, object] = {
            "labels": dict(a.labels),
            "annotations": dict(a.annotations),
            "startsAt": iso(a.starts_at),
        }
        if a.ends_at is not None:
            doc["endsAt"] = iso(a.ends_at)
        if a.generator_url:
            doc["generatorURL"] = a.generator_url
        out.append(doc)
    return json.dumps(out).encode()


def post(url: str, body: bytes, timeout_s: float) -> str | None:
    """POST a payload to one Alertmanager (blocking); None on success, else the (masked) problem."""
    # imported here: urllib.request costs the daemon ~2 MB, paid only when an Alertmanager is configured
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        url.rstrip("/") + API_PATH, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - http(s) checked at load
            resp.read(65536)
            return None
    except urllib.error.HTTPError as e:
        detail = e.read(300).decode("utf-8", "replace").strip()
        return f"HTTP {e.code}" + (f": {shown(detail)}" if detail else "")
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return f"{type(e).__name__}: {shown(str(reason))}"


class AlertmanagerFeed:
    """Keeps the open episodes' alerts and posts them: at once when due, and again every `repeat_s`."""

    def __init__(
        self,
        host: str,
        urls: tuple[str, ...],
        *,
        repeat_s: float,
        timeout_s: float,
        max_retries: int,
        generator_url: str = "",
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_cap_s: float = BACKOFF_CAP_S,
    ) -> None:
        self.host = host
        self.urls = urls
        self.repeat_s = repeat_s
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.generator_url = generator_url
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.open: dict[Episode, AmAlert] = {}
        self._transitions: dict[Episode, Transition | ScopeTransition] = {}
        self._last_repeat = float("-inf")
        self.posts = 0  # successful posts (one per URL)
        self.failures = 0  # failed attempts (one per URL)
        self.dropped = 0
        self._queues: dict[str, collections.deque[bytes]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closing = False

    def restore(self, records: Iterable[AlertRecord], rules: Sequence[RuleConfig], now: float) -> None:
        """Open episodes loaded from the database at start: posted again with their own startsAt."""
        by_name = {r.name: r for r in rules}
        due: list[Transition | ScopeTransition] = []
        for rec in records:
            if rec.state != "firing":
                continue
            rule = by_name.get(rec.rule)
            if rule is not None and rule.scope != "process":
                due.append(ScopeTransition(rec, "repeat", rule, now))
            elif not kind_of(rec.kind).instant:
                due.append(Transition(rec, "repeat", at=now, rule=rule))
        for t in due:
            self._track(t)

    def update(self, urls: tuple[str, ...], repeat_s: float, rules: Sequence[RuleConfig]) -> None:
        """A reload: new default URLs, repeat interval and rules (open alerts re-built with them)."""
        self.urls, self.repeat_s = urls, repeat_s
        by_name = {r.name: r for r in rules}
        for key, t in list(self._transitions.items()):
            rule = by_name.get(t.record.rule)
            self._track(dataclasses.replace(t, rule=rule))
            if key not in self._transitions:
                self.open.pop(key, None)

    def _track(self, t: Transition | ScopeTransition) -> AmAlert | None:
        key = episode(t.record)
        a = alert_of(t, self.host, self.urls, self.generator_url)
        if a is None or a.ends_at is not None:
            self.open.pop(key, None)
            self._transitions.pop(key, None)
        else:
            self.open[key] = a
            self._transitions[key] = t
        return a

    def offer(self, due: Iterable[Transition | ScopeTransition], mono: float) -> None:
        """Post this cycle's due transitions now; re-post every open alert once `repeat_s` has passed."""
        batch: dict[Episode, AmAlert] = {}
        for t in due:
            a = self._track(t)
            if a is not None:
                batch[episode(t.record)] = a
        if self.open and mono - self._last_repeat >= self.repeat_s:
            self._last_repeat = mono
            for key, a in self.open.items():
                batch.setdefault(key, a)
        elif not self.open:
            self._last_repeat = mono  # the first firing after a quiet spell is posted at once anyway
        if batch:
            self._submit(list(batch.values()))

    def _submit(self, alerts: list[AmAlert]) -> None:
        if self._closing:
            return
        by_url: dict[str, list[AmAlert]] = {}
        for a in alerts:
            for u in a.urls:
                by_url.setdefault(u, []).append(a)
        for url, items in by_url.items():
            q = self._queues.get(url)
            if q is None:
                q = self._queues[url] = collections.deque(maxlen=QUEUE_MAX)
                self._wake[url] = asyncio.Event()
            if len(q) == q.maxlen:
                self.dropped += 1
                log.warning("alertmanager %s: queue full, dropped the oldest post", mask_url(url))
            q.append(payload(items))
            self._wake[url].set()
            task = self._tasks.get(url)
            if task is None or task.done():
                self._tasks[url] = asyncio.get_running_loop().create_task(
                    self._worker(url), name="alertmanager"
                )

    @property
    def pending(self) -> int:
        return sum(len(q) for q in self._queues.values())

    async def _worker(self, url: str) -> None:
        q, wake = self._queues[url], self._wake[url]
        while True:
            while not q:
                if self._closing:
                    return
                wake.clear()
                await wake.wait()
            body = q.popleft()
            await self._deliver(url, body)

    async def _deliver(self, url: str, body: bytes) -> None:
        attempt = 0
        while True:
            err = await asyncio.to_thread(post, url, body, self.timeout_s)
            if err is None:
                self.posts += 1
                return
            self.failures += 1
            log.warning(
                "alertmanager post to %s failed (attempt %d of %d): %s",
                mask_url(url),
                attempt + 1,
                self.max_retries + 1,
                err,
            )
            if attempt >= self.max_retries or self._closing:
                log.error("alertmanager post to %s given up after %d attempt(s)", mask_url(url), attempt + 1)
                return
            delay = min(self.backoff_cap_s, self.backoff_base_s * 2**attempt) * random.uniform(0.5, 1.0)
            attempt += 1
            await asyncio.sleep(delay)

    async def close(self, timeout: float) -> None:
        """Finish what is queued within `timeout` seconds (resolves at shutdown), then stop."""
        self._closing = True
        for ev in self._wake.values():
            ev.set()
        tasks = [t for t in self._tasks.values() if not t.done()]
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=timeout)
        for t in late:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
