"""The real daemon end to end: a real leaking process and a real OOM kill make real notifications.

A json:// webhook receiver on 127.0.0.1 collects what the daemon sends.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e_workloads import LEAKER, VICTIM
from tests.helpers import bpf_possible, start_daemon, stop_daemon, wait_for, write_config
from tests.receivers import SmtpReceiver, WebhookReceiver

INTERVAL = 0.5
WINDOW = 10.0
FOR = 2.0
SLACK = 6.0  # python start of the delivery helper, scheduling on a loaded test machine


def titles(hook: WebhookReceiver, word: str) -> list[str]:
    return [b["title"] for b in hook.bodies if word in b["title"]]


def test_leaking_process_fires_once_and_resolves_once(tmp_path: Path) -> None:
    with WebhookReceiver() as hook, SmtpReceiver(user="alerts", password="s3cret") as smtp:
        extra = (
            f'[notify]\nurls = ["{hook.url()}", "{smtp.url()}"]\nrepeat_interval = "1h"\ngroup_wait = "0s"\n'
            f'[[rules]]\nname = "leak-growth"\nkind = "growth"\nmetric = "rss"\nmin_rate = "1MB/min"\n'
            f'window = "{WINDOW:g}s"\nfor = "{FOR:g}s"\nmatch = {{ comm = "leaker" }}\n'
        )
        cfg = write_config(tmp_path, bpf=False, interval=INTERVAL, extra=extra)
        daemon = start_daemon(cfg)
        leaker = subprocess.Popen(
            [sys.executable, "-c", LEAKER, "leaker", "30"],
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
            t0 = time.monotonic()
            budget = WINDOW + FOR + 2 * INTERVAL + SLACK
            fired = wait_for(lambda: titles(hook, "FIRING"), budget, what="the firing message")
            assert time.monotonic() - t0 <= budget
            assert len(fired) == 1
            assert f"FIRING leak-growth: leaker (pid {leaker.pid})" in fired[0]
            body = next(b["message"] for b in hook.bodies if "FIRING" in b["title"])
            assert f"memwatchctl history --pid {leaker.pid}" in body and "Window:" in body

            assert leaker.stdout.readline().strip() == "stopped"
            # the window must see the flat part, then the hold: about 1.5 windows, plus slack
            resolved = wait_for(lambda: titles(hook, "RESOLVED"), 2 * WINDOW + FOR + SLACK, what="resolved")
            assert resolved == [
                f"[memwatchd] RESOLVED leak-growth: leaker (pid {leaker.pid}) on "
                + resolved[0].rsplit(" on ", 1)[1]
            ]
            time.sleep(3 * INTERVAL + 2)  # nothing more may follow
            assert len(titles(hook, "FIRING")) == 1 and len(titles(hook, "RESOLVED")) == 1
            # the same two messages reached the real SMTP server, once each
            mails = smtp.wait_for(2, timeout=10)
            subjects = sorted(str(m["Subject"]) for m in mails)
            assert len(mails) == 2, subjects
            assert (
                "FIRING leak-growth: leaker" in subjects[0] and "RESOLVED leak-growth: leaker" in subjects[1]
            )
        finally:
            leaker.kill()
            leaker.wait()
            assert stop_daemon(daemon) == 0


def _cgroup_v1_memory() -> Path | None:
    root = Path("/sys/fs/cgroup/memory")
    return root if (root / "memory.limit_in_bytes").exists() else None


@pytest.mark.bpf
def test_oom_kill_in_a_memory_cgroup_makes_one_message_naming_the_victim(tmp_path: Path) -> None:
    reason = bpf_possible()
    if reason:
        pytest.skip(reason)
    root = _cgroup_v1_memory()
    if root is None:
        pytest.skip("needs the cgroup v1 memory controller at /sys/fs/cgroup/memory")
    cg = root / f"memwatchd-test-{os.getpid()}"
    cg.mkdir()
    victim: subprocess.Popen[str] | None = None
    try:
        (cg / "memory.limit_in_bytes").write_text(str(32 * 1024 * 1024))
        if (cg / "memory.memsw.limit_in_bytes").exists():
            (cg / "memory.memsw.limit_in_bytes").write_text(str(32 * 1024 * 1024))
        (cg / "memory.swappiness").write_text("0")
        with WebhookReceiver() as hook:
            extra = f'[notify]\nurls = ["{hook.url()}"]\n[[rules]]\nname = "oom"\nkind = "oom"\n'
            cfg = write_config(tmp_path, bpf=True, interval=INTERVAL, extra=extra)
            daemon = start_daemon(cfg)
            try:
                wait_for(
                    lambda: "memwatchd started" in (tmp_path / "daemon.log").read_text(), 120, what="start"
                )
                log = (tmp_path / "daemon.log").read_text()
                if "BPF probes attached" not in log:
                    pytest.skip(f"BPF did not attach here: {log[-500:]}")

                def enter_cgroup() -> None:
                    (cg / "cgroup.procs").write_text(str(os.getpid()))

                victim = subprocess.Popen(
                    [sys.executable, "-c", VICTIM, "oomvictim"],
                    stdin=subprocess.PIPE,
                    text=True,
                    preexec_fn=enter_cgroup,  # noqa: PLW1509 (no threads of ours touch the child state)
                )
                time.sleep(2 * INTERVAL + 0.5)  # seen by a scan or two, so its history exists
                assert victim.stdin
                victim.stdin.write("go\n")
                victim.stdin.flush()
                assert victim.wait(timeout=60) == -9
                killed = time.monotonic()
                msgs: Any = wait_for(
                    lambda: titles(hook, "OOM KILL"), 2 * INTERVAL + SLACK, what="OOM message"
                )
                assert time.monotonic() - killed <= 2 * INTERVAL + SLACK
                assert len(msgs) == 1 and f"oomvictim (pid {victim.pid})" in msgs[0]
                body = next(b["message"] for b in hook.bodies if "OOM KILL" in b["title"])
                # issue 16: the kill is cgroup-local, and the message names the cgroup and its limit
                assert f"Scope:    cgroup-local: cgroup /{cg.name} reached its limit (32M)" in body, body
                assert (
                    "History:" in body and "History:  none" not in body and "killed by the OOM killer" in body
                )
                time.sleep(2)
                assert len(titles(hook, "OOM KILL")) == 1
            finally:
                assert stop_daemon(daemon) == 0
    finally:
        if victim is not None and victim.poll() is None:
            victim.kill()
            victim.wait()
        for _ in range(50):
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.1)
