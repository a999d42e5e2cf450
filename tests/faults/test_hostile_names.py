"""Issue 14, text that comes from processes: real processes name themselves with prctl(PR_SET_NAME) (an ESC
sequence, a newline, bytes that are not UTF-8, a bidi override, a literal backslash), and the real daemon
carries those names to a real webhook, its log, Prometheus, memwatchctl's tables, JSON and filters, and the
live view. Nothing arrives raw; every name stays distinct and can be found again."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.common import Daemons, config, log_text, query, stop
from tests.helpers import BIN, wait_for
from tests.receivers import WebhookReceiver

# (bytes the process gives itself, how memwatchd keeps it, how it is shown)
NAMES = [
    (b"zq\x1b[31mRED", "zq\x1b[31mRED", "zq\\x1b[31mRED"),
    (b"zq\nFAKE: ok", "zq\nFAKE: ok", "zq\\x0aFAKE: ok"),
    (b"zq\xff\xfename", "zq\\xff\\xfename", "zq\\xff\\xfename"),
    (b"zq\\xffname", "zq\\\\xffname", "zq\\\\xffname"),  # a real name that spells \xff
    ("zq\u202eevil".encode(), "zq\u202eevil", "zq\\u202eevil"),
]
RAW = ("\x1b", "\u202e", "\ufffd", "\nFAKE")  # what must never appear in shown output

HOLDER = """
import ctypes, sys
name = bytes.fromhex(sys.argv[1])
assert ctypes.CDLL(None).prctl(15, name, 0, 0, 0) == 0
b = bytearray(48 << 20)
b[::4096] = b"\\x01" * len(b[::4096])
print("up", flush=True)
sys.stdin.read()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen[str]]]:
    procs = []
    try:
        for raw, _, _ in NAMES:
            p = subprocess.Popen(
                [sys.executable, "-c", HOLDER, raw.hex()],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert p.stdout is not None and p.stdout.readline().strip() == "up"
            assert Path(f"/proc/{p.pid}/comm").read_bytes() == raw + b"\n"
            procs.append(p)
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


def ctl(db: Path, *args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    """memwatchctl with argv as bytes (a name that is not UTF-8 is passed as the process has it)."""
    return subprocess.run(
        [
            str(BIN / "memwatchctl").encode(),
            b"--db",
            str(db).encode(),
            *(a if isinstance(a, bytes) else a.encode() for a in args),
        ],
        capture_output=True,
        timeout=60,
        env={**os.environ, "TZ": "UTC"},
    )


def test_hostile_process_names_reach_no_output_raw(
    tmp_path: Path, daemons: Daemons, holders: list[subprocess.Popen[str]]
) -> None:
    port = _free_port()
    pids = {raw: p.pid for (raw, _, _), p in zip(NAMES, holders, strict=True)}
    with WebhookReceiver() as hook:
        extra = (
            f'[notify]\nurls = ["{hook.url()}"]\ngroup_wait = "1s"\nrepeat_interval = "1h"\n'
            f'[prometheus]\nlisten = "127.0.0.1:{port}"\ntop_k = 1000\nmax_series = 100000\n'
            '[[rules]]\nname = "big"\nkind = "threshold"\nthreshold = "40MB"\nmatch = { comm = "zq*" }\n'
        )
        db = tmp_path / "db" / "memwatchd.db"
        log = tmp_path / "daemon.log"
        p = daemons.start(config(tmp_path, interval=0.2, log_level="debug", extra=extra), log)
        try:
            # every process fired; the messages name all of them
            def named_all() -> bool:
                text = json.dumps([b.get("title", "") + "\n" + b.get("message", "") for b in hook.bodies])
                return all(str(pid) in text for pid in pids.values())

            wait_for(named_all, 40, what="FIRING messages naming all five processes")
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
            outputs = {
                "processes": ctl(db, "processes", "--comm-glob", "zq*"),
                "processes --json": ctl(db, "processes", "--comm-glob", "zq*", "--json"),
                "top": ctl(db, "top", "--once", "--limit", "0"),
                "alerts": ctl(db, "alerts"),
                "alerts --json": ctl(db, "alerts", "--json"),
                "history": ctl(db, "history", "--comm-glob", "zq*", "--since", "1h"),
            }
            live = _live_view_rows(db)
        finally:
            rc, _ = stop(p)
        assert rc == 0

    # 1. the webhook: titles and bodies hold the shown forms, nothing raw, no forged line
    for body in hook.bodies:
        for field in ("title", "message"):
            text = body.get(field, "")
            for bad in RAW:
                assert bad not in text, (bad, field, text)
            assert not any(line.startswith("FAKE") for line in text.split("\n")), text
    delivered = "\n".join(b.get("title", "") + "\n" + b.get("message", "") for b in hook.bodies)
    for raw, _, show in NAMES:
        assert f"{show} (pid {pids[raw]}" in delivered, (show, delivered)

    # 2. the daemon's log
    text = log_text(log)
    for bad in RAW:
        assert bad not in text, bad
    assert "Traceback" not in text

    # 3. Prometheus: the exposition holds the shown forms as label values (escaped again only by the
    #    exposition format's own rule for backslashes), never a raw control or invalid byte
    body = metrics.decode("utf-8")  # strict: an invalid byte would fail here
    for bad in RAW:
        assert bad not in body, bad
    from prometheus_client.parser import text_string_to_metric_families

    labels = {
        s.labels.get("comm")
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
        if s.name.startswith("memwatchd_process_rss_bytes")
    }
    for _, _, show in NAMES:
        assert show in labels, (show, sorted(x for x in labels if x and x.startswith("zq")))

    # 4. memwatchctl: tables escaped, JSON keeps the lossless forms, distinct
    for name, r in outputs.items():
        assert r.returncode == 0, (name, r.stderr)
        out = r.stdout.decode("utf-8")  # strict
        for bad in RAW:
            assert bad not in out, (name, bad)
        assert "Traceback" not in r.stderr.decode(errors="replace")
    table = outputs["processes"].stdout.decode()
    for raw, _, show in NAMES:
        assert any(str(pids[raw]) in ln and show in ln for ln in table.splitlines()), (show, table)
    rows = json.loads(outputs["processes --json"].stdout)
    kept = {r["pid"]: r["comm"] for r in rows}
    for raw, keep, _ in NAMES:
        assert kept[pids[raw]] == keep
    assert len({kept[pid] for pid in pids.values()}) == len(NAMES)
    alerts = json.loads(outputs["alerts --json"].stdout)
    assert {a["pid"]: a["comm"] for a in alerts if a["pid"] in pids.values()} == {
        pids[raw]: keep for raw, keep, _ in NAMES
    }

    # 5. --comm finds each process by the bytes of its name, and only that one
    for raw, _, _ in NAMES:
        r = ctl(db, "processes", "--comm", raw, "--json")
        assert r.returncode == 0, r.stderr
        assert [x["pid"] for x in json.loads(r.stdout)] == [pids[raw]], raw
    # typing the shown form of the invalid bytes finds nothing: it names another, real, name
    r = ctl(db, "processes", "--comm", "zq\\xff\\xfename", "--json")
    assert json.loads(r.stdout) == []
    stored = {row[0] for row in query(db, "SELECT comm FROM processes WHERE comm GLOB 'zq*'")}
    assert stored >= {keep for _, keep, _ in NAMES}

    # 6. the live view (memwatchctl top on a terminal), on the daemon's database
    for raw, _, show in NAMES:
        assert live.get(str(pids[raw])) == show, (show, live)


def _live_view_rows(db: Path) -> dict[str, Any]:
    """PID -> the COMM cell of the interactive view (Textual, headless), for the zq* processes."""
    from memwatchd.cli.tui import ProcessScreen, TopApp
    from memwatchd.store.reader import StoreReader

    rows: dict[str, Any] = {}

    async def go() -> None:
        with StoreReader(str(db)) as reader:
            app = TopApp(reader, window_s=600.0, sort_by="rss", limit=0, refresh_s=60.0)
            async with app.run_test(size=(200, 60)) as pilot:
                await pilot.pause()
                screen = app.screen
                assert isinstance(screen, ProcessScreen)
                await pilot.press("slash")
                for ch in "zq":
                    await pilot.press(ch)
                await pilot.press("enter")
                await pilot.pause()
                table = screen.query_one("#procs")
                for i in range(table.row_count):
                    cells = [str(c) for c in table.get_row_at(i)]
                    rows[cells[0]] = cells[1]

    asyncio.run(go())
    return rows
