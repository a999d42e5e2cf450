"""Groups and host accounting through the real daemon: real v1 cgroups, real processes, real tmpfs files,
a real webhook receiver on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from tests.helpers import ctl_json, start_daemon, stop_daemon, wait_for, write_config
from tests.test_groups import HOLD, MB, spawn_in, v1_cgroup

INTERVAL = 0.5


def _started(tmp: Path) -> bool:
    return "memwatchd started" in (tmp / "daemon.log").read_text()


def test_groups_json_lists_the_cgroup_with_both_members_and_its_charge(tmp_path: Path) -> None:
    with v1_cgroup(f"memwatchd-test-i16-{os.getpid()}-groups", limit=512 * MB) as cg:
        cfg = write_config(tmp_path, bpf=False, interval=INTERVAL)
        db = tmp_path / "db" / "memwatchd.db"
        members: list[subprocess.Popen[str]] = []
        daemon = start_daemon(cfg)
        try:
            for _ in range(2):
                p = spawn_in(cg, HOLD)
                members.append(p)
                assert p.stdout and p.stdout.readline().strip() == "ready"
            wait_for(lambda: _started(tmp_path), 60, what="daemon start")
            path = f"/{cg.name}"

            def row() -> Any:
                rows = ctl_json(db, "groups") or []
                r = next((r for r in rows if r["group"] == path), None)
                return r if r is not None and r["processes"] == 2 else None

            r = wait_for(row, 30, what="the cgroup in groups --json")
            assert r["by"] == "cgroup"
            assert sorted(m["pid"] for m in r["members"]) == sorted(p.pid for p in members)
            assert r["memory_limit_kb"] == 512 * 1024
            assert r["memory_current_kb"] >= 48 * 1024  # both members' 24 MB are charged to it
            assert r["rss_kb"] >= 48 * 1024 and r["anon_kb"] >= 48 * 1024
            assert set(r) >= {
                "group", "by", "processes", "rss_kb", "anon_kb", "swap_kb", "memory_current_kb",
                "memory_limit_kb", "growth_kb_per_h",
            }  # fmt: skip
            hist = ctl_json(db, "history", "--cgroup", path, "--since", "5m")
            assert hist and hist[-1]["memory_current_kb"] >= 48 * 1024 and hist[-1]["processes"] == 2
            st = ctl_json(db, "status")
            assert st["host_memory"]["total_kb"] > 0 and "unaccounted_kb" in st["host_memory"]
            assert ctl_json(db, "history", "--host", "--since", "5m")
        finally:
            for p in members:
                p.kill()
                p.wait()
            assert stop_daemon(daemon) == 0
