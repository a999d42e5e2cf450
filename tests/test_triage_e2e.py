"""Leak triage through the real daemon: a leaking C process (built here) fires a growth alert, the daemon
traces it, a "where it allocates" follow-up naming the leaking function reaches a real webhook on
127.0.0.1, and memwatchctl triage --pid N --json returns the same result; on request through the control
socket as well."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import BIN, REPO, bpf_possible, ctl, start_daemon, stop_daemon, wait_for, write_config
from tests.receivers import WebhookReceiver

pytestmark = pytest.mark.bpf

INTERVAL = 0.5
TRIAGE_S = 4


@pytest.fixture(scope="module")
def leaky(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = bpf_possible()
    if reason:
        pytest.skip(reason)
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the workload")
    out = tmp_path_factory.mktemp("leaky") / "leaky"
    subprocess.run(
        ["gcc", "-O2", "-fno-omit-frame-pointer", "-o", str(out), str(REPO / "tests/workloads/leaky.c")],
        check=True,
    )
    return out


def _start(binary: Path, *args: str) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([str(binary), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout and p.stdout.readline() == b"ready\n"
    return p


def _go(p: subprocess.Popen[bytes]) -> None:
    assert p.stdin
    p.stdin.write(b"go\n")
    p.stdin.flush()


def _where(hook: WebhookReceiver) -> list[Any]:
    return [b for b in hook.bodies if b["title"].startswith("[memwatchd] WHERE")]


def test_growth_alert_is_followed_by_where_it_allocates(tmp_path: Path, leaky: Path) -> None:
    with WebhookReceiver() as hook:
        extra = (
            f'[notify]\nurls = ["{hook.url()}"]\nrepeat_interval = "1h"\ngroup_wait = "0s"\n'
            '[[rules]]\nname = "leak-growth"\nkind = "growth"\nmetric = "rss"\nmin_rate = "1MB/min"\n'
            'window = "6s"\nfor = "1s"\nmatch = { comm = "leaky" }\n'
        )
        cfg = write_config(
            tmp_path,
            bpf=False,
            interval=INTERVAL,
            extra=extra,
            triage=f'enabled = true\nduration = "{TRIAGE_S}s"\n',
        )
        daemon = start_daemon(cfg)
        w = _start(leaky, "run", "2048", "60")  # 2 MB/s from leak_here(), with a malloc/realloc/free path
        try:
            wait_for(
                lambda: "memwatchd started" in (tmp_path / "daemon.log").read_text(), 60, what="daemon start"
            )
            _go(w)
            fired = wait_for(lambda: [b for b in hook.bodies if "FIRING" in b["title"]], 40, what="firing")
            assert f"(pid {w.pid})" in fired[0]["title"]
            where = wait_for(lambda: _where(hook), 120, what="the triage follow-up")
            assert len(where) == 1
            title, body = where[0]["title"], where[0]["message"]
            assert f"WHERE leak-growth: leaky (pid {w.pid}) allocates in leak_here" in title, title
            assert "leak_here+0x" in body and "churn_here" not in body, body
            assert f"memwatchctl triage --pid {w.pid}" in body

            db = tmp_path / "db" / "memwatchd.db"
            r = ctl(db, "triage", "--pid", str(w.pid), "--json")
            assert r.returncode == 0, r.stderr
            d = json.loads(r.stdout)
            assert d["pid"] == w.pid and d["reason"] == "alert leak-growth" and d["status"] == "complete"
            assert d["stacks"][0]["frames"][0]["function"] == "leak_here"
            assert f"(result #{d['id']})" in body
            assert all("churn_here" not in [f["function"] for f in s["frames"]] for s in d["stacks"])
            # the estimate against the workload's rate over the window: 2 MB/s, all of it leaked
            truth = 2048 * 1024 * d["duration_s"]
            assert 0.5 * truth <= d["estimated_bytes"] <= 1.5 * truth, (d["estimated_bytes"], truth)
            plain = ctl(db, "triage", "--pid", str(w.pid))
            assert plain.returncode == 0 and "leak_here+0x" in plain.stdout and "Top stacks" in plain.stdout
            st = json.loads(ctl(db, "status", "--json").stdout)
            assert st["triage_completed"] >= 1 and st["triage_running"] == 0
        finally:
            w.kill()
            w.wait()
            assert stop_daemon(daemon) == 0


def test_on_request_trace_through_the_control_socket(tmp_path: Path, leaky: Path) -> None:
    cfg = write_config(tmp_path, bpf=False, interval=INTERVAL, triage="enabled = true\n")
    daemon = start_daemon(cfg)
    db = tmp_path / "db" / "memwatchd.db"
    w = _start(leaky, "run", "1024", "60")
    try:
        wait_for(
            lambda: "memwatchd started" in (tmp_path / "daemon.log").read_text(), 60, what="daemon start"
        )
        _go(w)
        missing = ctl(db, "triage", "--pid", str(w.pid))
        assert missing.returncode == 1 and missing.stderr.startswith("Error: no triage result for pid")
        r = ctl(db, "triage", "--pid", str(w.pid), "--duration", "3s", "--json")
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        assert d["reason"] == "request" and d["stacks"][0]["frames"][0]["function"] == "leak_here"
        assert 2.5 <= d["duration_s"] <= 6
        again = json.loads(ctl(db, "triage", "--pid", str(w.pid), "--json").stdout)
        assert again == d
        gone = ctl(db, "triage", "--pid", "999999999", "--duration", "2s")
        assert (
            gone.returncode == 1 and gone.stderr.splitlines()[-1] == "Error: no process 999999999 is running"
        )
    finally:
        w.kill()
        w.wait()
        assert stop_daemon(daemon) == 0
    # no daemon: a clear one-line error, no traceback
    r = ctl(db, "triage", "--pid", "1", "--duration", "2s")
    assert r.returncode == 1 and r.stderr.splitlines()[-1].startswith("Error: no daemon listens at"), r.stderr


def test_at_most_max_concurrent_traces_run_at_once(tmp_path: Path, leaky: Path) -> None:
    """Two requests at once with max_concurrent = 1: the second window opens after the first closed."""
    cfg = write_config(tmp_path, bpf=False, interval=INTERVAL, triage="enabled = true\nmax_concurrent = 1\n")
    daemon = start_daemon(cfg)
    db = tmp_path / "db" / "memwatchd.db"
    procs = [_start(leaky, "run", "256", "60") for _ in range(2)]
    try:
        wait_for(
            lambda: "memwatchd started" in (tmp_path / "daemon.log").read_text(), 60, what="daemon start"
        )
        for p in procs:
            _go(p)
        ctls = [
            subprocess.Popen(
                [str(BIN / "memwatchctl"), "--db", str(db), "triage", "--pid", str(p.pid)]
                + ["--duration", "2s", "--json"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for p in procs
        ]
        results = []
        for c in ctls:
            out, err = c.communicate(timeout=300)
            assert c.returncode == 0, err
            results.append(json.loads(out))
    finally:
        for p in procs:
            p.kill()
            p.wait()
        assert stop_daemon(daemon) == 0
    first, second = sorted(results, key=lambda d: d["started_at"])
    assert second["started_at"] >= first["ended_at"], (first["ended_at"], second["started_at"])
    assert {d["pid"] for d in results} == {p.pid for p in procs}
