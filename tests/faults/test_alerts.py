"""RELIABILITY.md 13-15: a failing endpoint, an alert storm, restarts in the middle of an episode."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.faults.common import Daemons, config, log_text, query, status, stop
from tests.helpers import wait_for
from tests.receivers import WebhookReceiver

HOG = """
import ctypes, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
b = bytearray(int(sys.argv[2]) << 20)
b[::4096] = b"\\x01" * len(b[::4096])
print("up", flush=True)
sys.stdin.read()
"""


def hog(comm: str, mb: int = 40) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, "-c", HOG, comm, str(mb)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert p.stdout and p.stdout.readline().strip() == "up"
    return p


def titles(hook: WebhookReceiver, word: str = "") -> list[str]:
    return [b["title"] for b in hook.bodies if word in b["title"]]


def threshold_rule(comm: str, name: str = "big") -> str:
    return (
        f'[[rules]]\nname = "{name}"\nkind = "threshold"\nthreshold = "20MB"\nmatch = {{ comm = "{comm}" }}\n'
    )


# ---- 13. failing, slow and rate-limiting endpoint --------------------------------------------------------


def test_failing_endpoint_retries_in_background_and_delivers_once(tmp_path: Path, daemons: Daemons) -> None:
    interval = 0.3
    with WebhookReceiver() as hook:
        # the endpoint answers 500, 500, 429, then hangs past the timeout, then recovers
        script = [("fail", 500), ("fail", 500), ("fail", 429), ("stall", 0)]
        hook.fail_next(1, 500)
        attempts: list[float] = []

        def drive() -> None:
            seen = 0
            while seen < len(script) + 1 and not stopped.is_set():
                n = hook.requests
                if n > seen:
                    attempts.append(time.monotonic())
                    seen = n
                    if seen < len(script):
                        kind, code = script[seen]
                        if kind == "fail":
                            hook.fail_next(1, code)
                        else:
                            hook.stall_next(1, 30.0)
                time.sleep(0.01)

        stopped = threading.Event()
        driver = threading.Thread(target=drive, daemon=True)
        driver.start()
        # plus one endpoint that is down for good (connection refused): retried, given up, never blocking
        extra = (
            f'[notify]\nurls = ["{hook.url()}", "json://127.0.0.1:9/"]\ntimeout = "1s"\nmax_retries = 5\n'
            + threshold_rule("deliveryhog")
        )
        db = tmp_path / "db" / "memwatchd.db"
        log = tmp_path / "daemon.log"
        p = daemons.start(config(tmp_path, interval=interval, extra=extra), log)
        h = None
        try:
            wait_for(lambda: status(db).get("committed_snapshots", 0) >= 3, 30, what="snapshots")
            t_start = time.time()
            h = hog("deliveryhog")
            bodies = wait_for(lambda: hook.bodies, 60, what="delivery after recovery")
            t_end = time.time()
            time.sleep(3 * interval + 2)
            got = titles(hook, "FIRING")
            assert len(got) == 1 and "deliveryhog" in got[0], titles(hook)
            assert len(bodies) == 1
            assert hook.requests == len(script) + 1
            # backoff: each wait longer than the first (base 1 s doubling, jitter 0.5-1), none near the cap
            gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
            assert len(gaps) == len(script), (attempts, gaps)
            assert gaps[-1] > gaps[0] and max(gaps) < 60, gaps
            # sampling went on at its pace the whole time
            ts = [
                r[0] / 1000
                for r in query(
                    db,
                    "SELECT ts_ms FROM snapshots WHERE ts_ms BETWEEN ? AND ? ORDER BY id",
                    (round(t_start * 1000), round(t_end * 1000)),
                )
            ]
            steps = [b - a for a, b in zip(ts, ts[1:], strict=False)]
            assert len(ts) >= (t_end - t_start) / interval * 0.8, (len(ts), t_end - t_start)
            assert max(steps) < 2 * interval, (
                f"a sampling gap of {max(steps):.2f}s while delivery was failing"
            )
            st = status(db)
            assert int(st["notify_failures"]) >= len(script)
        finally:
            stopped.set()
            if h is not None:
                h.kill()
                h.wait()
            rc, _ = stop(p)
        assert rc == 0
        text = log_text(log)
        assert "Traceback" not in text
        # the endpoint that is down for good: one give-up line per message (never one per attempt or per
        # cycle); a RESOLVED queued as the daemon stops (the hog is killed just before) gives up once too
        give_ups = [ln for ln in text.splitlines() if "not delivered to json://127.0.0.1:9" in ln]
        titles_given_up = [ln.split("notification ", 1)[1].split(" not delivered", 1)[0] for ln in give_ups]
        assert len(titles_given_up) == len(set(titles_given_up)), give_ups
        assert sum("FIRING" in t for t in titles_given_up) <= 1, give_ups


# ---- 14. alert storm -----------------------------------------------------------------------------------

LEAKER = """
import ctypes, sys, time
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
keep = []
sys.stdin.readline()
time.sleep(float(sys.argv[2]))              # staggered starts: the leaks cross the rule over several cycles
end = time.monotonic() + 14
while time.monotonic() < end:               # 1 MB/s
    keep.append(b"\\x01" * (256 << 10))
    time.sleep(0.25)
sys.stdin.readline()
"""


def test_alert_storm_is_grouped_and_rate_limited(tmp_path: Path, daemons: Daemons) -> None:
    n = 20
    with WebhookReceiver() as hook:
        extra = (
            f'[notify]\nurls = ["{hook.url()}"]\ngroup_wait = "5s"\nrepeat_interval = "1h"\n'
            '[[rules]]\nname = "leak"\nkind = "growth"\nmin_rate = "20MB/min"\nwindow = "5s"\n'
            'match = { comm = "storm*" }\n'
        )
        db = tmp_path / "db" / "memwatchd.db"
        log = tmp_path / "daemon.log"
        p = daemons.start(config(tmp_path, interval=0.3, extra=extra), log)
        leakers = [
            subprocess.Popen(
                [sys.executable, "-c", LEAKER, f"storm{i:02d}", str(i * 0.2)],
                stdin=subprocess.PIPE,
                text=True,
            )
            for i in range(n)
        ]
        try:
            wait_for(lambda: status(db).get("committed_snapshots", 0) >= 3, 30, what="snapshots")
            time.sleep(1)
            for lk in leakers:
                assert lk.stdin
                lk.stdin.write("go\n")
                lk.stdin.flush()
            t0 = time.monotonic()
            wait_for(
                lambda: len(query(db, "SELECT * FROM alerts WHERE rule = 'leak'")) >= n,
                40,
                what="all 20 firing",
            )
            fired_spread = query(db, "SELECT max(fired_at) - min(fired_at) FROM alerts WHERE rule = 'leak'")[
                0
            ][0]
            time.sleep(7)  # past group_wait
            bodies = hook.bodies
            firing = [b for b in bodies if "FIRING" in b["title"]]
            named = {
                f"storm{i:02d}" for i in range(n) if any(f"storm{i:02d}" in b["message"] for b in firing)
            }
            assert len(named) == n, (
                f"processes never notified: {sorted({f'storm{i:02d}' for i in range(n)} - named)}"
            )
            # the episodes fired over several cycles; messages come per group_wait, not per process per cycle
            assert fired_spread > 0.3, (
                f"the storm fired within one cycle ({fired_spread:.2f}s): grouping untested"
            )
            assert len(bodies) <= 1 + (time.monotonic() - t0) / 5, [b["title"] for b in bodies]
            assert len(firing) <= 3, [b["title"] for b in firing]
            assert any("processes" in b["title"] for b in firing), [b["title"] for b in firing]
            print(
                f"{n} episodes fired over {fired_spread:.1f}s -> {len(bodies)} messages:",
                [b["title"] for b in bodies],
            )
        finally:
            for lk in leakers:
                lk.kill()
                lk.wait()
            rc, _ = stop(p)
        assert rc == 0
        assert "Traceback" not in log_text(log)


# ---- 15. restart does not re-send ------------------------------------------------------------------------


def test_restart_does_not_resend_delivered_alerts(tmp_path: Path, daemons: Daemons) -> None:
    with WebhookReceiver() as hook:
        extra = f'[notify]\nurls = ["{hook.url()}"]\nrepeat_interval = "1h"\n' + threshold_rule("restarthog")
        db = tmp_path / "db" / "memwatchd.db"
        log = tmp_path / "daemon.log"
        cfg = config(tmp_path, interval=0.3, extra=extra)
        h = hog("restarthog")
        try:
            p = daemons.start(cfg, log)
            wait_for(lambda: titles(hook, "FIRING"), 30, what="FIRING")
            wait_for(
                lambda: query(db, "SELECT notified_state FROM alerts WHERE rule = 'big'") == [("firing",)],
                10,
                what="delivery recorded",
            )
            assert stop(p)[0] == 0
            # a clean restart, then a kill -9 and another restart: the episode is the same, nothing re-sent
            for how in ("term", "kill"):
                p = daemons.start(cfg, log, append=True)
                n0 = status(db).get("committed_snapshots", 0) if status(db).get("pid") == p.pid else 0
                wait_for(
                    lambda: (
                        status(db).get("pid") == p.pid and status(db).get("committed_snapshots", 0) >= n0 + 10  # noqa: B023
                    ),
                    30,
                    what="cycles after restart",
                )
                time.sleep(2)  # a delivery would take a second or two (child process)
                assert len(titles(hook)) == 1, titles(hook)
                if how == "term":
                    assert stop(p)[0] == 0
                else:
                    p.send_signal(signal.SIGKILL)
                    p.wait(10)
            p = daemons.start(cfg, log, append=True)
            wait_for(lambda: status(db).get("pid") == p.pid, 30, what="third start")
            h.kill()
            h.wait()
            wait_for(lambda: titles(hook, "RESOLVED"), 30, what="RESOLVED")
            time.sleep(2)
            assert len(titles(hook, "FIRING")) == 1 and len(titles(hook, "RESOLVED")) == 1, titles(hook)
            assert query(db, "SELECT count(*), min(state) FROM alerts WHERE rule = 'big'") == [
                (1, "resolved")
            ]
            assert stop(p)[0] == 0
        finally:
            if h.poll() is None:
                h.kill()
                h.wait()
        assert "Traceback" not in log_text(log)
