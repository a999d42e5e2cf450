"""Groups and host accounting through the real daemon: real v1 cgroups, real processes, real tmpfs files,
a real webhook receiver on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from tests.e2e_workloads import SET_COMM
from tests.helpers import ctl_json, start_daemon, stop_daemon, wait_for, write_config
from tests.receivers import WebhookReceiver
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


GROWER = SET_COMM + textwrap.dedent(
    """
    import time
    keep = []
    print("ready", flush=True)
    sys.stdin.readline()                          # wait until the test says go
    end = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end:                 # 1 MB/s in 256 KB steps, every page touched
        keep.append(b"\\x01" * (256 * 1024))
        time.sleep(0.25)
    print("stopped", flush=True)
    sys.stdin.readline()
    """
)

SHM_WRITER = SET_COMM + textwrap.dedent(
    """
    import time
    path = sys.argv[2]
    print("ready", flush=True)
    sys.stdin.readline()
    end = time.monotonic() + float(sys.argv[3])
    with open(path, "wb") as f:                   # write(): the file grows, the writer's RSS does not
        while time.monotonic() < end:             # 4 MB/s into tmpfs
            f.write(b"\\x02" * (1024 * 1024))
            f.flush()
            time.sleep(0.25)
    print("stopped", flush=True)
    sys.stdin.readline()
    """
)
WINDOW, FOR, SLACK = 10.0, 2.0, 8.0


def _go(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        assert p.stdout and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin
        p.stdin.write("go\n")
        p.stdin.flush()


def _titles(hook: WebhookReceiver) -> list[str]:
    return [b["title"] for b in hook.bodies]


def test_cgroup_whose_two_members_grow_fires_one_cgroup_alert_naming_it_and_its_limit(tmp_path: Path) -> None:
    """Each member grows 1 MB/s, under the 1.5 MB/s rate; their cgroup grows 2 MB/s, over it."""
    with (
        v1_cgroup(f"memwatchd-test-i16-{os.getpid()}-grow", limit=512 * MB) as cg,
        WebhookReceiver() as hook,
    ):
        extra = (
            f'[notify]\nurls = ["{hook.url()}"]\nrepeat_interval = "1h"\ngroup_wait = "0s"\n'
            f'[[rules]]\nname = "cg-growth"\nkind = "growth"\nscope = "cgroup"\nmetric = "memory"\n'
            f'min_rate = "90MB/min"\nwindow = "{WINDOW:g}s"\nfor = "{FOR:g}s"\n'
            f'match = {{ cgroup = "/memwatchd-test-i16-*-grow" }}\n'
            f'[[rules]]\nname = "proc-growth"\nkind = "growth"\nmetric = "rss"\nmin_rate = "90MB/min"\n'
            f'window = "{WINDOW:g}s"\nfor = "{FOR:g}s"\nmatch = {{ comm = "cggrower" }}\n'
        )
        cfg = write_config(tmp_path, bpf=False, interval=INTERVAL, extra=extra)
        daemon = start_daemon(cfg)
        members = [spawn_in(cg, GROWER, "cggrower", "40") for _ in range(2)]
        try:
            wait_for(lambda: _started(tmp_path), 60, what="daemon start")
            time.sleep(2 * INTERVAL)  # the members' cgroup is read at their first sighting
            _go(members)
            budget = WINDOW + FOR + 2 * INTERVAL + SLACK
            fired = wait_for(lambda: [t for t in _titles(hook) if "FIRING" in t], budget, what="FIRING")
            time.sleep(3.0)  # both members keep growing: still one message
            titles = _titles(hook)
            assert [t for t in titles if "FIRING" in t] == fired and len(fired) == 1, titles
            assert f"FIRING cg-growth: cgroup /{cg.name}" in fired[0]
            assert not [t for t in titles if "proc-growth" in t]  # no single process grew fast enough
            body = hook.bodies[0]["message"]
            assert f"Group:    cgroup /{cg.name}" in body
            assert "Limit:    512M" in body and "reaches its limit (512M)" in body
            assert all(f"(pid {p.pid})" in body for p in members)  # its largest members
            assert f"memwatchctl history --cgroup /{cg.name}" in body
        finally:
            for p in members:
                p.kill()
                p.wait()
            assert stop_daemon(daemon) == 0


def test_a_growing_tmpfs_file_fires_a_host_shmem_alert_and_no_process_alert(tmp_path: Path) -> None:
    shm = Path("/dev/shm") / f"memwatchd-test-i16-{os.getpid()}"
    with WebhookReceiver() as hook:
        extra = (
            f'[notify]\nurls = ["{hook.url()}"]\nrepeat_interval = "1h"\ngroup_wait = "0s"\n'
            f'[[rules]]\nname = "shm-growth"\nkind = "growth"\nscope = "host"\nmetric = "shmem"\n'
            f'min_rate = "120MB/min"\nwindow = "{WINDOW:g}s"\nfor = "{FOR:g}s"\n'
            f'[[rules]]\nname = "proc-growth"\nkind = "growth"\nmetric = "rss"\nmin_rate = "120MB/min"\n'
            f'window = "{WINDOW:g}s"\nfor = "{FOR:g}s"\nmatch = {{ comm = "shmwriter" }}\n'
        )
        cfg = write_config(tmp_path, bpf=False, interval=INTERVAL, extra=extra)
        daemon = start_daemon(cfg)
        writer = subprocess.Popen(
            [sys.executable, "-c", SHM_WRITER, "shmwriter", str(shm), "30"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: _started(tmp_path), 60, what="daemon start")
            _go([writer])
            budget = WINDOW + FOR + 2 * INTERVAL + SLACK
            fired = wait_for(lambda: [t for t in _titles(hook) if "FIRING" in t], budget, what="FIRING")
            time.sleep(2.0)
            titles = _titles(hook)
            assert len(fired) == 1 and "FIRING shm-growth: host shmem" in fired[0], titles
            assert not [t for t in titles if "proc-growth" in t]  # the writer's own RSS stays flat
            body = hook.bodies[0]["message"]
            assert "Component: shmem: shared memory and tmpfs files" in body
            assert "memwatchctl history --host" in body
        finally:
            writer.kill()
            writer.wait()
            shm.unlink(missing_ok=True)
            assert stop_daemon(daemon) == 0
