"""Alerts into a REAL Prometheus Alertmanager (Debian's prometheus-alertmanager), started on 127.0.0.1.

The real daemon watches a real leaking process; Alertmanager routes what memwatchd posts to a local webhook
receiver. Also: the shipped Prometheus rule file passes `promtool check rules`.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e_workloads import LEAKER
from tests.helpers import start_daemon, stop_daemon, wait_for, write_config
from tests.receivers import WebhookReceiver

ROOT = Path(__file__).resolve().parent.parent
AM_BIN = shutil.which("prometheus-alertmanager")
INTERVAL = 0.5
RULE = "am-leak"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Alertmanager:
    def __init__(self, tmp: Path, webhook_port: int) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = tmp / "alertmanager.yml"
        cfg.write_text(
            "route:\n"
            "  receiver: hook\n"
            "  group_by: [alertname, host]\n"
            "  group_wait: 1s\n"
            "  group_interval: 1s\n"
            "  repeat_interval: 2s\n"
            "receivers:\n"
            "  - name: hook\n"
            "    webhook_configs:\n"
            f"      - url: http://127.0.0.1:{webhook_port}/am\n"
            "        send_resolved: true\n"
        )
        (tmp / "am-data").mkdir()
        self.log = tmp / "alertmanager.log"
        with open(self.log, "wb") as out:
            assert AM_BIN is not None
            self.proc = subprocess.Popen(
                [
                    AM_BIN,
                    f"--config.file={cfg}",
                    f"--storage.path={tmp / 'am-data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--cluster.listen-address=",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._ready, 30, what="alertmanager ready")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as r:
            return json.loads(r.read())

    def send(self, method: str, path: str, doc: Any = None) -> Any:
        data = None if doc is None else json.dumps(doc).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            body = r.read()
            return json.loads(body) if body else None

    def alerts(self) -> list[dict[str, Any]]:
        return [a for a in self.get("/api/v2/alerts") if a["labels"].get("alertname") == RULE]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[tuple[Alertmanager, WebhookReceiver]]:
    if AM_BIN is None:
        pytest.skip("prometheus-alertmanager is not installed (scripts/setup --test installs it)")
    with WebhookReceiver() as hook:
        am = Alertmanager(tmp_path, hook.port)
        try:
            yield am, hook
        finally:
            am.stop()


def _notifications(hook: WebhookReceiver, status: str) -> list[dict[str, Any]]:
    return [
        b
        for b in hook.bodies
        if isinstance(b, dict)
        and b.get("status") == status
        and b.get("commonLabels", {}).get("alertname") == RULE
    ]


def test_leak_alert_reaches_alertmanager_is_silenced_and_resolves(
    tmp_path: Path, alertmanager: tuple[Alertmanager, WebhookReceiver]
) -> None:
    am, hook = alertmanager
    extra = (
        f'[notify]\nalertmanager = ["{am.url}"]\nalertmanager_repeat = "1s"\n'
        f'[[rules]]\nname = "{RULE}"\nkind = "growth"\nmetric = "rss"\nmin_rate = "1MB/min"\n'
        f'window = "10s"\nfor = "2s"\nseverity = "warning"\nmatch = {{ comm = "leaker" }}\n'
    )
    cfg = write_config(tmp_path, bpf=False, interval=INTERVAL, extra=extra)
    daemon = start_daemon(cfg)
    leaker = subprocess.Popen(
        [sys.executable, "-c", LEAKER, "leaker", "600"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: "memwatchd started" in (tmp_path / "daemon.log").read_text(), 60, what="daemon start"
        )
        assert leaker.stdin and leaker.stdout
        leaker.stdin.write("go\n")
        leaker.stdin.flush()
        assert leaker.stdout.readline().strip() == "leaking"

        # ONE alert in Alertmanager, with the labels and the evidence
        alerts = wait_for(am.alerts, 40, what="the alert in Alertmanager")
        assert len(alerts) == 1, alerts
        a = alerts[0]
        labels = a["labels"]
        assert labels["alertname"] == RULE and labels["comm"] == "leaker" and labels["severity"] == "warning"
        assert labels["host"]
        assert "pid" not in labels
        ann = a["annotations"]
        assert f"leaker (pid {leaker.pid})" in ann["summary"]
        assert "Window:" in ann["description"] and "Rate:" in ann["description"]
        assert ann["command"].startswith(f"memwatchctl history --pid {leaker.pid}")
        starts = a["startsAt"]

        # it reaches the receiver through Alertmanager's routing, and is repeated there (repeat_interval 2s)
        wait_for(lambda: len(_notifications(hook, "firing")) >= 2, 30, what="firing notifications via AM")
        first = _notifications(hook, "firing")[0]
        assert hook._srv.paths[hook.bodies.index(first)] == "/am"
        assert first["alerts"][0]["annotations"]["command"] == ann["command"]

        # a silence through Alertmanager's API stops it reaching the receiver; memwatchd keeps posting
        now = time.time()
        silence = am.send(
            "POST",
            "/api/v2/silences",
            {
                "matchers": [{"name": "alertname", "value": RULE, "isRegex": False, "isEqual": True}],
                "startsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 1)),
                "endsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 3600)),
                "createdBy": "test",
                "comment": "maintenance",
            },
        )
        sid = silence["silenceID"]
        wait_for(lambda: am.alerts()[0]["status"]["state"] == "suppressed", 10, what="suppressed")
        time.sleep(2.5)  # a notification in flight when the silence was made may still land
        before = len(hook.bodies)
        updated = am.alerts()[0]["updatedAt"]
        time.sleep(6)
        silenced = am.alerts()
        assert len(silenced) == 1 and silenced[0]["status"]["silencedBy"] == [sid]
        assert silenced[0]["updatedAt"] != updated, "memwatchd stopped re-posting while silenced"
        assert silenced[0]["startsAt"] == starts  # the same episode: no duplicate
        assert len(hook.bodies) == before, "a silenced alert reached the receiver"

        # the silence ends; the leak stops: the resolve arrives through Alertmanager
        am.send("DELETE", f"/api/v2/silence/{sid}")
        leaker.kill()
        leaker.wait()
        wait_for(lambda: _notifications(hook, "resolved"), 60, what="the resolve via AM")
        resolved = _notifications(hook, "resolved")[0]["alerts"][0]
        assert resolved["labels"]["comm"] == "leaker" and resolved["status"] == "resolved"
    finally:
        if leaker.poll() is None:
            leaker.kill()
            leaker.wait()
        assert stop_daemon(daemon) == 0


def test_restart_reposts_the_open_episode_with_the_same_start(
    tmp_path: Path, alertmanager: tuple[Alertmanager, WebhookReceiver]
) -> None:
    am, _ = alertmanager
    dead = f"http://127.0.0.1:{_free_port()}"  # an HA peer that is down
    extra = (
        f'[notify]\nalertmanager = ["{dead}", "{am.url}"]\nalertmanager_repeat = "1h"\n'
        f'[[rules]]\nname = "{RULE}"\nkind = "growth"\nmetric = "rss"\nmin_rate = "1MB/min"\n'
        f'window = "10s"\nfor = "2s"\nmatch = {{ comm = "leaker" }}\n'
    )
    cfg = write_config(tmp_path, bpf=False, interval=INTERVAL, extra=extra)
    leaker = subprocess.Popen(
        [sys.executable, "-c", LEAKER, "leaker", "600"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    daemon = start_daemon(cfg)
    try:
        wait_for(
            lambda: "memwatchd started" in (tmp_path / "daemon.log").read_text(), 60, what="daemon start"
        )
        assert leaker.stdin and leaker.stdout
        leaker.stdin.write("go\n")
        leaker.stdin.flush()
        first = wait_for(am.alerts, 40, what="the alert in Alertmanager")[0]
        assert stop_daemon(daemon) == 0
        updated = am.alerts()[0]["updatedAt"]
        daemon = start_daemon(cfg, log=tmp_path / "daemon2.log")
        # repeat is 1h: only the restore at start can post it again, at once
        wait_for(lambda: am.alerts()[0]["updatedAt"] != updated, 30, what="the re-post after the restart")
        again = am.alerts()
        assert len(again) == 1 and again[0]["startsAt"] == first["startsAt"]
        assert again[0]["fingerprint"] == first["fingerprint"]
    finally:
        leaker.kill()
        leaker.wait()
        assert stop_daemon(daemon) == 0


def test_shipped_prometheus_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus; scripts/setup --test)")
    p = subprocess.run(
        [promtool, "check", "rules", str(ROOT / "docs" / "prometheus-rules.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout + p.stderr


def test_readme_alertmanager_example_passes_amtool(tmp_path: Path) -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool is not installed (Debian package prometheus-alertmanager)")
    readme = (ROOT / "README.md").read_text()
    at = readme.index("Alertmanager (`alertmanager.yml`)")
    start = readme.index("```yaml\n", at) + len("```yaml\n")
    cfg = tmp_path / "alertmanager.yml"
    cfg.write_text(readme[start : readme.index("```", start)])
    p = subprocess.run([amtool, "check-config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
