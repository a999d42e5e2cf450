"""`memwatchctl top` on a terminal: a live, sortable, filterable process table with per-process charts.

Imported only when the interactive view runs, so other memwatchctl commands never pay for Textual.
The data is exactly what the plain `top` prints (StoreReader.top, rendered by cli_render); this module
adds only the screens, keys and the periodic re-query.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from memwatchd.cli import render as R
from memwatchd.store.reader import ReaderError, StoreReader
from memwatchd.store.rows import Top, TopRow
from memwatchd.units import format_duration

# Text columns sort ascending by default, memory and rates descending (biggest first, as the plain top).
_TEXT_SORTS: dict[str, Callable[[TopRow], Any]] = {
    "pid": lambda r: r.pid,
    "comm": lambda r: ((r.comm or "").lower(), r.pid),
    "unit": lambda r: ((r.unit or "").lower(), r.pid),
}
ASCENDING = frozenset(_TEXT_SORTS)

# (column key, header, right-aligned, sort key when its header is clicked)
COLUMNS: tuple[tuple[str, str, bool, str | None], ...] = (
    ("pid", "PID", True, "pid"),
    ("comm", "COMM", False, "comm"),
    ("unit", "UNIT", False, "unit"),
    ("rss", "RSS", True, "rss"),
    ("anon", "ANON", True, "anon"),
    ("swap", "SWAP", True, "swap"),
    ("growth", "GROWTH", True, "growth"),
    ("mmaps", "MMAP/S", True, "mmap"),
    ("mmap_bps", "MMAP B/S", True, "mmap"),
    ("mean_map", "MEAN MAP", True, None),
)
HISTORY_SPANS = (600.0, 3600.0, 6 * 3600.0, 86400.0, 7 * 86400.0)


def sort_rows(rows: Sequence[TopRow], by: str, descending: bool) -> list[TopRow]:
    """Rows ordered by a sort key; ties by PID (lowest first), as in the plain table."""
    if by in R.SORT_KEYS:
        key = R.SORT_KEYS[by]
        out = sorted(rows, key=lambda r: (key(r), -r.pid), reverse=True)
        return out if descending else out[::-1]
    return sorted(rows, key=_TEXT_SORTS[by], reverse=descending)


def filter_rows(rows: Sequence[TopRow], text: str) -> list[TopRow]:
    """Rows whose name or unit contains the text (case-insensitive), or whose PID is the text."""
    needle = text.strip().lower()
    if not needle:
        return list(rows)
    return [
        r
        for r in rows
        if needle in (r.comm or "").lower() or needle in (r.unit or "").lower() or needle == str(r.pid)
    ]


def row_key(r: TopRow) -> str:
    """A table row key: a process is (pid, start time), never the pid alone."""
    return f"{r.pid}:{r.start_ticks}"


def _cells(r: TopRow) -> list[Text]:
    values = R.top_cells(r)
    # Text, not str: a str cell is parsed as markup, and a process may be named "[red]x".
    return [Text(v, justify="right" if c[2] else "left") for v, c in zip(values, COLUMNS, strict=True)]


@dataclass(frozen=True, slots=True)
class Selected:
    """The process whose history is shown."""

    pid: int
    start_ticks: int
    comm: str | None
    unit: str | None


class ProcessTable(DataTable[Text]):
    """The process table; Enter (a row click too) opens the selected process's history."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "select_cursor", "History")]


class ProcessScreen(Screen[None]):
    """The summary line, a status line, the process table and the (hidden until /) filter input."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "sort('rss')", "RSS"),
        Binding("a", "sort('anon')", "Anon"),
        Binding("s", "sort('swap')", "Swap"),
        Binding("g", "sort('growth')", "Growth"),
        Binding("m", "sort('mmap')", "Mmap"),
        Binding("p", "sort('pid')", "PID", show=False),
        Binding("n", "sort('comm')", "Name", show=False),
        Binding("u", "sort('unit')", "Unit", show=False),
        Binding("slash", "open_filter", "Filter"),
        Binding("escape", "clear_filter", "Clear filter"),
        Binding("c", "groups", "Groups"),
    ]
    DEFAULT_CSS = """
    #summary { height: 1; padding: 0 1; }
    #state { height: 1; padding: 0 1; color: $text-muted; }
    #filter { dock: bottom; display: none; }
    #filter.open { display: block; }
    DataTable { height: 1fr; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="summary", markup=False)
        yield Static(id="state", markup=False)
        yield ProcessTable(id="procs", cursor_type="row", zebra_stripes=True)
        yield Input(placeholder="filter by name, unit or PID (Enter: keep, Esc: clear)", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for key, header, right, _ in COLUMNS:
            table.add_column(Text(header, justify="right" if right else "left"), key=key)
        table.focus()
        self.show()

    @property
    def top_app(self) -> TopApp:
        app = self.app
        assert isinstance(app, TopApp)
        return app

    def show(self) -> None:
        """Redraw from the app's latest data, keeping the cursor on the same process."""
        a = self.top_app
        summary = a.data.summary if a.data else None
        self.query_one("#summary", Static).update(
            Text(R.top_summary(summary) if summary else "(no snapshots yet)")
        )
        rows = a.visible_rows()
        total = len(a.data.processes) if a.data else 0
        arrow = "▼" if a.descending else "▲"
        state = f"sort {a.sort_by} {arrow}   {len(rows)} of {total} processes"
        if a.filter_text:
            state += f"   filter {a.filter_text!r}"
        state += f"   refresh {format_duration(a.refresh_s)}   growth window {format_duration(a.window_s)}"
        if a.error:
            state += f"   ERROR: {a.error}"
        self.query_one("#state", Static).update(Text(state))
        table: DataTable[Text] = self.query_one(DataTable)
        current = None
        if table.row_count:
            current = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        table.clear()
        for r in rows:
            table.add_row(*_cells(r), key=row_key(r))
        keys = [row_key(r) for r in rows]
        if current in keys:
            table.move_cursor(row=keys.index(current), animate=False)

    def action_sort(self, by: str) -> None:
        a = self.top_app
        if a.sort_by == by:
            a.descending = not a.descending  # the same key again reverses the order
        else:
            a.sort_by, a.descending = by, by not in ASCENDING
        self.show()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        by = next((c[3] for c in COLUMNS if c[0] == event.column_key.value), None)
        if by is not None:
            self.action_sort(by)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "clear_filter":  # listed in the footer only while there is a filter to clear
            return bool(self.top_app.filter_text) or self.query_one("#filter", Input).has_class("open")
        return True

    def action_open_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("open")
        box.focus()
        self.refresh_bindings()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.remove_class("open")
        self.top_app.filter_text = ""
        self.query_one(DataTable).focus()
        self.refresh_bindings()
        self.show()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.top_app.filter_text = event.value
        self.show()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if not event.value:
            event.input.remove_class("open")
        self.query_one(DataTable).focus()
        self.refresh_bindings()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self._open(str(event.row_key.value))

    def action_groups(self) -> None:
        self.app.push_screen(GroupScreen())

    def _open(self, key: str) -> None:
        rows = self.top_app.data.processes if self.top_app.data else []
        r = next((r for r in rows if row_key(r) == key), None)
        if r is not None:
            self.app.push_screen(HistoryScreen(Selected(r.pid, r.start_ticks, r.comm, r.unit)))


class HistoryScreen(Screen[None]):
    """One process's memory over time as a terminal chart (the same renderer as `memwatchctl plot`)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,backspace,left", "app.pop_screen", "Back"),
        Binding("r", "metric('rss')", "RSS"),
        Binding("a", "metric('anon')", "Anon"),
        Binding("s", "metric('swap')", "Swap"),
        Binding("t", "span", "Time span"),
    ]
    DEFAULT_CSS = """
    #title { height: 2; padding: 0 1; }
    #chart { height: 1fr; padding: 0 1; }
    """

    def __init__(self, proc: Selected) -> None:
        super().__init__()
        self.proc = proc
        self.metric = "rss"
        self.span_s = 3600.0

    def compose(self) -> ComposeResult:
        yield Static(id="title", markup=False)
        yield Static(id="chart", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.draw()

    def on_resize(self) -> None:
        self.draw()

    def action_metric(self, metric: str) -> None:
        self.metric = metric
        self.draw()

    def action_span(self) -> None:
        later = [s for s in HISTORY_SPANS if s > self.span_s]
        self.span_s = later[0] if later else HISTORY_SPANS[0]
        self.draw()

    def series(self) -> tuple[str, list[tuple[float, float]]]:
        """(tier name, [(ts, bytes)]) of the chosen metric over the span ending at the latest snapshot."""
        a = self.top_app
        summary = a.data.summary if a.data else None
        until = summary.ts if summary else 0.0
        since = until - self.span_s
        p = self.proc
        procs = [x for x in a.reader.find_processes(pid=p.pid) if x.start_ticks == p.start_ticks]
        rows = a.reader.history(procs, since, until) if procs else []
        field = f"{self.metric}_kb"
        tier = rows[0].tier if rows else "-"
        points = [(r.ts, getattr(r, field)) for r in rows]
        return tier, [(ts, v * 1024) for ts, v in points if v is not None]

    @property
    def top_app(self) -> TopApp:
        app = self.app
        assert isinstance(app, TopApp)
        return app

    def draw(self) -> None:
        """Re-query and redraw; called on mount, resize, key presses and every refresh."""
        if not self.is_mounted:
            return
        p = self.proc
        try:
            tier, pts = self.series()
            error = ""
        except (ReaderError, sqlite3.Error) as e:
            tier, pts, error = "-", [], f"   ERROR: {e}"
        head = (
            f"{self.metric} of {R.clean(p.comm)} (pid {p.pid}, {R.clean(p.unit)}),"
            f" last {format_duration(self.span_s)}, tier {tier}{error}"
        )
        vals = [v for _, v in pts]
        stats = (
            f"now {R.size(vals[-1])}   min {R.size(min(vals))}   max {R.size(max(vals))}"
            if vals
            else "(no data in range)"
        )
        self.query_one("#title", Static).update(Text(f"{head}\n{stats}"))
        width = max(10, self.size.width - 12)
        height = max(2, self.size.height - 7)
        self.query_one("#chart", Static).update(Text("\n".join(R.chart(pts, width, height))))


class GroupScreen(Screen[None]):
    """Memory cgroups (or systemd units) with their sums, charge and limit: `memwatchctl groups`, live."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,c,backspace", "app.pop_screen", "Processes"),
        Binding("b", "toggle_by", "By cgroup/unit"),
        Binding("m", "sort('memory')", "Memory"),
        Binding("g", "sort('growth')", "Growth"),
    ]
    DEFAULT_CSS = """
    #gstate { height: 1; padding: 0 1; color: $text-muted; }
    DataTable { height: 1fr; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.by = "cgroup"
        self.sort_by = "memory"
        self.rows: list[dict[str, Any]] = []
        self.error = ""

    def compose(self) -> ComposeResult:
        yield Static(id="gstate", markup=False)
        yield DataTable(id="groups", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()
        self.draw()

    def action_toggle_by(self) -> None:
        self.by = "unit" if self.by == "cgroup" else "cgroup"
        self.draw()

    def action_sort(self, by: str) -> None:
        self.sort_by = by
        self.draw()

    def draw(self) -> None:
        """Re-read the groups and redraw (called on mount, on keys and by the app's refresh)."""
        from memwatchd.cli.groups import group_cells, group_headers, sorted_groups

        app = self.app
        assert isinstance(app, TopApp)
        try:
            self.rows = sorted_groups(app.reader.groups(self.by, app.window_s), self.sort_by)
            self.error = ""
        except (ReaderError, sqlite3.Error) as e:
            self.error = str(e)
        state = f"groups by {self.by}, sort {self.sort_by}   {len(self.rows)} groups"
        if self.error:
            state += f"   ERROR: {self.error}"
        self.query_one("#gstate", Static).update(Text(state))
        table: DataTable[Text] = self.query_one(DataTable)
        table.clear(columns=True)
        headers = group_headers(self.by)
        for i, h in enumerate(headers):
            table.add_column(Text(h, justify="right" if i >= 2 else "left"), key=h)
        for r in self.rows:
            cells = group_cells(r)
            table.add_row(
                *(Text(c, justify="right" if i >= 2 else "left") for i, c in enumerate(cells)), key=r["group"]
            )


class TopApp(App[None]):
    """The live process view; re-queries the database every ``refresh_s`` seconds."""

    TITLE = "memwatchctl top"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [Binding("q", "quit", "Quit")]

    def __init__(
        self,
        reader: StoreReader,
        *,
        window_s: float = 600.0,
        sort_by: str = "rss",
        limit: int = 0,
        refresh_s: float = 2.0,
    ) -> None:
        super().__init__()
        self.reader, self.window_s, self.limit, self.refresh_s = reader, window_s, limit, refresh_s
        self.sort_by, self.descending = sort_by, sort_by not in ASCENDING
        self.filter_text = ""
        self.data: Top | None = None
        self.error = ""
        self.load()

    def get_default_screen(self) -> Screen[Any]:
        return ProcessScreen()

    def on_mount(self) -> None:
        self.set_interval(self.refresh_s, self.tick)

    def load(self) -> None:
        """Query the latest snapshot; a failed read keeps the last good data and shows the error."""
        try:
            self.data = self.reader.top(self.window_s)
            self.error = ""
        except (ReaderError, sqlite3.Error) as e:
            self.error = str(e)

    def tick(self) -> None:
        self.load()
        for screen in self.screen_stack:
            if isinstance(screen, ProcessScreen):
                screen.show()
        if isinstance(self.screen, HistoryScreen | GroupScreen):
            self.screen.draw()

    def visible_rows(self) -> list[TopRow]:
        """The processes shown: filtered, sorted, at most ``limit`` (0: all)."""
        rows = self.data.processes if self.data else []
        rows = sort_rows(filter_rows(rows, self.filter_text), self.sort_by, self.descending)
        return rows[: self.limit] if self.limit else rows


def run_top(reader: StoreReader, *, window_s: float, sort_by: str, limit: int, refresh_s: float) -> None:
    """Run the interactive view until the user quits."""
    TopApp(reader, window_s=window_s, sort_by=sort_by, limit=limit, refresh_s=refresh_s).run()
