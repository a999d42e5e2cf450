"""Package boundaries: memwatchctl stays light, and no module imports itself through a cycle."""

from __future__ import annotations

import ast
import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from memwatchd.config import StorageConfig
from memwatchd.models import BpfHealth, MemInfo, Snapshot
from memwatchd.store.writer import StoreWriter
from tests.factories import process_snapshot

PKG = Path(__file__).resolve().parent.parent / "memwatchd"
T0 = 1_700_000_000.0

# Run memwatchctl's real entry point in a fresh interpreter; at exit, print what got imported.
RUN_CTL = """
import atexit, json, sys
atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.stderr))
sys.argv = ["memwatchctl", *json.loads(sys.argv[1])]
from memwatchd.cli.main import main
main()
"""


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ctl") / "m.db"
    procs = (
        process_snapshot(pid=7, start_ticks=70, comm="w", rss_kb=1000, anon_kb=900, swap_kb=0, vm_kb=2000),
    )

    async def build() -> None:
        w = await StoreWriter.open(str(path), StorageConfig(path=str(path)))
        for i in range(3):
            await w.write(
                Snapshot(
                    ts=T0 + i,
                    mono=float(i),
                    processes=procs,
                    meminfo=MemInfo(8 << 20, 4 << 20, 0, 0),
                    bpf=BpfHealth("disabled: test"),
                )
            )
        await w.set_status(pid=1, bpf_state="disabled")
        await w.close()

    asyncio.run(build())
    return path


@pytest.mark.parametrize(
    "args",
    [
        ["status", "--json"],
        ["top", "--once", "--json"],
        ["history", "--pid", "7", "--since", "@1699999000", "--json"],
        ["processes", "--since", "@1699999000", "--json"],
        ["alerts", "--since", "@1699999000", "--json"],
        ["--help"],
    ],
    ids=lambda a: " ".join(a[:1]),
)
def test_memwatchctl_never_imports_aiosqlite_bcc_or_the_daemon(db: Path, args: list[str]) -> None:
    argv = ["--db", str(db), *args] if args != ["--help"] else args
    r = subprocess.run(
        [sys.executable, "-c", RUN_CTL, json.dumps(argv)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr[-2000:]
    modules = set(json.loads(r.stderr.strip().splitlines()[-1]))
    assert "memwatchd.cli.main" in modules, "the CLI ran"
    banned = sorted(
        m
        for m in modules
        if m in ("aiosqlite", "bcc") or m.startswith(("aiosqlite.", "bcc.", "memwatchd.daemon"))
    )
    assert banned == [], f"memwatchctl {' '.join(args)} imported {banned}"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level_imports(tree: ast.Module, modules: set[str]) -> set[str]:
    """memwatchd modules imported when this module is imported (not inside functions, not TYPE_CHECKING)."""
    out: set[str] = set()
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                todo += node.body
            todo += node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody
            for h in node.handlers:
                todo += h.body
        elif isinstance(node, ast.With):
            todo += node.body
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in modules:
                out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules}
    return out


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    return {
        name: _top_level_imports(ast.parse(path.read_text(), str(path)), set(files)) - {name}
        for name, path in files.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m) :] + [m]
            if m not in state and (c := visit(m)) is not None:
                return c
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)) is not None:
            return c
    return None


def test_no_import_cycle_inside_the_package() -> None:
    graph = import_graph()
    assert len(graph) > 40 and "memwatchd.alerts.engine" in graph["memwatchd.daemon.app"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    """The check itself: a graph with a cycle is caught."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_documents_cited_in_the_source_are_in_the_repository() -> None:
    """memwatch.bpf.c once cited PLATFORM.md, a document that is not in the repository."""
    root = PKG.parent
    cited: dict[str, list[str]] = {}
    for path in PKG.rglob("*"):
        if path.suffix in (".py", ".c", ".h"):
            for name in re.findall(r"[A-Za-z0-9_./-]+\.md\b", path.read_text()):
                cited.setdefault(name, []).append(str(path.relative_to(root)))
    missing = {
        name: files
        for name, files in cited.items()
        if not (root / name).exists() and not list(root.glob(f"**/{Path(name).name}"))
    }
    assert cited and not missing, missing
