"""SIGHUP reload, in-process: a real Daemon on a real SQLite file and the real /proc."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from memwatchd.config import load_config
from memwatchd.daemon.app import Daemon
from memwatchd.models import Snapshot


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


def test_reloading_procfs_smaps_takes_effect(tmp_path: Path) -> None:
    """Before the fix reload set an attribute the collector never read: PSS stayed None until a restart."""
    path = _config(tmp_path, smaps=False)

    async def go() -> None:
        d = Daemon(load_config(str(path)))
        await d.open()
        try:
            assert _me(await d.sample_once()) == (None, None)
            _config(tmp_path, smaps=True)
            d.reload(str(path))
            pss, uss = _me(await d.sample_once())
            assert pss is not None and pss > 0 and uss is not None and uss > 0, "smaps on after reload"
            _config(tmp_path, smaps=False)
            d.reload(str(path))
            assert _me(await d.sample_once()) == (None, None), "and off again"
        finally:
            await d.close()

    asyncio.run(go())
