"""The interactive `memwatchctl top`: driven headlessly by Textual's pilot, and by keys in a real tmux.

Both run against a database written by the real StoreWriter. Plus shell completion and help quality.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from memwatchd.cli.main import cli
from memwatchd.config import StorageConfig
from memwatchd.models import BpfHealth, MemInfo, Snapshot
from memwatchd.store.reader import StoreReader
from memwatchd.store.writer import StoreWriter
from tests.test_cli import T0, _p

BIN = Path(sys.executable).parent
SIZE = (160, 45)

# Four processes whose order differs for every sort key (growth is measured over 270 s of snapshots).
#   rss:    alpha charlie bravo delta      anon:  charlie bravo alpha delta
#   swap:   delta bravo charlie alpha      growth: bravo delta alpha charlie (alpha, charlie: 0, by pid)
#   mmap:   charlie bravo delta alpha      (delta and alpha have no mmap rate: more mmap bytes first)
RSS_ORDER = ["alpha", "charlie", "bravo", "delta"]
ORDERS = {
    "a": ["charlie", "bravo", "alpha", "delta"],
    "s": ["delta", "bravo", "charlie", "alpha"],
    "g": ["bravo", "delta", "alpha", "charlie"],
    "m": ["charlie", "bravo", "delta", "alpha"],
}


def make_tui_db(tmp: Path) -> Path:
    db = tmp / "tui.db"
    snaps = []
    for i in range(10):
        procs = (
            _p(21, "alpha", 80_000, 3, anon_kb=10_000, d_mmap_count=0, d_mmap_bytes=0),
            _p(22, "bravo", 30_000 + 1_000 * i, 5 + i, anon_kb=25_000, swap_kb=5_000, d_mmap_count=1),
            _p(
                23,
                "charlie",
                50_000,
                40 + 10 * i,
                anon_kb=40_000,
                swap_kb=1_000,
                unit="batch.service",
                d_mmap_count=10,
                d_mmap_bytes=10 * 65536,
            ),
            _p(
                24,
                "delta",
                10_000 + 500 * i,
                7,
                anon_kb=5_000,
                swap_kb=20_000,
                unit="batch.service",
                d_mmap_count=0,
                d_mmap_bytes=0,
            ),
        )
        snaps.append(
            Snapshot(
                ts=T0 + 30 * i,
                mono=30.0 * i,
                processes=procs,
                meminfo=MemInfo(16 << 20, 8 << 20, 2 << 20, 1 << 20),
                bpf=BpfHealth("active"),
                exits=(),
            )
        )

    async def go() -> None:
        w = await StoreWriter.open(str(db), StorageConfig())
        for s in snaps:
            await w.write(s)
        await w.close()

    asyncio.run(go())
    return db


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tui_db(tmp_path_factory.mktemp("tui"))


@pytest.fixture(autouse=True)
def _utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


def drive(db: Path, script: Callable[[Any, Any], Any], **kw: Any) -> None:
    """Run the app headless at SIZE and hand (app, pilot) to an async script; plain asyncio, no plugin."""
    from memwatchd.cli.tui import TopApp

    async def go() -> None:
        with StoreReader(str(db)) as reader:
            app = TopApp(reader, **kw)
            async with app.run_test(size=SIZE) as pilot:
                await pilot.pause()
                await script(app, pilot)

    asyncio.run(go())


def names(app: Any) -> list[str]:
    from memwatchd.cli.tui import ProcessScreen

    screen = app.screen
    assert isinstance(screen, ProcessScreen)
    table = screen.query_one("#procs")
    return [str(table.get_row_at(i)[1]) for i in range(table.row_count)]


def test_table_shows_processes_biggest_rss_first(db: Path) -> None:
    async def script(app: Any, pilot: Any) -> None:
        assert names(app) == RSS_ORDER
        summary = str(app.screen.query_one("#summary").render())
        assert summary.startswith("2023-11-14 22:17:50  mem 16G total, 8.0G available")
        assert "4 processes" in summary
        table = app.screen.query_one("#procs")
        row = " | ".join(str(c) for c in table.get_row_at(0))
        assert row == "21 | alpha | alpha.service | 78M | 9.8M | 0B | 0B/h | 0 | 0B/s | 64K"
        assert [str(c) for c in table.get_row_at(2)][6] == "+117M/h"  # bravo: 1000K per 30 s

    drive(db, script)


def test_sort_keys_reorder_and_repeat_reverses(db: Path) -> None:
    async def script(app: Any, pilot: Any) -> None:
        for key, order in ORDERS.items():
            await pilot.press(key)
            assert names(app) == order, key
        await pilot.press("m")  # the same key again: smallest first
        assert names(app) == ORDERS["m"][::-1]
        await pilot.press("r")
        assert names(app) == RSS_ORDER
        await pilot.press("n")  # by name, A to Z
        assert names(app) == ["alpha", "bravo", "charlie", "delta"]
        assert "sort comm ▲" in str(app.screen.query_one("#state").render())

    drive(db, script)


def test_clicking_a_header_sorts(db: Path) -> None:
    async def script(app: Any, pilot: Any) -> None:
        from textual.widgets import DataTable

        table = app.screen.query_one("#procs")
        col = list(table.columns).index("swap")
        table.post_message(DataTable.HeaderSelected(table, table.ordered_columns[col].key, col, "SWAP"))
        await pilot.pause()
        assert names(app) == ORDERS["s"]

    drive(db, script)


def test_filter_by_name_and_unit_then_escape_clears(db: Path) -> None:
    async def script(app: Any, pilot: Any) -> None:
        await pilot.press("slash", "b", "r")
        assert names(app) == ["bravo"]
        await pilot.press("ctrl+u")  # the input's delete-to-start: empty filter
        await pilot.press(*"batch")
        assert names(app) == ["charlie", "delta"]  # unit batch.service, still by rss
        await pilot.press("enter")  # keep the filter, back to the table: keys sort again
        await pilot.press("s")
        assert names(app) == ["delta", "charlie"]
        await pilot.press("escape")
        assert names(app) == ORDERS["s"]
        await pilot.press("slash", "q")  # q typed into the filter does not quit
        assert app.is_running and names(app) == []
        await pilot.press("escape")
        assert names(app) == ORDERS["s"]

    drive(db, script)


def test_enter_opens_history_and_escape_returns(db: Path) -> None:
    async def script(app: Any, pilot: Any) -> None:
        from memwatchd.cli.tui import HistoryScreen, ProcessScreen

        await pilot.press("down", "down", "enter")  # the third row by rss: bravo
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, HistoryScreen) and screen.proc.pid == 22
        title = str(screen.query_one("#title").render())
        assert title.startswith("rss of bravo (pid 22, bravo.service), last 1h00m, tier raw")
        assert "now 38M   min 29M   max 38M" in title
        chart = str(screen.query_one("#chart").render()).splitlines()
        assert chart[0].strip().startswith("38M ┤") and "2023-11-14 22:13:20" in chart[-1]
        await pilot.press("s")
        assert "swap of bravo" in str(screen.query_one("#title").render())
        await pilot.press("escape")
        assert isinstance(app.screen, ProcessScreen)

    drive(db, script)


def test_live_refresh_shows_a_new_snapshot_and_q_quits(db: Path, tmp_path: Path) -> None:
    live = tmp_path / "live.db"
    shutil.copy(db, live)

    async def script(app: Any, pilot: Any) -> None:
        assert names(app)[0] == "alpha"
        # the daemon writes another snapshot while the view is open: a new, bigger process appears
        w = await StoreWriter.open(str(live), StorageConfig())
        procs = (_p(21, "alpha", 80_000, 3), _p(25, "echo", 90_000, 1))
        mem = MemInfo(16 << 20, 8 << 20, 2 << 20, 1 << 20)
        await w.write(
            Snapshot(ts=T0 + 300, mono=300.0, processes=procs, meminfo=mem, bpf=BpfHealth("active"))
        )
        await w.close()
        for _ in range(50):
            await pilot.pause(0.05)
            if names(app) == ["echo", "alpha"]:
                break
        assert names(app) == ["echo", "alpha"]
        assert "2023-11-14 22:18:20" in str(app.screen.query_one("#summary").render())
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running

    drive(live, script, refresh_s=0.1)


def test_limit_given_keeps_the_biggest(db: Path) -> None:
    async def script(app: Any, pilot: Any) -> None:
        assert names(app) == RSS_ORDER[:2]

    drive(db, script, limit=2)


# ---- a person at a terminal, through tmux ---------------------------------------------------------


class Tmux:
    """One private tmux server (its own socket) running one command in a 160x45 window."""

    def __init__(self, tmp: Path) -> None:
        self.socket = str(tmp / "tmux.sock")

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-S", self.socket, *args], capture_output=True, text=True, timeout=20, check=check
        )

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "t").stdout

    def wait(self, pred: Callable[[str], bool], what: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if pred(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; screen:\n{text}")
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.run("has-session", "-t", "t", check=False).returncode == 0


def _order(screen: str) -> list[str]:
    found = []
    for line in screen.splitlines():
        words = line.split()
        if len(words) > 2 and words[0].isdigit() and words[1] in RSS_ORDER:
            found.append(words[1])
    return found


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (scripts/setup --test)")
def test_top_in_tmux(db: Path, tmp_path: Path) -> None:
    t = Tmux(tmp_path)
    ctl = BIN / "memwatchctl"
    env = {**os.environ, "TERM": "xterm-256color", "TZ": "UTC"}
    env.pop("TMUX", None)
    cmd = f"exec env TERM=xterm-256color TZ=UTC {ctl} --db {db} top --refresh 1s"
    subprocess.run(
        ["tmux", "-S", t.socket, "new-session", "-d", "-s", "t", "-x", "160", "-y", "45", cmd],
        env=env,
        check=True,
        timeout=20,
    )
    try:
        screen = t.wait(lambda s: _order(s) == RSS_ORDER and "q Quit" in s, "the table by rss and the footer")
        assert "mem 16G total, 8.0G available  swap 1.0G used of 2.0G  4 processes" in screen
        assert "sort rss ▼" in screen
        t.run("send-keys", "-t", "t", "m")
        t.wait(lambda s: _order(s) == ORDERS["m"], "the table by mmap")
        t.run("send-keys", "-t", "t", "/")
        t.wait(lambda s: "filter by name, unit or PID" in s, "the filter input")
        t.run("send-keys", "-t", "t", "d", "e", "l")
        t.wait(lambda s: _order(s) == ["delta"], "the filtered table")
        t.run("send-keys", "-t", "t", "Enter")  # keep the filter, back in the table
        t.wait(lambda s: "⏎ History" in s, "the table's keys in the footer")
        t.run("send-keys", "-t", "t", "Enter")
        t.wait(lambda s: "rss of delta (pid 24, batch.service)" in s, "the history chart")
        t.run("send-keys", "-t", "t", "Escape")
        t.wait(lambda s: _order(s) == ["delta"], "the table again")
        t.run("send-keys", "-t", "t", "q")
        deadline = time.monotonic() + 10
        while t.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not t.alive(), "q did not end memwatchctl top"
    finally:
        t.run("kill-server", check=False)


# ---- plain output, completion, help --------------------------------------------------------------


def test_not_a_tty_or_once_prints_the_plain_table(db: Path) -> None:
    r = CliRunner().invoke(cli, ["--db", str(db), "top", "--once"], env={"TZ": "UTC", "COLUMNS": "200"})
    assert r.exit_code == 0 and r.stdout.splitlines()[0].startswith("2023-11-14 22:17:50  mem 16G")
    assert _order(r.stdout) == RSS_ORDER
    r = CliRunner().invoke(cli, ["--db", str(db), "top", "--refresh", "0s"])
    assert r.exit_code == 2 and "--refresh" in r.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_the_script(shell: str) -> None:
    r = CliRunner().invoke(cli, ["completion", shell])
    assert r.exit_code == 0 and "_MEMWATCHCTL_COMPLETE" in r.stdout


def test_completion_completes_commands_and_choices() -> None:
    def complete(words: str, cword: int) -> list[str]:
        env = dict(os.environ, _MEMWATCHCTL_COMPLETE="bash_complete", COMP_WORDS=words)
        env["COMP_CWORD"] = str(cword)
        out = subprocess.run([BIN / "memwatchctl"], env=env, capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()

    assert complete("memwatchctl to", 1) == ["plain,top"]
    assert complete("memwatchctl top --sort ", 3) == [
        f"plain,{k}" for k in ("rss", "anon", "swap", "growth", "mmap")
    ]


def test_every_command_help_has_summary_description_and_example() -> None:
    ctx = click.Context(cli)
    commands = [(n, cli.get_command(ctx, n)) for n in cli.list_commands(ctx)]  # lazy notify-test too
    assert "notify-test" in [n for n, _ in commands]
    for name, cmd in [("", cli), *commands]:
        assert cmd is not None
        text = cmd.help or ""
        summary, _, rest = text.partition("\n\n")
        assert summary and "\n" not in summary.strip(), f"{name}: one-line summary"
        description, _, example = rest.partition("\b\n")
        assert description.strip(), f"{name}: a description"
        assert "Examples:" in example and "memwatchctl " in example, f"{name}: an example"
        assert cmd.get_short_help_str(), name
    r = CliRunner().invoke(cli, ["top", "--help"], terminal_width=100)
    assert "\n    memwatchctl top --once --sort growth  # print" in r.stdout  # \b: lines kept as written
    assert ctx.command is cli
