"""Groups and host accounting: cgroup charges (v2 fixture tree, real v1 cgroups), the pure aggregation and
host breakdown, and the series in a real store file."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memwatchd.collectors.cgroupfs import ChargeReader
from memwatchd.collectors.procfs import read_meminfo
from memwatchd.config import StorageConfig
from memwatchd.groups import aggregate_groups, charge_paths, host_memory, unit_cgroup
from memwatchd.models import BpfHealth, GroupCharge, MemInfo, Snapshot
from memwatchd.store.reader import StoreReader
from memwatchd.store.writer import StoreWriter
from tests.factories import process_snapshot

MB = 1024 * 1024
V1 = Path("/sys/fs/cgroup/memory")


def _write(p: Path, text: str) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


# ---- cgroupfs: v2 with a fixture tree ------------------------------------------------------------------


def v2_tree(root: Path) -> None:
    _write(root / "cgroup.controllers", "cpuset cpu io memory pids\n")
    _write(root / "system.slice/memory.max", "max\n")
    _write(root / "system.slice/memory.current", str(900 * MB))
    _write(root / "system.slice/api.service/memory.max", str(512 * MB))
    _write(root / "system.slice/api.service/memory.current", str(300 * MB))
    _write(root / "system.slice/api.service/worker/memory.max", "max\n")
    _write(root / "system.slice/api.service/worker/memory.current", str(200 * MB))
    _write(root / "user.slice/memory.max", str(1024 * MB))
    _write(root / "user.slice/memory.current", str(1000 * MB))
    _write(root / "user.slice/app.scope/memory.max", str(2048 * MB))
    _write(root / "user.slice/app.scope/memory.current", str(10 * MB))


def test_v2_charge_current_and_tightest_ancestor_limit(tmp_path: Path) -> None:
    v2_tree(tmp_path)
    r = ChargeReader(str(tmp_path))
    assert r.version == 2
    got = r.read(["/system.slice/api.service/worker", "/user.slice/app.scope", "/system.slice", "/"])
    w = got["/system.slice/api.service/worker"]
    assert w.current_bytes == 200 * MB
    assert (w.limit_bytes, w.limit_cgroup, w.free_bytes) == (512 * MB, "/system.slice/api.service", 212 * MB)
    a = got["/user.slice/app.scope"]  # its own limit is looser than its parent's; the parent is nearly full
    assert (a.current_bytes, a.limit_bytes, a.limit_cgroup, a.free_bytes) == (
        10 * MB,
        1024 * MB,
        "/user.slice",
        24 * MB,
    )
    s = got["/system.slice"]
    assert (s.current_bytes, s.limit_bytes, s.free_bytes) == (900 * MB, None, None)
    assert got["/"].current_bytes is None  # the v2 root has no memory.current


def test_v2_vanished_cgroup_and_hostile_paths_degrade(tmp_path: Path) -> None:
    v2_tree(tmp_path)
    got = ChargeReader(str(tmp_path)).read(["/gone.scope", "/../etc", ""])
    assert set(got) == {"/gone.scope"}
    assert got["/gone.scope"].current_bytes is None


def test_no_memory_controller_gives_no_charges(tmp_path: Path) -> None:
    _write(tmp_path / "cgroup.controllers", "cpu pids\n")
    r = ChargeReader(str(tmp_path))
    assert r.version is None and r.read(["/a"]) == {}


# ---- cgroupfs: real cgroups v1 -------------------------------------------------------------------------


def _v1_or_skip() -> Path:
    if os.geteuid() != 0 or not (V1 / "memory.limit_in_bytes").exists():
        pytest.skip("needs root and the cgroup v1 memory controller")
    return V1


def _rmdir(cg: Path) -> None:
    for _ in range(100):
        try:
            cg.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)


@contextlib.contextmanager
def v1_cgroup(name: str, limit: int | None = None, parent: Path | None = None) -> Iterator[Path]:
    """A real v1 memory cgroup (memwatchd-test-i16-*), removed afterwards."""
    base = parent or _v1_or_skip()
    cg = base / name
    cg.mkdir()
    try:
        if limit is not None:
            (cg / "memory.limit_in_bytes").write_text(str(limit))
        yield cg
    finally:
        _rmdir(cg)


def spawn_in(cg: Path, code: str, *args: str) -> subprocess.Popen[str]:
    """A real python process started inside the cgroup (it joins before exec)."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: (cg / "cgroup.procs").write_text(str(os.getpid())),  # noqa: PLW1509
    )


HOLD = "import sys; x = b'1' * (24 << 20); print('ready', flush=True); sys.stdin.readline()"


def test_v1_real_cgroup_charge_and_parent_limit() -> None:
    with (
        v1_cgroup(f"memwatchd-test-i16-{os.getpid()}", limit=256 * MB) as parent,
        v1_cgroup("child", parent=parent) as child,
    ):
        p = spawn_in(child, HOLD)
        try:
            assert p.stdout and p.stdout.readline().strip() == "ready"
            rel = f"/{parent.name}/child"
            r = ChargeReader()
            assert r.version == 1
            c = r.read([rel])[rel]
            assert c.current_bytes is not None and 20 * MB < c.current_bytes < 200 * MB
            assert (c.limit_bytes, c.limit_cgroup) == (256 * MB, f"/{parent.name}")
            assert c.free_bytes is not None and c.free_bytes < 256 * MB - 20 * MB
        finally:
            p.kill()
            p.wait()


# ---- pure aggregation and host breakdown ---------------------------------------------------------------


def _proc(pid: int, cgroup: str | None, unit: str | None, rss: int, anon: int, swap: int = 0) -> object:
    return process_snapshot(
        pid=pid,
        start_ticks=pid * 10,
        comm=f"p{pid}",
        cgroup=cgroup,
        unit=unit,
        rss_kb=rss,
        anon_kb=anon,
        swap_kb=swap,
        vm_kb=rss * 4,
    )


def test_unit_cgroup_is_the_prefix_ending_at_the_unit() -> None:
    assert unit_cgroup("/system.slice/api.service/worker", "api.service") == "/system.slice/api.service"
    assert unit_cgroup("/system.slice/_x.service", "x.service") == "/system.slice/_x.service"
    assert unit_cgroup("/docker/abc", "api.service") is None
    assert unit_cgroup(None, "a.service") is None


def test_aggregate_sums_members_per_cgroup_and_per_unit() -> None:
    procs = [
        _proc(1, "/system.slice/api.service", "api.service", 100, 60, 5),
        _proc(2, "/system.slice/api.service/worker", "api.service", 300, 200),
        _proc(3, "/system.slice/api.service/worker", "api.service", 50, 40, 1),
        _proc(4, "/user.slice/app.scope", "app.scope", 10, 5),
        process_snapshot(pid=5, comm="kthreadd", cgroup="/", rss_kb=0, vm_kb=0),  # kernel thread: no group
    ]
    charges = {
        "/system.slice/api.service/worker": GroupCharge(
            "/system.slice/api.service/worker", 400 * 1024, 512 * MB, "/system.slice/api.service", 1000 * 1024
        ),
        "/system.slice/api.service": GroupCharge("/system.slice/api.service", 600 * 1024, 512 * MB, None, 0),
    }
    assert charge_paths((p.cgroup, p.unit) for p in procs) == {  # type: ignore[attr-defined]
        "/system.slice/api.service",
        "/system.slice/api.service/worker",
        "/user.slice/app.scope",
        "/",
    }
    gs = {(g.by, g.group): g for g in aggregate_groups(procs, charges)}  # type: ignore[arg-type]
    assert set(gs) == {
        ("cgroup", "/system.slice/api.service"),
        ("cgroup", "/system.slice/api.service/worker"),
        ("cgroup", "/user.slice/app.scope"),
        ("unit", "api.service"),
        ("unit", "app.scope"),
    }
    w = gs[("cgroup", "/system.slice/api.service/worker")]
    assert (w.processes, w.rss_kb, w.anon_kb, w.swap_kb) == (2, 350, 240, 1)
    assert (w.memory_current_kb, w.memory_limit_kb, w.limit_cgroup) == (
        400,
        512 * 1024,
        "/system.slice/api.service",
    )
    assert w.unit == "api.service" and [m.pid for m in w.largest] == [2, 3]
    u = gs[("unit", "api.service")]
    assert (u.processes, u.rss_kb, u.anon_kb, u.swap_kb) == (3, 450, 300, 6)
    assert u.cgroup == "/system.slice/api.service" and u.memory_current_kb == 600
    a = gs[("cgroup", "/user.slice/app.scope")]
    assert a.memory_current_kb is None and a.memory_limit_kb is None  # no charge read: unknown, not zero


def test_host_breakdown_formula() -> None:
    mi = MemInfo(
        mem_total_kb=16_000_000,
        mem_available_kb=9_000_000,
        swap_total_kb=0,
        swap_free_kb=0,
        mem_free_kb=6_000_000,
        buffers_kb=100_000,
        cached_kb=3_000_000,
        shmem_kb=500_000,
        anon_pages_kb=2_000_000,
        slab_reclaimable_kb=400_000,
        slab_unreclaimable_kb=200_000,
        kernel_stack_kb=20_000,
        page_tables_kb=80_000,
    )
    procs = [_proc(1, "/a", None, 1_500_000, 1_200_000), _proc(2, "/a", None, 1_500_000, 1_300_000)]
    h = host_memory(mi, procs)  # type: ignore[arg-type]
    assert h is not None
    # anon: the processes' 2.5 GB sum is capped by the kernel's AnonPages (2 GB: shared COW pages)
    used = 16_000_000 - 6_000_000
    named = 2_000_000 + (3_000_000 + 100_000 - 500_000) + 500_000 + 400_000 + 200_000 + 20_000 + 80_000
    assert h.unaccounted_kb == used - named == 4_200_000
    assert (h.processes_rss_kb, h.processes_anon_kb, h.page_cache_kb) == (3_000_000, 2_500_000, 2_600_000)
    assert host_memory(MemInfo(1, 1, 0, 0), procs) is None  # a kernel without the parts: no breakdown


def test_host_breakdown_from_this_hosts_meminfo() -> None:
    mi = read_meminfo("/proc")
    assert mi is not None and mi.shmem_kb is not None and mi.slab_unreclaimable_kb is not None
    h = host_memory(mi, [])
    assert h is not None and h.total_kb == mi.mem_total_kb and h.shmem_kb == mi.shmem_kb
    assert 0 <= h.unaccounted_kb <= h.total_kb


# ---- the store: group and host series through compaction -----------------------------------------------


def _snap(i: int, t0: float, procs: list[object], charge_kb: int) -> Snapshot:
    charges = {"/svc": GroupCharge("/svc", charge_kb * 1024, 64 * MB, "/svc", 64 * MB - charge_kb * 1024)}
    mi = MemInfo(
        1_000_000, 500_000, 0, 0, 400_000, 10_000, 200_000, 1000 + i, 50_000, 30_000, 20_000, 5_000, 7_000
    )
    return Snapshot(
        ts=t0 + i * 3.0,
        mono=i * 3.0,
        processes=tuple(procs),  # type: ignore[arg-type]
        meminfo=mi,
        bpf=BpfHealth("disabled"),
        groups=aggregate_groups(procs, charges),  # type: ignore[arg-type]
        host=host_memory(mi, procs),  # type: ignore[arg-type]
    )


def test_series_are_stored_change_only_and_survive_compaction(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    t0 = 1_700_000_000.0 - (1_700_000_000.0 % 3600) + 1800  # half an hour into an hour

    async def run() -> None:
        w = await StoreWriter.open(db, StorageConfig())
        for i in range(1200):  # one hour at 3 s: crosses a period boundary, compacts
            procs = [
                _proc(100, "/svc", "svc.service", 1000 + (i // 100), 500),
                _proc(101, "/svc", "svc.service", 2000, 900),
            ]
            await w.write(_snap(i, t0, procs, 10_000 + i // 10))
        await w.compact(await w._scalar("SELECT max(id) FROM snapshots WHERE kf = 1") - 1)
        await w.close()

    asyncio.run(run())
    with StoreReader(db) as r:
        heads = r.db.execute("SELECT count(*) FROM series_head").fetchone()[0]
        chunks = r.db.execute("SELECT count(*) FROM series_chunks").fetchone()[0]
        assert chunks > 0
        # change-only: the cgroup changes every 10 snapshots, not every one
        rows = r.series_history("cgroup", "/svc", t0, t0 + 3600, tier=0)
        assert 115 <= len(rows) <= 125, (len(rows), heads)
        assert rows[0]["memory_current_kb"] == 10_000 and rows[-1]["memory_current_kb"] == 10_119
        assert rows[-1]["processes"] == 2 and rows[-1]["memory_limit_kb"] == 64 * 1024
        assert rows[-1]["rss_kb"] == 1011 + 2000
        minutes = r.series_history("cgroup", "/svc", t0, t0 + 3600, tier=1)
        assert 59 <= len(minutes) <= 61 and minutes[-1]["memory_current_kb"] == 10_119
        host = r.series_history("host", "host", t0, t0 + 3600, tier=0)
        assert host[-1]["shmem_kb"] == 1000 + 1199
        unit = r.series_history("unit", "svc.service", t0, t0 + 3600, tier=2)
        assert unit and unit[-1]["rss_kb"] == 3011
        st = r.status()
        assert st["host_memory"]["shmem_kb"] == 2199 and st["host_memory"]["total_kb"] == 1_000_000


# ---- rules of scope cgroup and host (pure engine and messages) ------------------------------------------


def _cfg(extra: str) -> Any:
    from memwatchd.config import parse_config

    return parse_config(tomllib.loads(extra), "t.toml")


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ('scope = "cgroup"\nkind = "leak"', "rules[0].kind: scope 'cgroup' takes kind growth or threshold"),
        ('scope = "host"\nkind = "growth"\nmin_rate = "1MB/h"', "rules[0].metric: required for scope 'host'"),
        (
            'scope = "host"\nkind = "threshold"\nmetric = "rss"\nthreshold = "1GB"',
            "rules[0].metric: expected one of",
        ),
        ('scope = "cgroup"\nkind = "threshold"\nmetric = "mapped"\nthreshold = "1GB"', "rules[0].metric"),
        ('scope = "galaxy"\nkind = "growth"', "rules[0].scope: expected one of process, cgroup, host"),
        (
            'scope = "host"\nkind = "threshold"\nmetric = "shmem"\nthreshold = "1GB"\nmatch = { unit = "x" }',
            "rules[0].match: scope 'host' watches the whole host",
        ),
        (
            'scope = "cgroup"\nkind = "threshold"\nthreshold = "1GB"\nmatch = { comm = "x" }',
            "rules[0].match.comm: unknown key",
        ),
        (
            'kind = "threshold"\nthreshold = "1GB"\nmatch = { cgroup = "/x" }',
            "rules[0].match.cgroup: unknown key",
        ),
    ],
)
def test_scope_config_is_validated(rule: str, problem: str) -> None:
    from memwatchd.config import ConfigError

    with pytest.raises(ConfigError) as e:
        _cfg(f'[[rules]]\nname = "r"\n{rule}\n')
    assert str(e.value).startswith(f"t.toml: {problem}"), str(e.value)


def test_scope_defaults() -> None:
    c = _cfg(
        '[[rules]]\nname = "a"\nkind = "growth"\nmin_rate = "1MB/h"\n'
        '[[rules]]\nname = "b"\nkind = "growth"\nscope = "cgroup"\nmin_rate = "1MB/h"\n'
        'match = { cgroup = "/system.slice/*", unit = "api*" }\n'
    )
    a, b = c.rules
    assert (a.scope, a.metric) == ("process", "rss")
    assert (b.scope, b.metric, b.match.cgroup, b.match.unit) == (
        "cgroup",
        "memory",
        "/system.slice/*",
        "api*",
    )
    assert b.match.matches_group("/system.slice/api.service", "api.service")
    assert not b.match.matches_group("/user.slice/api.service", "api.service")


def _host_snap(mono: float, available_kb: int, shmem_kb: int = 1000) -> Snapshot:
    from memwatchd.models import HostMemory

    h = HostMemory(8_000_000, available_kb, 1, 1, 1, shmem_kb, 1, 1, 1, 1, 1)
    return Snapshot(ts=1e9 + mono, mono=mono, processes=(), meminfo=None, bpf=BpfHealth("x"), host=h)


def test_available_threshold_fires_below_and_clears_above_with_hysteresis() -> None:
    from memwatchd.alerts.scopes import ScopeEngine
    from memwatchd.notify.render_scopes import render_scoped

    (rule,) = _cfg(
        '[[rules]]\nname = "low"\nkind = "threshold"\nscope = "host"\nmetric = "available"\n'
        'threshold = "1GB"\nfor = "2s"\n'
    ).rules
    eng = ScopeEngine([rule], [], 3600.0)
    gb = 1024 * 1024
    states = []
    for i, avail in enumerate([2 * gb, gb // 2, gb // 2, gb // 2, gb + gb // 20, 2 * gb, 2 * gb, 2 * gb]):
        _, due = eng.observe(_host_snap(i * 1.0, avail))
        states += [(i, t.reason) for t in due]
    # below from t=1, held 2 s: fires at t=3; 1.05 GB is above the threshold but inside the hysteresis
    # band (clears above 1 GB / 0.9); clear from t=5, held 2 s: resolves at t=7
    assert states == [(3, "firing"), (7, "resolved")]
    _, due = ScopeEngine([rule], [], 3600.0).observe(_host_snap(0, gb // 2))
    assert due == []  # `for` holds
    eng2 = ScopeEngine([rule], [], 3600.0)
    eng2.observe(_host_snap(0, gb // 2))
    _, due = eng2.observe(_host_snap(3, gb // 2))
    (msg,) = render_scoped(due, "h", ("json://127.0.0.1:9/",))
    assert msg.title == "[memwatchd] FIRING low: host available available 512M ≤ 1.0G on h"
    assert "Component: available: host MemAvailable" in msg.body


def test_restored_firing_cgroup_episode_is_not_resent() -> None:
    from memwatchd.alerts.scopes import ScopeEngine, group_number
    from memwatchd.models import AlertRecord

    (rule,) = _cfg('[[rules]]\nname = "big"\nkind = "threshold"\nscope = "cgroup"\nthreshold = "1MB"\n').rules
    rec = AlertRecord(
        rule="big",
        kind="threshold",
        pid=0,
        start_ticks=group_number("/svc"),
        comm="/svc",
        unit=None,
        state="firing",
        since=1e9,
        fired_at=1e9,
        notified_state="firing",
        notified_at=1e9,
    )
    procs = [_proc(100, "/svc", None, 5000, 4000)]
    charges = {"/svc": GroupCharge("/svc", 8 * MB, None, None, None)}
    snap = Snapshot(
        ts=1e9 + 10,
        mono=10.0,
        processes=tuple(procs),  # type: ignore[arg-type]
        meminfo=None,
        bpf=BpfHealth("x"),
        groups=aggregate_groups(procs, charges),  # type: ignore[arg-type]
    )
    eng = ScopeEngine([rule], [rec], 3600.0)
    changed, due = eng.observe(snap)
    assert due == [] and changed == []


def test_a_unit_that_is_its_own_cgroup_is_stored_once_and_read_back_whole(tmp_path: Path) -> None:
    """One cgroup per service (the usual systemd layout): the unit's series costs nothing per change."""
    db = str(tmp_path / "a.db")
    t0 = 1_700_000_000.0

    async def run() -> None:
        w = await StoreWriter.open(db, StorageConfig())
        for i in range(60):
            procs = [_proc(7, "/system.slice/api.service", "api.service", 1000 + i, 500)]
            await w.write(_snap(i, t0, procs, 10_000))
        # from now on the unit spans a second cgroup: no longer an alias
        for i in range(60, 70):
            procs = [
                _proc(7, "/system.slice/api.service", "api.service", 1000 + i, 500),
                _proc(8, "/system.slice/api.service/extra", "api.service", 50, 10),
            ]
            await w.write(_snap(i, t0, procs, 10_000))
        await w.close()

    asyncio.run(run())
    with StoreReader(db) as r:
        (uid,) = r.db.execute("SELECT id FROM series WHERE kind = 'unit'").fetchone()
        # 60 alias snapshots: one marker row; then 10 changing snapshots of its own
        assert r.db.execute("SELECT count(*) FROM series_head WHERE series = ?", (uid,)).fetchone()[0] == 11
        rows = r.series_history("unit", "api.service", t0, t0 + 300, tier=0)
        assert [x["rss_kb"] for x in rows] == [
            *range(1000, 1070 - 10),
            *(1000 + i + 50 for i in range(60, 70)),
        ]
        assert rows[0]["processes"] == 1 and rows[-1]["processes"] == 2
        (g,) = r.groups("unit", 60)
        assert g["group"] == "api.service" and g["rss_kb"] == 1069 + 50 and g["processes"] == 2


# ---- OOM kills: cgroup-local or host-wide --------------------------------------------------------------


def test_oom_scope_v2_fixture_counts_only_memcg_ooms(tmp_path: Path) -> None:
    from memwatchd.collectors.cgroupfs import oom_scope

    v2_tree(tmp_path)
    ev = "low 0\nhigh 0\nmax 12\noom {n}\noom_kill {k}\n"
    _write(tmp_path / "system.slice/api.service/memory.events", ev.format(n=0, k=1))
    _write(tmp_path / "system.slice/api.service/worker/memory.events", ev.format(n=0, k=1))
    s = oom_scope("/system.slice/api.service/worker", str(tmp_path))
    assert not s.local and s.describe().startswith("host-wide: ")  # oom_kill alone: a host-wide victim
    _write(tmp_path / "system.slice/api.service/memory.events", ev.format(n=1, k=1))
    s = oom_scope("/system.slice/api.service/worker", str(tmp_path))
    assert (s.local, s.cgroup, s.limit_bytes) == (True, "/system.slice/api.service", 512 * MB)
    assert s.describe() == "cgroup-local: cgroup /system.slice/api.service reached its limit (512M)"
    assert oom_scope(None, str(tmp_path)).describe().startswith("unknown: ")


def test_oom_scope_of_a_real_v1_kill_is_cgroup_local_and_names_the_limit() -> None:
    from memwatchd.collectors.cgroupfs import oom_scope

    with v1_cgroup(f"memwatchd-test-i16-{os.getpid()}-oom", limit=32 * MB) as cg:
        if (cg / "memory.memsw.limit_in_bytes").exists():
            (cg / "memory.memsw.limit_in_bytes").write_text(str(32 * MB))
        (cg / "memory.swappiness").write_text("0")
        victim = spawn_in(cg, "keep = []\nwhile True: keep.append(b'1' * (2 << 20))")
        assert victim.wait(timeout=60) == -9  # the kernel's OOM killer, inside the cgroup
        s = oom_scope(f"/{cg.name}")
        assert s.describe() == f"cgroup-local: cgroup /{cg.name} reached its limit (32M)"
    with v1_cgroup(f"memwatchd-test-i16-{os.getpid()}-nolimit") as cg2:
        assert oom_scope(f"/{cg2.name}").describe().startswith("host-wide: ")


def test_oom_message_says_the_scope() -> None:
    from memwatchd.alerts.engine import Transition
    from memwatchd.models import AlertRecord
    from memwatchd.notify.render import render

    rec = AlertRecord("oom", "oom", 42, 7, "victim", None, "resolved", 1e9, 1e9, 1e9, value=30.0 * MB)
    t = Transition(rec, "firing", at=1e9, oom_scope="cgroup-local: cgroup /x reached its limit (32M)")
    (msg,) = render([t], "h", ("json://127.0.0.1:9/",))
    assert "\nScope:    cgroup-local: cgroup /x reached its limit (32M)\n" in msg.body


# ---- Prometheus: per-cgroup gauges with bounded cardinality, host breakdown gauges ---------------------


def test_prometheus_cgroup_gauges_are_bounded_and_host_parts_exported() -> None:
    from memwatchd.config import PrometheusConfig
    from memwatchd.daemon.metrics import MetricsServer
    from tests.test_metrics import scrape, snapshot

    procs = [_proc(100 + i, f"/ns/c{i:03d}", None, 1000 * (i + 1), 500) for i in range(80)]
    charges = {
        f"/ns/c{i:03d}": GroupCharge(
            f"/ns/c{i:03d}", 2000 * (i + 1) * 1024, 64 * MB if i == 79 else None, None, None
        )
        for i in range(80)
    }
    mi = read_meminfo("/proc")
    snap = snapshot(
        procs,  # type: ignore[arg-type]
        meminfo=mi,
        groups=aggregate_groups(procs, charges),  # type: ignore[arg-type]
        host=host_memory(mi, procs),  # type: ignore[arg-type]
    )
    server = MetricsServer(PrometheusConfig(listen="127.0.0.1:0", top_cgroups=10))
    server.start()
    try:
        server.update(snap)
        fams = scrape(server)
    finally:
        server.stop()
    mem = {s.labels["cgroup"]: s.value for s in fams["memwatchd_cgroup_memory_bytes"].samples}
    assert len(mem) == 11 and "other" in mem  # the 10 largest charges, the other 70 folded
    assert mem["/ns/c079"] == 2000 * 80 * 1024.0  # the charge, in bytes
    assert mem["other"] == sum(2000 * (i + 1) for i in range(70)) * 1024.0
    limits = {s.labels["cgroup"]: s.value for s in fams["memwatchd_cgroup_memory_limit_bytes"].samples}
    assert limits == {"/ns/c079": 64.0 * MB}  # unlimited cgroups have no limit series
    parts = {s.labels["part"]: s.value for s in fams["memwatchd_host_memory_bytes"].samples}
    assert set(parts) == {
        "total", "available", "processes_rss", "processes_anon", "page_cache", "shmem",
        "slab_reclaimable", "slab_unreclaimable", "kernel_stack", "page_tables", "unaccounted",
    }  # fmt: skip
    assert mi is not None and parts["shmem"] == mi.shmem_kb * 1024.0  # type: ignore[operator]


# ---- the live view's group screen ----------------------------------------------------------------------


def test_live_top_c_switches_to_the_group_view_and_back(tmp_path: Path) -> None:
    from memwatchd.cli.tui import GroupScreen, ProcessScreen, TopApp
    from tests.test_tui import SIZE

    db = str(tmp_path / "t.db")
    t0 = 1_700_000_000.0

    async def write() -> None:
        w = await StoreWriter.open(db, StorageConfig())
        for i in range(5):
            procs = [
                _proc(7, "/system.slice/api.service", "api.service", 1000 + i, 500),
                _proc(8, "/batch", None, 9000, 100),
            ]
            await w.write(_snap(i, t0, procs, 10_000))
        await w.close()

    asyncio.run(write())

    async def go() -> None:
        with StoreReader(db) as reader:
            app = TopApp(reader)
            async with app.run_test(size=SIZE) as pilot:
                await pilot.pause()
                await pilot.press("c")
                await pilot.pause()
                screen = app.screen
                assert isinstance(screen, GroupScreen)
                table = screen.query_one("#groups")
                rows = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
                # _snap charges only /svc: both groups here fall back to their RSS sum for the order
                assert [r[0] for r in rows] == ["/batch", "/system.slice/api.service"]
                assert rows[1][1] == "api.service" and rows[1][2] == "1"
                await pilot.press("b")
                await pilot.pause()
                table = screen.query_one("#groups")
                assert [str(table.get_row_at(i)[0]) for i in range(table.row_count)] == ["api.service"]
                await pilot.press("escape")
                await pilot.pause()
                assert isinstance(app.screen, ProcessScreen)

    asyncio.run(go())


def test_retention_prunes_series_chunks_per_tier(tmp_path: Path) -> None:
    db = str(tmp_path / "r.db")
    t0 = 1_700_000_000.0 - (1_700_000_000.0 % 3600)
    cfg = StorageConfig(retention_s=4 * 3600.0, minute_retention_s=3600.0, raw_retention_s=3600.0)

    async def run() -> None:
        w = await StoreWriter.open(db, cfg)
        for i in range(2400):  # two hours at 3 s; /gone lives only in the first hour
            procs = [_proc(100, "/svc", None, 1000 + i // 50, 500)]
            if i < 1200:
                procs.append(_proc(200, "/gone", None, 10, 5))
            await w.write(_snap(i, t0, procs, 10_000))
        await w.compact(await w._scalar("SELECT max(id) FROM snapshots WHERE kf = 1") - 1)
        await w.prune(t0 + 7800)  # the first hour's raw and minute chunks are past retention, not its hour
        await w.close()

    asyncio.run(run())
    with StoreReader(db) as r:
        tiers = dict(r.db.execute("SELECT tier, count(*) FROM series_chunks GROUP BY tier").fetchall())
        assert 0 not in tiers and 1 not in tiers and tiers.get(2, 0) > 0
        names = {n for (n,) in r.db.execute("SELECT name FROM series WHERE kind = 'cgroup'")}
        assert names == {"/svc", "/gone"}  # /gone's hour rollup is still within retention
        hours = r.series_history("cgroup", "/svc", t0, t0 + 7200, tier=2)
        assert [h["rss_kb"] for h in hours] == [1000 + 1199 // 50, 1000 + 2399 // 50]
