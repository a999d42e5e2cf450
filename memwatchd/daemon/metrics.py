"""Optional Prometheus endpoint: what memwatchd knows, exposed to an existing Prometheus and Grafana.

Off by default; `[prometheus] listen = "127.0.0.1:9464"` turns it on. The daemon calls `update()` once
per snapshot on the event loop thread. It aggregates the snapshot in one pass and swaps in an immutable
`_State`; the HTTP thread only reads the latest one, so scrapes never touch the loop and need no lock.

Cardinality is bounded by design (never a pid label):
- a *group* is the process's systemd unit when known, else its comm. Per-group families
  (rss, anon, swap, processes and, once eBPF counters appear, four allocation counters) are exported for
  the biggest groups by RSS; every other group is folded into `group="other"`. The number of kept groups
  is chosen so that group series plus top-K process series stay within `max_series`.
- `memwatchd_process_rss_bytes{rank, comm, unit}` holds the K biggest processes by RSS, rank 1..K:
  at most K series per scrape, whichever processes currently hold those ranks.
A group that disappears, or falls out of the kept set, is simply absent from the next scrape.
- memory cgroups (issue 16): `memwatchd_cgroup_memory_bytes{cgroup, unit}` (the kernel's charge),
  `memwatchd_cgroup_memory_limit_bytes{cgroup, unit}` (tightest limit; absent when unlimited),
  `memwatchd_cgroup_rss_bytes` and `memwatchd_cgroup_processes` for the `[prometheus] top_cgroups` cgroups
  with the largest charge; the rest are summed into `cgroup="other"` (their charges may overlap when one
  is inside another: "other" is a rough total).
- the host breakdown: `memwatchd_host_memory_bytes{part}`, one series per part of HostMemory (11 at most).

Allocation counters are sums of per-process deltas, so they keep rising while processes come and go.
A group's counter lives while the group stays in the kept set; deltas of folded groups go to "other".
A group re-entering the kept set starts again from 0, which Prometheus' rate() reads as a counter reset.
"""

from __future__ import annotations

import heapq
import logging
import socket
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from memwatchd.config import PrometheusConfig
from memwatchd.daemon.metric_rows import RSS, GroupRows, group_of
from memwatchd.daemon.status import DaemonStatus
from memwatchd.models import HOST_FIELDS, MemInfo, ProcessSnapshot, Snapshot
from memwatchd.text import shown

log = logging.getLogger(__name__)

OTHER = "other"
# Scan of /proc plus BPF poll and merge; a few ms on an idle host, up to seconds with 10^4 processes.
SCAN_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ALERT_STATES = ("pending", "firing")

# (metric name, help) of the per-group families: gauges in _GroupRow order, counters in accumulator order.
GROUP_GAUGES = (
    ("memwatchd_group_rss_bytes", "Resident set size of the group's processes."),
    ("memwatchd_group_anon_bytes", "Anonymous resident memory of the group's processes."),
    ("memwatchd_group_swap_bytes", "Swapped-out memory of the group's processes."),
    ("memwatchd_group_processes", "Live processes in the group."),
)
ALLOC_COUNTERS = (
    ("memwatchd_mmap_calls_total", "mmap calls seen by eBPF since memwatchd started exporting."),
    ("memwatchd_mmap_bytes_total", "Bytes requested by mmap, seen by eBPF."),
    ("memwatchd_munmap_bytes_total", "Bytes released by munmap, seen by eBPF."),
    ("memwatchd_brk_bytes_total", "Heap growth through brk, seen by eBPF."),
)


class MetricsError(Exception):
    """The metrics endpoint could not start (bad address, port in use)."""


@dataclass(frozen=True, slots=True)
class _GroupRow:
    group: str
    rss_bytes: int
    anon_bytes: int
    swap_bytes: int
    processes: int


@dataclass(frozen=True, slots=True)
class _TopRow:
    rank: int
    comm: str
    unit: str
    rss_bytes: int


@dataclass(frozen=True, slots=True)
class _State:
    """Everything one scrape shows; built by update(), read by the HTTP thread."""

    groups: tuple[_GroupRow, ...]  # kept groups by RSS, then "other"
    alloc: tuple[tuple[str, tuple[int, int, int, int]], ...] | None  # None until eBPF counters appear
    # the snapshot's records and K: the top-K process series are picked when a scrape asks (top()), not
    # every cycle
    processes: tuple[ProcessSnapshot, ...]
    top_k: int
    meminfo: MemInfo | None
    alerts: tuple[tuple[str, str, int], ...]  # (rule, state, count)
    scan_buckets: tuple[int, ...]  # cumulative counts per SCAN_BUCKETS_S bound, then +Inf
    scan_sum_s: float
    counters: dict[str, float]  # single-sample counters by full name
    gauges: dict[str, float]  # single-sample gauges by full name
    cgroups: tuple[
        tuple[str, str, int, int | None, int, int], ...
    ] = ()  # cgroup, unit, charge, limit, rss, n
    host: tuple[tuple[str, int], ...] = ()  # (part, bytes) of the host breakdown

    def top(self) -> tuple[_TopRow, ...]:
        """The K biggest live processes by RSS, rank 1 first."""
        live = (p for p in self.processes if not p.exited and p.rss_kb is not None)
        biggest = heapq.nlargest(self.top_k, live, key=lambda p: (p.rss_kb or 0, -p.pid))
        return tuple(
            _TopRow(i + 1, p.comm, p.unit or "", (p.rss_kb or 0) * 1024) for i, p in enumerate(biggest)
        )


def parse_listen(listen: str) -> tuple[str, int]:
    """'HOST:PORT' (IPv6 as '[::1]:9464') -> (host, port)."""
    host, sep, port = listen.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise MetricsError(f"expected HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


def series_budget(cfg: PrometheusConfig, alloc: bool) -> tuple[int, int]:
    """(top-K process series, kept groups) so that both, plus the "other" group, fit in max_series."""
    per_group = len(GROUP_GAUGES) + (len(ALLOC_COUNTERS) if alloc else 0)
    top_k = max(0, min(cfg.top_k, (cfg.max_series - per_group) // 2))
    kept = max(0, (cfg.max_series - top_k) // per_group - 1)
    return top_k, kept


def _inc(delta: int | None, cumulative: int | None, primed: bool) -> int:
    """What one process adds to an allocation counter this interval."""
    if delta is not None:
        return max(delta, 0)
    # No delta: a first sighting (or tracking began this interval), so its cumulative value is all new.
    # On the very first update everything is a first sighting of unknown age: take it as the baseline.
    return cumulative if primed and cumulative is not None else 0


_NO_INC = (0, 0, 0, 0)


class _Aggregator:
    """Turns snapshots into _State; keeps the running counters between snapshots."""

    def __init__(self, cfg: PrometheusConfig) -> None:
        self.cfg = cfg
        self.state: _State | None = None
        self._primed = False
        self._alloc_seen = False
        self._rows = GroupRows()
        self._acc: dict[str, tuple[int, int, int, int]] = {}  # kept groups only: bounded by the cap
        self._other_acc = (0, 0, 0, 0)
        self._scan_counts = [0] * (len(SCAN_BUCKETS_S) + 1)
        self._scan_sum = 0.0
        self._bpf_lost = 0
        self._bpf_map_full = 0
        self._scan_errors = 0
        self._ooms = 0
        self._alert_rules: set[str] = set()
        self._alert_states: set[str] = set(ALERT_STATES)

    def update(self, snap: Snapshot, status: DaemonStatus | None) -> None:
        # per-group sums from the snapshot's changes; allocation increments from its new records only (a
        # record carried over unchanged has deltas 0)
        changed = self._rows.update(snap)
        rows = self._rows.rows
        incs: dict[str, list[int]] = {}  # group -> [mmap calls, mmap bytes, munmap bytes, brk bytes]
        primed = self._primed
        for p in changed:
            if p.mmap_count is not None:
                self._alloc_seen = True
                g = group_of(p)
                inc = incs.get(g)
                if inc is None:
                    inc = incs[g] = [0, 0, 0, 0]
                inc[0] += _inc(p.d_mmap_count, p.mmap_count, primed)
                inc[1] += _inc(p.d_mmap_bytes, p.mmap_bytes, primed)
                inc[2] += _inc(p.d_munmap_bytes, p.munmap_bytes, primed)
                inc[3] += _inc(p.d_brk_bytes, p.brk_bytes, primed)
        self._primed = True

        top_k, kept_n = series_budget(self.cfg, self._alloc_seen)
        # A real group named "other" would collide with the bucket: it is always folded into it.
        candidates = [g for g in rows if g != OTHER]
        kept = heapq.nlargest(kept_n, candidates, key=lambda g: (rows[g][RSS], g))
        kept_set = set(kept)

        other = [0, 0, 0, 0]
        other_acc = list(self._other_acc)
        acc: dict[str, tuple[int, int, int, int]] = {}
        for g, row in rows.items():
            d: Sequence[int] = incs.get(g) or _NO_INC
            if g in kept_set:
                a = self._acc.get(g, (0, 0, 0, 0))
                acc[g] = (a[0] + d[0], a[1] + d[1], a[2] + d[2], a[3] + d[3])
            else:
                for i in range(4):
                    other[i] += row[i]
                    other_acc[i] += d[i]
        self._acc = acc
        self._other_acc = (other_acc[0], other_acc[1], other_acc[2], other_acc[3])

        groups = tuple(_GroupRow(g, *rows[g][:4]) for g in kept) + (_GroupRow(OTHER, *other),)
        alloc = None
        if self._alloc_seen:
            alloc = tuple((g, acc[g]) for g in kept) + ((OTHER, self._other_acc),)

        st = status if status is not None else DaemonStatus()
        self._observe_health(snap, st)
        self.state = _State(
            cgroups=cgroup_rows(snap, self.cfg.top_cgroups),
            host=tuple((f.removesuffix("_kb"), getattr(snap.host, f) * 1024) for f in HOST_FIELDS)
            if snap.host is not None
            else (),
            groups=groups,
            alloc=alloc,
            processes=snap.processes,
            top_k=top_k,
            meminfo=snap.meminfo,
            alerts=self._alerts(st),
            scan_buckets=tuple(self._cumulative_buckets()),
            scan_sum_s=self._scan_sum,
            counters=self._counters(st),
            gauges={
                "memwatchd_bpf_up": 1.0 if snap.bpf.state == "active" else 0.0,
                "memwatchd_bpf_tracked_processes": float(snap.bpf.tracked),
                "memwatchd_database_write_failing": 1.0 if st.write_failing else 0.0,
                "memwatchd_processes": float(self._rows.live),
                "memwatchd_groups": float(len(rows)),
                "memwatchd_last_snapshot_timestamp_seconds": snap.ts,
            },
        )

    def _observe_health(self, snap: Snapshot, status: DaemonStatus) -> None:
        if status.scan_ms is not None:
            s = status.scan_ms / 1000.0
            i = next((i for i, b in enumerate(SCAN_BUCKETS_S) if s <= b), len(SCAN_BUCKETS_S))
            self._scan_counts[i] += 1
            self._scan_sum += s
        # Kernel-side counts are cumulative; a failed poll reports zeros, which must not look like a reset.
        self._bpf_lost = max(self._bpf_lost, snap.bpf.lost_events)
        self._bpf_map_full = max(self._bpf_map_full, snap.bpf.map_full)
        self._scan_errors += snap.scan_errors
        self._ooms += len(snap.ooms)

    def _cumulative_buckets(self) -> Iterator[int]:
        total = 0
        for n in self._scan_counts:
            total += n
            yield total

    def _counters(self, status: DaemonStatus) -> dict[str, float]:
        return {
            "memwatchd_bpf_lost_events_total": float(self._bpf_lost),
            "memwatchd_bpf_map_full_total": float(self._bpf_map_full),
            "memwatchd_scan_errors_total": float(self._scan_errors),
            "memwatchd_oom_kills_total": float(self._ooms),
            "memwatchd_snapshots_written_total": float(status.committed_snapshots),
            "memwatchd_snapshots_dropped_total": float(status.dropped_snapshots),
            "memwatchd_database_errors_total": float(status.write_errors),
            "memwatchd_notification_failures_total": float(status.notify_failures),
            "memwatchd_notifications_delivered_total": float(status.notify_delivered),
        }

    def _alerts(self, status: DaemonStatus) -> tuple[tuple[str, str, int], ...]:
        counts = {(rule, state): n for rule, state, n in status.alerts}
        # A rule that has alerted shows 0 once its alerts close rather than vanish, so graphs have no gaps.
        # Bounded: one name per rule ever configured, two states each.
        self._alert_rules |= {rule for rule, _ in counts}
        self._alert_states |= {state for _, state in counts}
        return tuple(
            (rule, st, counts.get((rule, st), 0))
            for rule in sorted(self._alert_rules)
            for st in sorted(self._alert_states)
        )


def cgroup_rows(snap: Snapshot, keep: int) -> tuple[tuple[str, str, int, int | None, int, int], ...]:
    """(cgroup, unit, charge, limit, rss, processes) in bytes for the `keep` cgroups with the largest
    charge (the RSS sum when the charge is unknown), then the rest summed as cgroup "other"."""
    cgs = [g for g in snap.groups if g.by == "cgroup" and g.group != OTHER]
    size = {g.group: (g.memory_current_kb if g.memory_current_kb is not None else g.rss_kb) for g in cgs}
    kept = heapq.nlargest(keep, cgs, key=lambda g: (size[g.group], g.group))
    kept_names = {g.group for g in kept}
    rows = [
        (
            g.group,
            g.unit or "",
            size[g.group] * 1024,
            None if g.memory_limit_kb is None else g.memory_limit_kb * 1024,
            g.rss_kb * 1024,
            g.processes,
        )
        for g in kept
    ]
    rest = [g for g in cgs if g.group not in kept_names]
    if rest:
        rows.append(
            (
                OTHER,
                "",
                sum(size[g.group] for g in rest) * 1024,
                None,
                sum(g.rss_kb for g in rest) * 1024,
                sum(g.processes for g in rest),
            )
        )
    return tuple(rows)


class _Collector:
    """prometheus_client collector rendering the latest _State."""

    def __init__(self, agg: _Aggregator) -> None:
        self.agg = agg

    def describe(self) -> Iterable[Metric]:
        return ()  # names vary with state; nothing to check for clashes in our own registry

    def collect(self) -> Iterator[Metric]:
        st = self.agg.state
        if st is None:
            return
        for i, (name, doc) in enumerate(GROUP_GAUGES):
            fam = GaugeMetricFamily(
                name, doc, labels=["group"], unit="bytes" if name.endswith("_bytes") else ""
            )
            for g in st.groups:
                fam.add_metric(
                    [shown(g.group)], float((g.rss_bytes, g.anon_bytes, g.swap_bytes, g.processes)[i])
                )
            yield fam
        if st.alloc is not None:
            for i, (name, doc) in enumerate(ALLOC_COUNTERS):
                cfam = CounterMetricFamily(
                    name, doc, labels=["group"], unit="bytes" if "_bytes" in name else ""
                )
                for group, values in st.alloc:
                    cfam.add_metric([shown(group)], float(values[i]))
                yield cfam
        top = GaugeMetricFamily(
            "memwatchd_process_rss_bytes",
            "Resident set size of the K biggest processes; rank 1 is the biggest.",
            labels=["rank", "comm", "unit"],
            unit="bytes",
        )
        for t in st.top():
            top.add_metric([str(t.rank), shown(t.comm), shown(t.unit)], float(t.rss_bytes))
        yield top
        if st.meminfo is not None:
            m = st.meminfo
            for name, doc, kb in (
                ("memwatchd_host_mem_total_bytes", "MemTotal from /proc/meminfo.", m.mem_total_kb),
                (
                    "memwatchd_host_mem_available_bytes",
                    "MemAvailable from /proc/meminfo.",
                    m.mem_available_kb,
                ),
                ("memwatchd_host_swap_total_bytes", "SwapTotal from /proc/meminfo.", m.swap_total_kb),
                ("memwatchd_host_swap_free_bytes", "SwapFree from /proc/meminfo.", m.swap_free_kb),
            ):
                yield GaugeMetricFamily(name, doc, value=float(kb * 1024), unit="bytes")
        if st.cgroups:
            fams = [
                GaugeMetricFamily(name, doc, labels=["cgroup", "unit"], unit=unit)
                for name, doc, unit in CGROUP_GAUGES
            ]
            for cg, unit, charge, limit, rss, n in st.cgroups:
                fams[0].add_metric([shown(cg), shown(unit)], float(charge))
                if limit is not None:
                    fams[1].add_metric([shown(cg), shown(unit)], float(limit))
                fams[2].add_metric([shown(cg), shown(unit)], float(rss))
                fams[3].add_metric([shown(cg), shown(unit)], float(n))
            yield from fams
        if st.host:
            hfam = GaugeMetricFamily(
                "memwatchd_host_memory",
                "The host's memory by part (see memwatchctl status: host_memory); unaccounted is what no"
                " other part explains.",
                labels=["part"],
                unit="bytes",
            )
            for part, nbytes in st.host:
                hfam.add_metric([part], float(nbytes))
            yield hfam
        if st.alerts:
            alerts = GaugeMetricFamily(
                "memwatchd_alerts", "Open alert episodes per rule and state.", labels=["rule", "state"]
            )
            for rule, state, n in st.alerts:
                alerts.add_metric([shown(rule), state], float(n))
            yield alerts
        buckets = [(f"{b:g}", float(n)) for b, n in zip(SCAN_BUCKETS_S, st.scan_buckets, strict=False)]
        buckets.append(("+Inf", float(st.scan_buckets[-1])))
        yield HistogramMetricFamily(
            "memwatchd_scan_duration_seconds",
            "Time to scan /proc, poll eBPF and merge one snapshot.",
            buckets=buckets,
            sum_value=st.scan_sum_s,
            unit="seconds",
        )
        for name, value in st.counters.items():
            yield CounterMetricFamily(name, _HELP[name], value=value)
        for name, value in st.gauges.items():
            yield GaugeMetricFamily(name, _HELP[name], value=value, unit=_unit(name))


CGROUP_GAUGES = (
    ("memwatchd_cgroup_memory", "Charge of the memory cgroup (memory.current / usage_in_bytes).", "bytes"),
    ("memwatchd_cgroup_memory_limit", "Tightest memory limit on the cgroup or an ancestor.", "bytes"),
    ("memwatchd_cgroup_rss", "Sum of the RSS of the cgroup's processes.", "bytes"),
    ("memwatchd_cgroup_processes", "Processes in the memory cgroup.", ""),
)


def _unit(name: str) -> str:
    return "seconds" if name.endswith("_seconds") else ""


_HELP = {
    "memwatchd_bpf_lost_events_total": "eBPF ring-buffer events lost (reservation failed).",
    "memwatchd_bpf_map_full_total": "eBPF stats-map updates refused because the map was full.",
    "memwatchd_scan_errors_total": "Processes that vanished or were unreadable during a /proc scan.",
    "memwatchd_oom_kills_total": "OOM kills seen through the oom:mark_victim tracepoint.",
    "memwatchd_snapshots_written_total": "Snapshots committed to the database.",
    "memwatchd_snapshots_dropped_total": "Snapshots dropped because the database stayed unwritable.",
    "memwatchd_database_errors_total": "Database write failures.",
    "memwatchd_notification_failures_total": "Notification deliveries that failed.",
    "memwatchd_notifications_delivered_total": "Notifications delivered.",
    "memwatchd_bpf_up": "1 when the eBPF probes are attached, 0 when running on /proc alone.",
    "memwatchd_bpf_tracked_processes": "Entries in the eBPF per-process stats map.",
    "memwatchd_database_write_failing": "1 while database writes are failing.",
    "memwatchd_processes": "Live processes in the latest snapshot.",
    "memwatchd_groups": "Distinct groups (units or comms) in the latest snapshot, before folding into other.",
    "memwatchd_last_snapshot_timestamp_seconds": "Wall-clock time of the latest snapshot.",
}


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck scraper must not hold up shutdown


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        pass  # a scrape every few seconds must not fill the journal


class MetricsServer:
    """/metrics over HTTP from a private CollectorRegistry, served by a daemon thread."""

    def __init__(self, cfg: PrometheusConfig) -> None:
        self.cfg = cfg
        self.registry = CollectorRegistry()
        self._agg = _Aggregator(cfg)
        self.registry.register(_Collector(self._agg))
        ProcessCollector(registry=self.registry)  # memwatchd's own process_* (CPU, RSS, open fds)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None  # bound (host, port), known after start()

    def start(self) -> None:
        """Bind cfg.listen and serve in the background; MetricsError when that fails. Empty listen: no-op."""
        if self._server is not None or not self.cfg.listen:
            return
        host, port = parse_listen(self.cfg.listen)
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            server_class = _Server6 if family == socket.AF_INET6 else _Server
            server = make_server(
                host, port, make_wsgi_app(self.registry), server_class, handler_class=_QuietHandler
            )
        except OSError as e:
            raise MetricsError(f"cannot listen on {self.cfg.listen}: {e.strerror or e}") from None
        # A short poll interval keeps stop() quick; serve_forever only checks for shutdown between polls.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="memwatchd-metrics", daemon=True
        )
        self._thread.start()
        self._server = server
        self.address = (host, server.server_port)

    def update(self, snap: Snapshot, status: DaemonStatus | None = None) -> None:
        """Take in one snapshot and the daemon's status of that cycle: one pass over its processes, no I/O."""
        self._agg.update(snap, status)

    def stop(self) -> None:
        """Stop serving and release the port."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
