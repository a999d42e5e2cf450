"""The Prometheus endpoint, scraped over real HTTP on 127.0.0.1 and read with prometheus-client's parsers."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from memwatchd.alerts.engine import AlertEngine
from memwatchd.config import PrometheusConfig, RuleConfig, parse_config
from memwatchd.daemon.metrics import (
    ALLOC_COUNTERS,
    GROUP_GAUGES,
    OTHER,
    MetricsError,
    MetricsServer,
    series_budget,
)
from memwatchd.daemon.status import DaemonStatus, alert_counts
from memwatchd.merge import merge
from memwatchd.models import (
    BpfHealth,
    BpfPoll,
    BpfStats,
    MemInfo,
    OomKill,
    ProcessExit,
    ProcessSnapshot,
    ProcSample,
    ProcScan,
    Snapshot,
)

GROUP_FAMILIES = [n for n, _ in GROUP_GAUGES] + [n.removesuffix("_total") for n, _ in ALLOC_COUNTERS]
CAPPED_FAMILIES = [*GROUP_FAMILIES, "memwatchd_process_rss_bytes"]
MEMINFO = MemInfo(
    mem_total_kb=16 << 20, mem_available_kb=9 << 20, swap_total_kb=2 << 20, swap_free_kb=1 << 20
)


# ---- building snapshots ---------------------------------------------------------------------------
def proc(
    pid: int,
    comm: str,
    unit: str | None,
    rss_kb: int,
    *,
    bpf: bool = True,
    d: tuple[int, int, int, int] | None = None,
    exited: bool = False,
) -> ProcessSnapshot:
    """One process; d = (mmap calls, mmap bytes, munmap bytes, brk bytes) since the previous snapshot."""
    return ProcessSnapshot(
        pid=pid,
        start_ticks=pid * 10,
        start_time=None,
        comm=comm,
        unit=unit,
        cgroup=None,
        rss_kb=rss_kb,
        anon_kb=rss_kb // 2,
        swap_kb=rss_kb // 8,
        vm_kb=rss_kb * 4,
        hwm_kb=None,
        pss_kb=None,
        uss_kb=None,
        mmap_count=1000 if bpf else None,
        mmap_bytes=1 << 30 if bpf else None,
        munmap_count=10 if bpf else None,
        munmap_bytes=1 << 20 if bpf else None,
        brk_count=5 if bpf else None,
        brk_bytes=1 << 16 if bpf else None,
        d_mmap_count=d[0] if d else None,
        d_mmap_bytes=d[1] if d else None,
        d_munmap_bytes=d[2] if d else None,
        d_brk_bytes=d[3] if d else None,
        dt_s=1.0 if d else None,
        exited=exited,
    )


def fleet(n: int = 5000, comms: int = 3000, bpf: bool = True) -> list[ProcessSnapshot]:
    """n processes over `comms` distinct comms; every fifth runs in one of 40 systemd units."""
    out = []
    for i in range(n):
        unit = f"svc{i % 40}.service" if i % 5 == 0 else None
        d = (i % 7, (i % 7) * 4096, (i % 3) * 4096, i % 11) if bpf else None
        out.append(proc(1000 + i, f"c{i % comms}", unit, 100 + (i * 7919) % 50000, bpf=bpf, d=d))
    return out


def snapshot(processes: list[ProcessSnapshot], ts: float = 1_700_000_000.0, **kw: Any) -> Snapshot:
    return Snapshot(
        ts=ts,
        mono=ts,
        processes=tuple(processes),
        meminfo=kw.pop("meminfo", MEMINFO),
        bpf=kw.pop("bpf", BpfHealth(state="active", tracked=len(processes))),
        **kw,
    )


def group_of(p: ProcessSnapshot) -> str:
    return p.unit or p.comm


# ---- serving and scraping -------------------------------------------------------------------------
@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[MetricsServer] = []

    def make(**cfg: Any) -> MetricsServer:
        s = MetricsServer(
            PrometheusConfig(listen="127.0.0.1:0", **cfg)
        )  # port 0: the kernel picks a free one
        s.start()
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


def fetch(server: MetricsServer, openmetrics: bool = False) -> str:
    assert server.address is not None
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"} if openmetrics else {}
    req = urllib.request.Request(f"http://127.0.0.1:{server.address[1]}/metrics", headers=headers)
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200
        return resp.read().decode()


def scrape(server: MetricsServer) -> dict[str, Any]:
    return {f.name: f for f in parse_text(fetch(server))}


def values(fam: Any, label: str, suffix: str = "") -> dict[str, float]:
    return {s.labels[label]: s.value for s in fam.samples if s.name == fam.name + suffix}


def capped_series(families: dict[str, Any]) -> int:
    return sum(len(families[n].samples) for n in CAPPED_FAMILIES if n in families)


# ---- tests ----------------------------------------------------------------------------------------
def test_names_types_and_units(serve: Any) -> None:
    server = serve()
    daemon = DaemonStatus(scan_ms=42.0, committed_snapshots=7)
    server.update(snapshot(fleet(200, 50)), daemon)
    server.update(snapshot(fleet(200, 50), ts=1_700_000_003.0), daemon)
    fams = scrape(server)
    expected = {
        "memwatchd_group_rss_bytes": "gauge",
        "memwatchd_group_anon_bytes": "gauge",
        "memwatchd_group_swap_bytes": "gauge",
        "memwatchd_group_processes": "gauge",
        "memwatchd_process_rss_bytes": "gauge",
        "memwatchd_mmap_calls": "counter",
        "memwatchd_mmap_bytes": "counter",
        "memwatchd_munmap_bytes": "counter",
        "memwatchd_brk_bytes": "counter",
        "memwatchd_host_mem_total_bytes": "gauge",
        "memwatchd_host_mem_available_bytes": "gauge",
        "memwatchd_host_swap_total_bytes": "gauge",
        "memwatchd_host_swap_free_bytes": "gauge",
        "memwatchd_scan_duration_seconds": "histogram",
        "memwatchd_bpf_lost_events": "counter",
        "memwatchd_bpf_map_full": "counter",
        "memwatchd_bpf_up": "gauge",
        "memwatchd_bpf_tracked_processes": "gauge",
        "memwatchd_database_errors": "counter",
        "memwatchd_database_write_failing": "gauge",
        "memwatchd_snapshots_written": "counter",
        "memwatchd_snapshots_dropped": "counter",
        "memwatchd_notification_failures": "counter",
        "memwatchd_notifications_delivered": "counter",
        "memwatchd_scan_errors": "counter",
        "memwatchd_oom_kills": "counter",
        "memwatchd_processes": "gauge",
        "memwatchd_groups": "gauge",
        "memwatchd_last_snapshot_timestamp_seconds": "gauge",
    }
    assert {n: fams[n].type for n in expected if n in fams} == expected
    ours = {n for n in fams if n.startswith("memwatchd_")}
    assert ours == set(expected), "no alert engine: no memwatchd_alerts family"
    for name, typ in expected.items():
        if typ == "counter":  # the exposition names counter samples *_total
            assert {s.name for s in fams[name].samples} == {name + "_total"}
    assert fams["memwatchd_host_mem_total_bytes"].samples[0].value == 16 << 30
    assert fams["memwatchd_host_swap_free_bytes"].samples[0].value == 1 << 30
    assert fams["memwatchd_snapshots_written"].samples[0].value == 7
    assert fams["memwatchd_bpf_up"].samples[0].value == 1
    assert fams["memwatchd_last_snapshot_timestamp_seconds"].samples[0].value == 1_700_000_003.0
    # OpenMetrics carries the unit explicitly.
    om = {f.name: f for f in parse_openmetrics(fetch(server, openmetrics=True))}
    units = {n: f.unit for n, f in om.items() if n.startswith("memwatchd_")}
    for name, unit in units.items():
        want = "bytes" if name.endswith("_bytes") else "seconds" if name.endswith("_seconds") else ""
        assert unit == want, name


def test_scan_duration_histogram(serve: Any) -> None:
    server = serve()
    for ms in (3.0, 42.0, 42.0, 7000.0):
        server.update(snapshot(fleet(10, 10)), DaemonStatus(scan_ms=ms))
    fam = scrape(server)["memwatchd_scan_duration_seconds"]
    buckets = {s.labels["le"]: s.value for s in fam.samples if s.name.endswith("_bucket")}
    assert buckets["0.001"] == 0 and buckets["0.005"] == 1 and buckets["0.05"] == 3 and buckets["5"] == 3
    assert buckets["10"] == 4 and buckets["+Inf"] == 4
    rest = {s.name: s.value for s in fam.samples if not s.name.endswith("_bucket")}
    assert rest["memwatchd_scan_duration_seconds_count"] == 4
    assert rest["memwatchd_scan_duration_seconds_sum"] == pytest.approx(7.087)


@pytest.mark.parametrize("max_series", [10, 100, 2000])
@pytest.mark.parametrize("bpf", [True, False])
def test_series_cap_with_5000_processes_and_3000_comms(serve: Any, max_series: int, bpf: bool) -> None:
    server = serve(max_series=max_series, top_k=20)
    procs = fleet(5000, 3000, bpf=bpf)
    server.update(snapshot(procs), None)
    fams = scrape(server)
    assert capped_series(fams) <= max_series

    by_group: dict[str, list[ProcessSnapshot]] = {}
    for p in procs:
        by_group.setdefault(group_of(p), []).append(p)
    assert len(by_group) > 2400
    assert fams["memwatchd_groups"].samples[0].value == len(by_group)
    assert fams["memwatchd_processes"].samples[0].value == 5000

    rss = values(fams["memwatchd_group_rss_bytes"], "group")
    top_k, kept_n = series_budget(PrometheusConfig(max_series=max_series, top_k=20), alloc=bpf)
    assert len(rss) == kept_n + 1 and OTHER in rss
    assert ("memwatchd_mmap_calls" in fams) is bpf

    # The kept groups are the biggest; everything else is in "other"; nothing is lost.
    sums = {g: sum(p.rss_kb or 0 for p in ps) * 1024 for g, ps in by_group.items()}
    kept = {g for g in rss if g != OTHER}
    for g in kept:
        assert rss[g] == sums[g]
    folded = set(sums) - kept
    assert min((sums[g] for g in kept), default=float("inf")) >= max(sums[g] for g in folded)
    assert rss[OTHER] == sum(sums[g] for g in folded)
    assert sum(rss.values()) == sum((p.rss_kb or 0) * 1024 for p in procs)
    for name, field in (("memwatchd_group_anon_bytes", "anon_kb"), ("memwatchd_group_swap_bytes", "swap_kb")):
        assert sum(values(fams[name], "group").values()) == sum(getattr(p, field) * 1024 for p in procs)
    counts = values(fams["memwatchd_group_processes"], "group")
    assert counts[OTHER] == sum(len(by_group[g]) for g in folded)
    assert sum(counts.values()) == 5000

    top = fams["memwatchd_process_rss_bytes"].samples
    assert len(top) == top_k
    biggest = sorted(procs, key=lambda p: (-(p.rss_kb or 0), p.pid))[:top_k]
    assert [(s.labels["rank"], s.labels["comm"], s.labels["unit"], s.value) for s in top] == [
        (str(i + 1), p.comm, p.unit or "", (p.rss_kb or 0) * 1024) for i, p in enumerate(biggest)
    ]


def test_no_pid_label_anywhere(serve: Any) -> None:
    server = serve()
    server.update(snapshot(fleet(500, 300)), None)
    labels = {k for f in scrape(server).values() for s in f.samples for k in s.labels}
    assert labels == {"group", "rank", "comm", "unit", "le"}


def test_allocation_counters_stay_monotonic_while_processes_come_and_go(serve: Any) -> None:
    """Snapshots from the real merge(): processes exit (final counters) and start (first sighting)."""
    server = serve()
    cum: dict[int, list[int]] = {}  # pid -> cumulative [mmap calls, mmap bytes, munmap bytes, brk bytes]
    names = {pid: (f"w{pid % 3}", "web.service" if pid % 2 else None) for pid in range(1, 200)}
    live = set(range(1, 30))
    prev: Snapshot | None = None
    exported_after_baseline = [0, 0, 0, 0]
    previous: dict[tuple[str, str], float] = {}
    for step in range(12):
        exits = []
        for pid in sorted(live):
            c = cum.setdefault(pid, [0, 0, 0, 0])
            inc = [pid % 5 + 1, (pid % 5 + 1) * 8192, pid % 3 * 4096, pid % 4 * 1024]
            for i in range(4):
                c[i] += inc[i]
                if step > 0:
                    exported_after_baseline[i] += inc[i]
        leaving = {pid for pid in live if (pid + step) % 9 == 0} if step > 0 else set()
        for pid in sorted(leaving):
            exits.append(
                ProcessExit(pid=pid, comm=names[pid][0], exit_code=0, final=stats(pid, cum[pid]), mono_ns=0)
            )
        live -= leaving
        scan = ProcScan(
            samples=tuple(sample(pid, *names[pid]) for pid in sorted(live)),
            meminfo=MEMINFO,
            boot_time=0.0,
            clk_tck=100,
        )
        poll = BpfPoll(
            stats={pid: stats(pid, cum[pid]) for pid in sorted(live)},
            exits=tuple(exits),
            ooms=(),
            health=BpfHealth(state="active"),
        )
        snap = merge(scan, poll, prev, ts=1_700_000_000.0 + step, mono=float(step))
        server.update(snap, None)
        prev = snap
        live |= {30 + step * 3 + k for k in range(3)}  # new processes appear before the next scan

        fams = scrape(server)
        now: dict[tuple[str, str], float] = {}
        for n, _ in ALLOC_COUNTERS:
            for s in fams[n.removesuffix("_total")].samples:
                now[(n, s.labels["group"])] = s.value
        for key, v in now.items():
            assert v >= previous.get(key, 0.0), (step, key)
        previous = now
        # Every group fits under the cap here, so the counters account for every allocation exactly.
        totals = [sum(v for (n, _), v in now.items() if n == name) for name, _ in ALLOC_COUNTERS]
        assert totals == exported_after_baseline, step
    assert {g for (_, g) in previous} == {"web.service", "w0", "w1", "w2", OTHER}


def sample(pid: int, comm: str, unit: str | None) -> ProcSample:
    return ProcSample(
        pid=pid,
        start_ticks=pid * 10,
        comm=comm,
        ppid=1,
        state="S",
        rss_kb=1000 + pid,
        vm_kb=9000,
        hwm_kb=None,
        anon_kb=500,
        swap_kb=0,
        unit=unit,
        cgroup=None,
    )


def stats(pid: int, c: list[int]) -> BpfStats:
    return BpfStats(
        tgid=pid,
        mmap_count=c[0],
        mmap_bytes=c[1],
        munmap_count=0,
        munmap_bytes=c[2],
        brk_count=0,
        brk_bytes=c[3],
        last_update_ns=0,
    )


def test_counters_stay_monotonic_when_groups_cross_the_cap(serve: Any) -> None:
    server = serve(max_series=40, top_k=4)  # 8 series a group: 3 kept groups + other + 4 processes
    previous: dict[tuple[str, str], float] = {}
    for step in range(20):
        # Six groups whose sizes rotate, so membership of the kept set changes every step.
        procs = [
            proc(100 * g + k, f"g{g}", None, 1000 * (1 + (g + step) % 6), d=(1, 4096, 0, 0))
            for g in range(6)
            for k in range(3)
        ]
        server.update(snapshot(procs), None)
        fams = scrape(server)
        assert capped_series(fams) <= 40
        rss = values(fams["memwatchd_group_rss_bytes"], "group")
        assert len(rss) == 4 and OTHER in rss
        calls = values(fams["memwatchd_mmap_calls"], "group", "_total")
        assert set(calls) == set(rss)
        for g, v in calls.items():
            if (step - 1, g) in previous:  # a series present in consecutive scrapes never goes down
                assert v >= previous[(step - 1, g)], (step, g)
            previous[(step, g)] = v
        assert calls[OTHER] == 3 * 3 * (step + 1)  # 3 folded groups x 3 processes x 1 call per step


def test_groups_that_vanish_disappear(serve: Any) -> None:
    server = serve()
    a = [proc(1, "nginx", "nginx.service", 5000, d=(1, 1, 1, 1)), proc(2, "cron", None, 700, d=(1, 1, 1, 1))]
    server.update(snapshot(a), None)
    server.update(snapshot(a), None)
    first = scrape(server)
    assert {"nginx.service", "cron", OTHER} == set(values(first["memwatchd_group_rss_bytes"], "group"))
    # nginx exits: it shows once more with its final counters (no longer counted as live), then is gone.
    b = [
        proc(1, "nginx", "nginx.service", 5000, d=(2, 2, 2, 2), exited=True),
        proc(2, "cron", None, 700, d=(1, 1, 1, 1)),
    ]
    server.update(snapshot(b), None)
    assert values(scrape(server)["memwatchd_group_processes"], "group")["nginx.service"] == 0
    assert values(scrape(server)["memwatchd_mmap_calls"], "group", "_total")["nginx.service"] == 1 + 1 + 2
    server.update(snapshot([proc(2, "cron", None, 700, d=(1, 1, 1, 1))]), None)
    text = fetch(server)
    assert "nginx" not in text
    fams = scrape(server)
    for name in CAPPED_FAMILIES:
        for s in fams[name].samples:
            assert "nginx" not in s.labels.values(), name


def test_a_real_group_named_other_is_counted_in_the_other_bucket(serve: Any) -> None:
    server = serve()
    server.update(snapshot([proc(1, "other", None, 300), proc(2, "sshd", "ssh.service", 200)]), None)
    rss = values(scrape(server)["memwatchd_group_rss_bytes"], "group")
    assert rss == {"ssh.service": 200 * 1024, OTHER: 300 * 1024}


def alert_engine() -> AlertEngine:
    """The daemon's rule engine: one rule that fires on the bigger test processes, one that never does."""
    rules = [
        RuleConfig(name="big", kind="threshold", threshold=40 << 20),
        RuleConfig(name="never", kind="threshold", threshold=1 << 50),
    ]
    return AlertEngine(rules, [], repeat_interval_s=3600.0)


def test_alert_states_and_daemon_health(serve: Any) -> None:
    server = serve()
    engine = alert_engine()
    daemon = DaemonStatus(
        scan_ms=12.5,
        committed_snapshots=41,
        dropped_snapshots=2,
        write_errors=1,
        write_failing="disk I/O error",
        notify_failures=3,
        notify_delivered=9,
        bpf_state="active",
    )
    oom = OomKill(
        pid=9,
        comm="x",
        total_vm_kb=1,
        anon_rss_kb=1,
        file_rss_kb=0,
        shmem_rss_kb=0,
        uid=0,
        oom_score_adj=0,
        mono_ns=0,
    )
    health = BpfHealth(state="active", tracked=123, map_full=4, lost_events=17)
    snap = snapshot(fleet(50, 10), bpf=health, ooms=(oom,), scan_errors=5)
    engine.observe(snap)  # the daemon judges a snapshot before handing it to metrics
    server.update(snap, replace(daemon, alerts=alert_counts(engine.open_alerts())))
    fams = scrape(server)
    alerts = {(s.labels["rule"], s.labels["state"]): s.value for s in fams["memwatchd_alerts"].samples}
    big = sum(1 for p in snap.processes if (p.rss_kb or 0) * 1024 >= 40 << 20)
    assert big > 0
    assert alerts == {("big", "firing"): big, ("big", "pending"): 0}
    one = {n: f.samples[0].value for n, f in fams.items() if len(f.samples) == 1}
    assert one["memwatchd_bpf_up"] == 1
    assert one["memwatchd_bpf_tracked_processes"] == 123
    assert one["memwatchd_bpf_map_full"] == 4
    assert one["memwatchd_bpf_lost_events"] == 17
    assert one["memwatchd_snapshots_written"] == 41
    assert one["memwatchd_snapshots_dropped"] == 2
    assert one["memwatchd_database_write_failing"] == 1
    assert one["memwatchd_database_errors"] == 1
    assert one["memwatchd_notification_failures"] == 3
    assert one["memwatchd_notifications_delivered"] == 9
    assert one["memwatchd_oom_kills"] == 1
    assert one["memwatchd_scan_errors"] == 5

    # A failed BPF poll reports zeros: counters must not go backwards. Resolved alerts stay at 0.
    daemon = replace(daemon, write_failing=None)
    small = snapshot([proc(1000 + i, f"c{i}", None, 100) for i in range(50)], ts=1_700_000_010.0)
    engine.observe(small)
    assert engine.open_alerts() == []
    daemon = replace(daemon, alerts=alert_counts(engine.open_alerts()))
    server.update(replace(small, bpf=BpfHealth(state="unavailable: probe gone")), daemon)
    fams = scrape(server)
    one = {n: f.samples[0].value for n, f in fams.items() if len(f.samples) == 1}
    assert one["memwatchd_bpf_up"] == 0
    assert one["memwatchd_bpf_lost_events"] == 17 and one["memwatchd_bpf_map_full"] == 4
    assert one["memwatchd_database_write_failing"] == 0 and one["memwatchd_database_errors"] == 1
    assert one["memwatchd_oom_kills"] == 1 and one["memwatchd_scan_errors"] == 5
    assert {s.value for s in fams["memwatchd_alerts"].samples} == {0}


def test_before_the_first_snapshot_only_process_metrics(serve: Any) -> None:
    fams = scrape(serve())
    assert not [n for n in fams if n.startswith("memwatchd_")]
    assert "process_resident_memory_bytes" in fams  # memwatchd's own footprint


def test_update_is_cheap(serve: Any) -> None:
    server = serve()
    snap = snapshot(fleet(5000, 3000))
    server.update(snap, None)
    t0 = time.perf_counter()
    for _ in range(5):
        server.update(snap, None)
    per_update = (time.perf_counter() - t0) / 5
    assert per_update < 0.1, f"{per_update * 1000:.1f} ms per update with 5,000 processes"


def test_listen_turns_the_endpoint_on_and_empty_leaves_it_off() -> None:
    assert (
        parse_config({"prometheus": {"listen": "127.0.0.1:9464"}}, "x.toml").prometheus.listen
        == "127.0.0.1:9464"
    )
    assert parse_config({}, "x.toml").prometheus.listen == ""
    assert parse_config({"prometheus": {"listen": ""}}, "x.toml").prometheus.listen == ""
    off = MetricsServer(parse_config({"prometheus": {"listen": ""}}, "x.toml").prometheus)
    off.start()
    assert off.address is None
    off.update(snapshot(fleet(10, 10)), None)
    off.stop()


def test_binds_the_configured_address_and_releases_it_on_stop() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = MetricsServer(PrometheusConfig(listen=f"127.0.0.1:{port}"))
    server.start()
    try:
        assert server.address == ("127.0.0.1", port)
        with pytest.raises(MetricsError, match=f"cannot listen on 127.0.0.1:{port}"):
            MetricsServer(PrometheusConfig(listen=f"127.0.0.1:{port}")).start()
    finally:
        server.stop()
    again = MetricsServer(PrometheusConfig(listen=f"127.0.0.1:{port}"))
    again.start()
    again.stop()


def test_sample_grafana_dashboard_uses_only_exported_names(serve: Any) -> None:
    dashboard = json.loads(
        (Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json").read_text()
    )
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in re.findall(r"\b(?:memwatchd|process)_[a-z_]+", target["expr"])
    }
    server = serve()
    engine = alert_engine()
    snap = snapshot(fleet(50, 10))
    engine.observe(snap)
    server.update(snap, DaemonStatus(scan_ms=1.0, alerts=alert_counts(engine.open_alerts())))
    exported = {s.name for f in scrape(server).values() for s in f.samples}
    assert used, "the dashboard queries memwatchd metrics"
    assert used <= exported, sorted(used - exported)
