"""Memory cgroup headroom for forecasts: fake v1/v2 trees and a real v1 cgroup."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memwatchd.alerts.engine import Transition
from memwatchd.collectors.cgroupfs import headroom
from memwatchd.daemon.app import with_limit_forecast
from memwatchd.models import AlertRecord, BpfHealth, Snapshot
from memwatchd.notify.render import render
from tests.factories import process_snapshot

MB = 1024 * 1024


def _write(p: Path, text: str) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_v1_tightest_level_wins(tmp_path: Path) -> None:
    _write(tmp_path / "memory/system.slice/memory.limit_in_bytes", str(1 << 63))  # unlimited
    _write(tmp_path / "memory/system.slice/api.service/memory.limit_in_bytes", str(512 * MB))
    _write(tmp_path / "memory/system.slice/api.service/memory.usage_in_bytes", str(500 * MB))
    h = headroom("/system.slice/api.service", str(tmp_path))
    assert h is not None and h.cgroup == "/system.slice/api.service" and h.free_bytes == 12 * MB


def test_v2_parent_limit_can_be_tighter(tmp_path: Path) -> None:
    _write(tmp_path / "user.slice/memory.max", str(1024 * MB))
    _write(tmp_path / "user.slice/memory.current", str(1000 * MB))
    _write(tmp_path / "user.slice/app.scope/memory.max", "max")
    _write(tmp_path / "user.slice/app.scope/memory.current", str(10 * MB))
    h = headroom("/user.slice/app.scope", str(tmp_path))
    assert h is not None and h.cgroup == "/user.slice" and h.free_bytes == 24 * MB


@pytest.mark.parametrize("cg", [None, "", "/", "/../etc", "/nope/none"])
def test_unknown_or_hostile_paths_give_none(tmp_path: Path, cg: str | None) -> None:
    assert headroom(cg, str(tmp_path)) is None


def _snap(cgroup: str) -> Snapshot:
    p = process_snapshot(
        pid=42, start_ticks=7, comm="api", unit="api.service", cgroup=cgroup, rss_kb=400 * 1024
    )
    return Snapshot(ts=1000.0, mono=5.0, processes=(p,), meminfo=None, bpf=BpfHealth(state="disabled"))


def test_forecast_reaches_the_message(tmp_path: Path) -> None:
    _write(tmp_path / "memory/api/memory.limit_in_bytes", str(512 * MB))
    _write(tmp_path / "memory/api/memory.usage_in_bytes", str(452 * MB))
    rec = AlertRecord(
        rule="g",
        kind="growth",
        pid=42,
        start_ticks=7,
        comm="api",
        unit="api.service",
        state="firing",
        since=900.0,
        fired_at=1000.0,
        value=400 * MB,
        rate=1.0 * MB / 60,
    )
    t = with_limit_forecast(Transition(record=rec, reason="firing", at=1000.0), _snap("/api"), str(tmp_path))
    assert t.limit_cgroup == "/api" and t.limit_forecast_s == pytest.approx(3600.0)
    (msg,) = render([t], "host-a", ("json://127.0.0.1:9/",))
    assert "cgroup /api reaches its limit (512M) in ~1h00m at this rate" in msg.body


def test_real_v1_cgroup_headroom() -> None:
    root = Path("/sys/fs/cgroup/memory")
    if os.geteuid() != 0 or not (root / "memory.limit_in_bytes").exists():
        pytest.skip("needs root and the cgroup v1 memory controller")
    cg = root / f"memwatchd-cg-test-{os.getpid()}"
    cg.mkdir()
    child = None
    try:
        (cg / "memory.limit_in_bytes").write_text(str(256 * MB))
        child = subprocess.Popen(
            [sys.executable, "-c", "x = b'1' * (32 << 20); import time; time.sleep(60)"],
            preexec_fn=lambda: (cg / "cgroup.procs").write_text(str(os.getpid())),  # noqa: PLW1509
        )
        time.sleep(1.0)
        h = headroom(f"/{cg.name}")
        assert h is not None and h.limit_bytes == 256 * MB
        assert 20 * MB < h.usage_bytes < 200 * MB
    finally:
        if child is not None:
            child.kill()
            child.wait()
        for _ in range(50):
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.1)
