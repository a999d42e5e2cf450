"""Rendering and delivery, against real endpoints on 127.0.0.1 (HTTP json:// webhook and SMTP mailto://)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from memwatchd.alerts.engine import Transition
from memwatchd.cli.notify_test import notify_test
from memwatchd.config import RuleConfig
from memwatchd.models import AlertRecord
from memwatchd.notify.child import scrub, secrets_of
from memwatchd.notify.deliverer import Deliverer, check_urls_child, send_sync
from memwatchd.notify.render import Message, render, sparkline
from tests.receivers import SmtpReceiver, WebhookReceiver

MB = 1024 * 1024
WALL = 1_700_000_000.0
RULE = RuleConfig(name="leak-growth", kind="growth", min_rate=MB / 60, window_s=600.0, for_s=120.0)


def firing(
    pid: int = 1234, comm: str = "java", rate: float = 45 * MB / 3600, reason: str = "firing"
) -> Transition:
    rec = AlertRecord(
        rule=RULE.name,
        kind="growth",
        pid=pid,
        start_ticks=5,
        comm=comm,
        unit="tomcat.service",
        state="firing",
        since=WALL - 7500,
        fired_at=WALL,
        value=1.2 * 1024 * MB,
        rate=rate,
        summary="rss +45M/h",
    )
    series = tuple((WALL - 600 + i * 10, 1000 * MB + i * MB) for i in range(60))
    return Transition(
        rec,
        reason,
        series,
        at=WALL,
        rule=RULE,
        forecast_s=4200.0,
        mem_available=3.1 * 1024 * MB,
        detail="R²=0.98, 9/9 steps up",
    )


def msg(title: str = "[memwatchd] test", urls: tuple[str, ...] = ()) -> Message:
    return Message(title, "body line 1\nbody line 2", urls, (), ())


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(coro_fn(), 45))


async def deliver_all(
    d: Deliverer, msgs: list[Message], settle: Callable[[], bool], timeout: float = 20
) -> None:
    task = asyncio.create_task(d.run())
    for m in msgs:
        d.submit(m)
    deadline = time.monotonic() + timeout
    while not settle() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await d.close(5)
    assert task.done()


# ----- rendering -----


def test_single_firing_message_tells_on_call_what_they_need() -> None:
    (m,) = render([firing()], "host-a", ("json://127.0.0.1:9/",))
    assert m.title == "[memwatchd] FIRING leak-growth: java (pid 1234) +45M/h on host-a"
    for part in (
        "host-a",
        "leak-growth",
        "java (pid 1234, unit tomcat.service)",
        "+45M/h",
        "R²=0.98",
        "rss 1.2G",
        "(for 2h05m)",
        "runs out in ~1h10m",
        "memwatchctl history --pid 1234 --since 6h",
        "1000M → 1.0G",
    ):
        assert part in m.body, part
    assert any(c in m.body for c in "▁▂▃▄▅▆▇█")
    assert m.urls == ("json://127.0.0.1:9/",) and m.reasons == ("firing",)


def test_resolved_and_repeat_messages_say_so() -> None:
    t = firing()
    res = Transition(
        AlertRecord(
            **{
                **{f: getattr(t.record, f) for f in t.record.__slots__},
                "state": "resolved",  # type: ignore[attr-defined]
                "resolved_at": WALL + 60,
                "summary": "growth stopped: rss 0B/h (< 30M/h)",
            }
        ),
        "resolved",
        t.series,
        at=WALL + 60,
        rule=RULE,
    )
    (m,) = render([res], "host-a", ("json://x/",))
    assert m.title == "[memwatchd] RESOLVED leak-growth: java (pid 1234) on host-a"
    assert "growth stopped" in m.body and "lasted 2h06m" in m.body
    (r,) = render([firing(reason="repeat")], "host-a", ("json://x/",))
    assert r.title.startswith("[memwatchd] STILL FIRING leak-growth: java (pid 1234)")


def test_grouped_message_lists_processes_and_caps_the_list() -> None:
    ts = [firing(pid=1000 + i, comm=f"worker{i}", rate=(i + 1) * MB / 3600) for i in range(25)]
    (m,) = render(ts, "host-a", ("json://x/",))
    assert m.title == "[memwatchd] FIRING leak-growth: 25 processes on host-a"
    lines = [ln for ln in m.body.splitlines() if ln.startswith("  worker")]
    assert len(lines) == 20 and lines[0].startswith("  worker24 (pid 1024, tomcat.service): +25M/h")
    assert "  ... and 5 more" in m.body
    assert len(m.records) == 25


def test_one_message_per_rule_and_rule_urls_override_defaults() -> None:
    other = RuleConfig(name="big", kind="threshold", threshold=MB, notify=("json://own/",))
    silent = RuleConfig(name="quiet", kind="threshold", threshold=MB, notify=())
    t2 = Transition(
        firing().record.__class__(
            **{
                **{f: getattr(firing().record, f) for f in AlertRecord.__slots__},  # type: ignore[attr-defined]
                "rule": "big",
                "kind": "threshold",
            }
        ),
        "firing",
        (),
        at=WALL,
        rule=other,
    )
    t3 = Transition(t2.record, "firing", (), at=WALL, rule=silent)
    msgs = render([firing(), firing(pid=2), t2, t3], "h", ("json://default/",))
    assert [(m.records[0].rule, m.urls, len(m.records)) for m in msgs] == [
        ("leak-growth", ("json://default/",), 2),
        ("big", ("json://own/",), 1),
    ]
    assert render([firing()], "h", ()) == []  # nowhere to send


def test_sparkline() -> None:
    assert sparkline([]) == ""
    assert sparkline([5, 5, 5]) == "▁▁▁"
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert len(sparkline(list(range(1000)))) == 24


def test_scrub_removes_every_secret_part_of_a_url() -> None:
    url = "json://alice:hunter22@hooks.example.com:8443/api/T0KEN123?key=abcdef"
    assert {"alice", "hunter22", "T0KEN123", "abcdef"} <= set(secrets_of(url))
    text = f"failed to post to {url} (user alice, token T0KEN123) at hooks.example.com"
    out = scrub(text, [url])
    for s in ("hunter22", "T0KEN123", "abcdef", "alice"):
        assert s not in out
    assert "hooks.example.com" in out
    tg = "tgram://123456789:AAbbCCddEE/987654"  # the bot token sits where a host would be
    assert {"123456789:AAbbCCddEE", "AAbbCCddEE", "987654"} <= set(secrets_of(tg))
    assert "AAbbCCddEE" not in scrub(f"Failed to send to {tg}; bot 123456789:AAbbCCddEE rejected", [tg])


# ----- delivery against real endpoints -----


def test_json_webhook_delivery_arrives_with_title_and_body() -> None:
    delivered: list[Message] = []

    async def on_delivered(m: Message) -> None:
        delivered.append(m)

    with WebhookReceiver() as hook:
        m = render([firing()], "host-a", (hook.url(),))[0]
        d = Deliverer(timeout_s=5, max_retries=2, on_delivered=on_delivered)
        run(lambda: deliver_all(d, [m], lambda: d.delivered == 1))
        (body,) = hook.bodies
    assert body["title"] == m.title and body["message"] == m.body
    assert delivered == [m] and d.delivered == 1 and d.failures == 0


def test_mailto_delivery_arrives_over_smtp() -> None:
    with SmtpReceiver(user="alert", password="s3cret-pw") as smtp:
        m = render([firing()], "host-a", (smtp.url(),))[0]
        d = Deliverer(timeout_s=5, max_retries=1, on_delivered=None)
        run(lambda: deliver_all(d, [m], lambda: d.delivered == 1))
        (mail,) = smtp.wait_for(1, timeout=5)
        (envelope,) = smtp.handler.envelopes
    assert mail["Subject"] == m.title
    assert "java (pid 1234, unit tomcat.service)" in mail.get_content()  # type: ignore[attr-defined]
    assert envelope == ("memwatchd@example.com", ["oncall@example.com"])


def test_endpoint_answering_500_then_recovering_gets_the_message_exactly_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "tok3n-SECRET-99"
    calls: list[float] = []

    async def on_delivered(m: Message) -> None:
        calls.append(time.monotonic())

    caplog.set_level(logging.DEBUG)
    with WebhookReceiver() as hook:
        hook.fail_next(3)
        url = hook.url(f"oncall:{secret}", path=f"/hook/{secret}x")
        d = Deliverer(
            timeout_s=3, max_retries=5, on_delivered=on_delivered, backoff_base_s=0.05, backoff_cap_s=0.2
        )
        run(lambda: deliver_all(d, [msg(urls=(url,))], lambda: d.delivered == 1))
        assert hook.requests == 4 and len(hook.bodies) == 1
    assert d.failures == 3 and d.delivered == 1 and len(calls) == 1
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "failed (attempt 1 of 6)" in logged and "500" in logged
    assert secret not in logged and "oncall" not in logged
    assert f"json://127.0.0.1:{hook.port}/***" in logged


def test_stalled_endpoint_times_out_and_is_retried() -> None:
    with WebhookReceiver() as hook:
        hook.stall_next(1, 20.0)
        d = Deliverer(timeout_s=1, max_retries=3, on_delivered=None, backoff_base_s=0.05, backoff_cap_s=0.1)
        run(lambda: deliver_all(d, [msg(urls=(hook.url(),))], lambda: d.delivered == 1))
        assert len(hook.bodies) == 1 and hook.requests == 2
    assert d.failures == 1


def test_only_failed_urls_are_retried() -> None:
    with WebhookReceiver() as good, WebhookReceiver() as bad:
        bad.fail_next(100)
        told: list[Message] = []

        async def on_delivered(m: Message) -> None:
            told.append(m)

        d = Deliverer(
            timeout_s=3, max_retries=2, on_delivered=on_delivered, backoff_base_s=0.02, backoff_cap_s=0.05
        )
        run(lambda: deliver_all(d, [msg(urls=(good.url(), bad.url()))], lambda: d.given_up == 1))
        assert len(good.bodies) == 1 and bad.requests == 3
    assert len(told) == 1 and d.delivered == 0 and d.given_up == 1 and d.failures == 3


def test_wrong_smtp_password_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with SmtpReceiver(user="alert", password="right-pw") as smtp:
        url = smtp.url().replace("right-pw", "Wr0ngPassw0rd")
        d = Deliverer(timeout_s=3, max_retries=1, on_delivered=None, backoff_base_s=0.01, backoff_cap_s=0.01)
        run(lambda: deliver_all(d, [msg(urls=(url,))], lambda: d.given_up == 1))
        assert smtp.handler.messages == []
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "not delivered" in logged and "Wr0ngPassw0rd" not in logged


def test_urls_never_reach_the_child_command_line() -> None:
    secret = "argv-SECRET-7"

    async def scenario() -> str:
        with WebhookReceiver() as hook:
            hook.stall_next(1, 10.0)
            d = Deliverer(timeout_s=5, max_retries=0, on_delivered=None)
            task = asyncio.create_task(d.run())
            d.submit(msg(urls=(hook.url(f"u:{secret}"),)))
            while d._child is None:
                await asyncio.sleep(0.01)
            cmdline = Path(f"/proc/{d._child.pid}/cmdline").read_bytes().decode()
            await d.close(0.2)
            assert task.done()
            return cmdline

    cmdline = run(scenario)
    assert "memwatchd.notify.child" in cmdline and secret not in cmdline and "json://" not in cmdline


def test_submit_never_blocks_and_drops_the_oldest_when_full() -> None:
    async def scenario() -> tuple[Deliverer, float, list[str]]:
        with WebhookReceiver() as hook:
            hook.stall_next(1, 5.0)  # the first delivery hangs: the queue backs up behind it
            d = Deliverer(timeout_s=30, max_retries=0, on_delivered=None, queue_max=10)
            task = asyncio.create_task(d.run())
            d.submit(msg("first", urls=(hook.url(),)))
            while not d._busy:
                await asyncio.sleep(0.01)
            t0 = time.monotonic()
            for i in range(100):
                d.submit(msg(f"m{i}", urls=(hook.url(),)))
            spent = time.monotonic() - t0
            queued = [m.title for m in d._queue]
            await d.close(0.1)
            assert task.done()
            return d, spent, queued

    d, spent, queued = run(scenario)
    assert d.dropped == 90 and queued == [f"m{i}" for i in range(90, 100)]
    assert spent < 1.0  # loose: submit only appends to a deque


def test_close_gives_up_promptly_on_a_hanging_endpoint() -> None:
    async def scenario() -> float:
        with WebhookReceiver() as hook:
            hook.stall_next(5, 30.0)
            d = Deliverer(timeout_s=30, max_retries=5, on_delivered=None)
            task = asyncio.create_task(d.run())
            d.submit(msg(urls=(hook.url(),)))
            while d._child is None:
                await asyncio.sleep(0.01)
            t0 = time.monotonic()
            await d.close(0.5)
            assert task.done() and d._child is None
            return time.monotonic() - t0

    assert run(scenario) < 5


def test_send_sync_and_url_check_in_a_child() -> None:
    with WebhookReceiver() as hook:
        assert send_sync("t", "b", [hook.url()], 3) == [(True, "")]
        assert hook.wait_for(1, 2)[0]["title"] == "t"
    problems = check_urls_child(["json://127.0.0.1:1/", "nosuchscheme://user:PW123@host.example.com/x"])
    assert problems == [
        "Apprise does not know the scheme 'nosuchscheme': nosuchscheme://host.example.com/***"
    ]
    assert check_urls_child([]) == []


def test_delivery_helper_rejects_bad_input() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "memwatchd.notify.child"], input=b"not json", capture_output=True, timeout=30
    )
    assert p.returncode == 2 and json.loads(p.stdout)["error"].startswith("bad input")


def test_notify_test_command(tmp_path: Path) -> None:
    with WebhookReceiver() as hook, WebhookReceiver() as down:
        down.fail_next(100)
        cfg = tmp_path / "memwatchd.toml"
        cfg.write_text(
            f'[daemon]\nhostname = "box-1"\n[notify]\nurls = ["{hook.url("u:pw-S3CRET")}"]\ntimeout = "3s"\n'
            f'[[rules]]\nname = "oom"\nkind = "oom"\nnotify = ["{down.url()}"]\n'
        )
        runner = CliRunner()
        ok = runner.invoke(notify_test, ["--config", str(cfg)])
        assert ok.exit_code == 0, ok.output
        assert ok.output == f"ok      json://127.0.0.1:{hook.port}/***\n"
        assert hook.wait_for(1, 2)[0]["title"] == "[memwatchd] test notification from box-1"
        bad = runner.invoke(notify_test, ["--config", str(cfg), "--rule", "oom"])
        assert bad.exit_code == 1
        assert f"failed  json://127.0.0.1:{down.port}/***: " in bad.output
        assert "Error: 1 of 1 notification URL(s) failed" in bad.output
    missing = runner.invoke(notify_test, ["--config", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 2 and "no such file" in missing.output
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    none = runner.invoke(notify_test, ["--config", str(empty)])
    assert none.exit_code == 1 and "Error: no notification URLs configured" in none.output
