"""SIGHUP reload, in-process: a real Daemon on a real SQLite file and the real /proc."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

import pytest

from memwatchd.config import load_config
from memwatchd.daemon.app import Daemon
from memwatchd.models import Snapshot
from tests.fixtures.fakeproc import FakeProc


def _config(tmp: Path, smaps: bool) -> Path:
    f = tmp / "memwatchd.toml"
    f.write_text(
        "[daemon]\ninterval = 1\n[bpf]\nenabled = false\n"
        f'[storage]\npath = "{tmp / "m.db"}"\n'
        f"[procfs]\nsmaps = {'true' if smaps else 'false'}\n"
    )
    return f


def _me(snap: Snapshot) -> tuple[int | None, int | None]:
    p = next(p for p in snap.processes if p.pid == os.getpid())
    return p.pss_kb, p.uss_kb


async def _reload(d: Daemon, path: Path) -> None:
    """SIGHUP, and wait until the reload (read and checked in a thread) is applied."""
    d.reload(str(path))
    assert d._reload_task is not None
    await d._reload_task


def test_reloading_procfs_smaps_takes_effect(tmp_path: Path) -> None:
    """Before the fix reload set an attribute the collector never read: PSS stayed None until a restart."""
    path = _config(tmp_path, smaps=False)

    async def go() -> None:
        d = Daemon(load_config(str(path)))
        await d.open()
        try:
            assert _me(await d.sample_once()) == (None, None)
            _config(tmp_path, smaps=True)
            await _reload(d, path)
            pss, uss = _me(await d.sample_once())
            assert pss is not None and pss > 0 and uss is not None and uss > 0, "smaps on after reload"
            _config(tmp_path, smaps=False)
            await _reload(d, path)
            assert _me(await d.sample_once()) == (None, None), "and off again"
        finally:
            await d.close()

    asyncio.run(go())


def test_a_failing_sampling_cycle_logs_one_traceback_then_one_line_each_then_recovery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: a full traceback every interval. The /proc root vanishes for real, then comes back."""
    root = tmp_path / "proc"
    FakeProc(root).add(100)
    f = tmp_path / "memwatchd.toml"
    f.write_text(
        "[daemon]\ninterval = 0.1\n[bpf]\nenabled = false\n[groups]\nenabled = false\n"
        f'[storage]\npath = "{tmp_path / "m.db"}"\n[procfs]\nroot = "{root}"\n'
    )
    caplog.set_level(logging.INFO, logger="memwatchd")

    async def go() -> None:
        d = Daemon(load_config(str(f)))
        await d.open()
        task = asyncio.create_task(d.sampler())
        try:
            await asyncio.sleep(0.3)
            shutil.rmtree(root)
            await asyncio.sleep(0.8)  # ~8 failing cycles
            FakeProc(root).add(100)
            await asyncio.sleep(0.4)
        finally:
            d.stop_event.set()
            await task
            await d.close()

    asyncio.run(go())
    failed = [r for r in caplog.records if "sampling cycle failed" in r.getMessage()]
    assert len(failed) >= 3
    assert [r.exc_info is not None for r in failed] == [True] + [False] * (len(failed) - 1)
    assert all("\n" not in r.getMessage() for r in failed)
    assert any("sampling cycle works again" in r.getMessage() for r in caplog.records)


def test_a_failing_status_write_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before: logged at debug level only. A real SQLite error: the connection turned query-only."""
    path = _config(tmp_path, smaps=False)

    async def go() -> None:
        d = Daemon(load_config(str(path)))
        await d.open()
        try:
            snap = await d.sample_once()
            assert d.store is not None
            await d.store._db.execute("PRAGMA query_only = 1")
            await d._write_status(snap)
            await d._write_status(snap)
            await d.store._db.execute("PRAGMA query_only = 0")
            await d._write_status(snap)
        finally:
            await d.close()

    caplog.set_level(logging.INFO, logger="memwatchd")
    asyncio.run(go())
    warned = [r for r in caplog.records if "status" in r.getMessage() and r.levelno == logging.WARNING]
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]
    assert any("status updates work again" in r.getMessage() for r in caplog.records)
