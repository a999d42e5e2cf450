"""RELIABILITY.md 16-18: invalid configuration, hostile CLI filters, secrets in argv and notification URLs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.common import Daemons, config, log_text, query, snapshot_ids, stop, wait_log
from tests.helpers import BIN, ctl, ctl_json, wait_for
from tests.receivers import WebhookReceiver

# ---- 16. invalid configuration ---------------------------------------------------------------------------

BAD_CONFIGS = [
    ("[storage]\npaht = '/tmp/x.db'\n", "storage.paht: unknown key"),
    ("[storage]\nretention = '3 fortnights'\n", "storage.retention:"),
    ("[daemon]\ninterval = '3s'\n", "daemon.interval: expected a number"),
    ("[[rules]]\nname = 'x'\nkind = 'threshold'\nthreshold = '12 parsecs'\n", "rules[0].threshold:"),
    ("[[rules]]\nname = 'x'\nkind = 'explode'\n", "rules[0].kind: expected one of"),
    ("[[rules]]\nname = 'x'\nkind = 'growth'\nmin_rate = '10MB'\n", "rules[0].min_rate:"),
    ("[notify]\nurls = ['hunter2-no-scheme']\n", "notify.urls: not an Apprise URL"),
    ("[bpf]\nmax_pids = 10\n", "bpf.max_pids: must be between"),
    ("[daemon]\ninterval = 1\n[daemon]\ninterval = 2\n", "invalid TOML"),
    ("\xff\xfe", "invalid TOML"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_CONFIGS)
def test_invalid_config_exits_2_naming_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_bytes(text.encode("utf-8", "surrogateescape") if text != "\xff\xfe" else b"\xff\xfe")
    for args in ([], ["--check"]):
        r = subprocess.run(
            [str(BIN / "memwatchd"), "--config", str(cfg), *args], capture_output=True, text=True, timeout=30
        )
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith(f"memwatchd: {cfg}: "), r.stderr
        assert expected in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert "hunter2" not in r.stderr  # the URL check masks what it quotes


def test_bad_reload_keeps_the_running_configuration(tmp_path: Path, daemons: Daemons) -> None:
    """A reload that would change the interval and the rules but has one bad key changes nothing."""
    db = tmp_path / "db" / "memwatchd.db"
    log = tmp_path / "daemon.log"
    cfg = config(tmp_path, interval=0.2)
    good = cfg.read_text()
    p = daemons.start(cfg, log)
    try:
        wait_for(lambda: len(snapshot_ids(db)) >= 3, 30, what="snapshots")
        cfg.write_text(
            good.replace("interval = 0.2", "interval = 1.5")
            + "[[rules]]\nname = 'x'\nkind = 'oom'\nwhen = 1\n"
        )
        p.send_signal(signal.SIGHUP)
        wait_log(log, "reload failed", 10)
        n0 = max(snapshot_ids(db))
        time.sleep(2)
        dts = [r[0] for r in query(db, "SELECT dt_ms FROM snapshots WHERE id > ?", (n0,))]
        assert len(dts) >= 6 and max(dts) < 600, dts  # still every 0.2 s
        assert p.poll() is None
    finally:
        rc, _ = stop(p)
    assert rc == 0
    text = log_text(log)
    assert "rules[0].when: unknown key" in text and str(cfg) in text
    assert "Traceback" not in text


# ---- 17. hostile CLI filters -------------------------------------------------------------------------------

HOSTILE_FILTERS = [
    "x' OR '1'='1",
    '"; DROP TABLE snapshots; --',
    "%",
    "_",
    "%python%",
    "\\",
    "[",
    "日本\u202e",
    "k" * 10_240,
]


@pytest.fixture(scope="module")
def live_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database the real daemon wrote (a few seconds of this host's processes)."""
    from tests.faults.common import Daemons

    tmp = tmp_path_factory.mktemp("cli")
    d = Daemons()
    try:
        p = d.start(config(tmp, interval=0.2), tmp / "daemon.log")
        db = tmp / "db" / "memwatchd.db"
        wait_for(lambda: len(snapshot_ids(db)) >= 5, 30, what="snapshots")
        assert stop(p)[0] == 0
    finally:
        d.close()
    return db


@pytest.mark.parametrize("value", HOSTILE_FILTERS)
def test_hostile_filters_give_empty_results_and_touch_nothing(live_db: Path, value: str) -> None:
    before = query(live_db, "SELECT (SELECT count(*) FROM snapshots), (SELECT count(*) FROM processes)")
    for args in (
        ["processes", "--comm", value, "--since", "1d"],
        ["processes", "--unit", value, "--since", "1d"],
        ["history", "--comm", value, "--since", "1d"],
        ["plot", "--comm", value, "--since", "1d"],
    ):
        r = ctl(live_db, *args, "--json")
        assert r.returncode == 0 and "Traceback" not in r.stderr, (args, r.stderr)
        assert json.loads(r.stdout) == [], (args, r.stdout[:200])
        r = ctl(live_db, *args)  # the table renderer too
        assert r.returncode == 0 and "Traceback" not in r.stderr
    r = ctl(live_db, "processes", "--comm-glob", value, "--since", "1d", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == [], r.stdout[:200]  # SQL LIKE wildcards mean nothing
    assert (
        query(live_db, "SELECT (SELECT count(*) FROM snapshots), (SELECT count(*) FROM processes)") == before
    )


def test_glob_and_exact_filters_still_work(live_db: Path) -> None:
    everything = ctl_json(live_db, "processes", "--comm-glob", "*", "--since", "1d")
    assert everything and len(everything) >= 3
    one = everything[0]["comm"]
    exact = ctl_json(live_db, "processes", "--comm", one, "--since", "1d")
    assert exact and {r["comm"] for r in exact} == {one}


def test_nul_byte_filter_through_the_reader(live_db: Path) -> None:
    """argv cannot carry a NUL (execve ends the string there), so the reader API is the way in."""
    from memwatchd.store.reader import StoreReader

    with StoreReader(str(live_db)) as r:
        assert r.find_processes(comm="python\x00") == []
        assert r.find_processes(comm_glob="*\x00*") == []


@pytest.mark.parametrize("when", ["yesterday", "1 hour ago", "2024-02-30", "@soon", "9" * 80, "--1h"])
def test_unparseable_time_is_a_clear_usage_error(live_db: Path, when: str) -> None:
    r = ctl(live_db, "processes", f"--since={when}")
    assert r.returncode == 2
    assert "Invalid value for '--since'" in r.stderr and "Traceback" not in r.stderr, r.stderr


# ---- 18. secrets ---------------------------------------------------------------------------------------

SECRETS = ("hunter2", "abc123SECRETtok", "urlT0kenSecret", "pathSecretXYZ", "querySecret99", "bearerSecret77")

HOLDER = """
import ctypes, sys
ctypes.CDLL(None).prctl(15, b"secretholder", 0, 0, 0)
b = bytearray(40 << 20)
b[::4096] = b"\\x01" * len(b[::4096])
print("up", flush=True)
sys.stdin.read()
"""


def test_secrets_never_reach_database_logs_or_messages(tmp_path: Path, daemons: Daemons) -> None:
    with WebhookReceiver() as hook:
        url = hook.url(userinfo="alert:urlT0kenSecret", path="/hook/pathSecretXYZ?token=querySecret99")
        extra = (
            f'[notify]\nurls = ["{url}"]\nrepeat_interval = "1h"\n'
            '[[rules]]\nname = "big"\nkind = "threshold"\nthreshold = "20MB"\n'
            'match = { comm = "secretholder" }\n'
        )
        hook.fail_next(1)  # the failure is logged: with the URL masked
        db = tmp_path / "db" / "memwatchd.db"
        log = tmp_path / "daemon.log"
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                HOLDER,
                "--password=hunter2",
                "token=abc123SECRETtok",
                "Authorization: Bearer bearerSecret77",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout and holder.stdout.readline().strip() == "up"
        p = daemons.start(config(tmp_path, interval=0.2, log_level="debug", extra=extra), log)
        try:
            wait_for(lambda: hook.bodies, 30, what="delivery")
            wait_for(
                lambda: query(db, "SELECT notified_state FROM alerts") == [("firing",)], 10, what="recorded"
            )
            assert f"pid {holder.pid}" in hook.bodies[0]["title"]
            # every command's output, too
            outputs = [
                ctl(db, *a).stdout
                for a in (
                    ["status"],
                    ["top", "--limit", "0"],
                    ["alerts"],
                    ["processes", "--pid", str(holder.pid)],
                    ["history", "--pid", str(holder.pid), "--json"],
                )
            ]
            # the database while the daemon runs (WAL not yet checkpointed)
            files = {f.name: f.read_bytes() for f in db.parent.iterdir() if f.is_file()}  # no socket
        finally:
            holder.kill()
            holder.wait()
            rc, _ = stop(p)
        assert rc == 0
        files.update({f"{f.name} (after stop)": f.read_bytes() for f in db.parent.iterdir() if f.is_file()})
        text = log_text(log)
        assert "failed" in text  # the failing attempt was logged ...
        bodies = json.dumps(hook.bodies)
        for s in SECRETS:
            for name, data in files.items():
                assert s.encode() not in data, f"{s} in {name}"
            assert s not in text, f"{s} in the daemon log"
            assert s not in bodies, f"{s} in a delivered message"
            for out in outputs:
                assert s not in out
        # the delivery did carry the credentials to the endpoint (HTTP basic auth): masking is not breakage
        assert any(h and h.startswith("Basic ") for h in hook.auth_headers)
