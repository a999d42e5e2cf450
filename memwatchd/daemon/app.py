"""memwatchd: the long-running service. Wires collectors -> merge -> store -> rules -> notify.

Sampling runs on the monotonic clock every [daemon] interval seconds. The /proc scan runs in a
daemon thread (a hung /proc read must not freeze the event loop, the ring buffer or signals); the BPF
ring buffer is read inside the loop. Snapshots go through a bounded queue to the one writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import click

from memwatchd.alerts.engine import AlertEngine, Transition
from memwatchd.alerts.kinds.oom import OomKind
from memwatchd.alerts.scopes import ScopeEngine, is_scoped
from memwatchd.collectors.bpf import BpfCollector, BpfUnavailable
from memwatchd.collectors.cgroupfs import ChargeReader, headroom, oom_scope
from memwatchd.collectors.source import ProcScanner, open_scanner
from memwatchd.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config, notify_urls
from memwatchd.config_check import check_usable
from memwatchd.daemon import allocator, heap
from memwatchd.daemon.clock import SYSTEM_CLOCK, Clock
from memwatchd.daemon.dispatch import AlertDispatch
from memwatchd.daemon.failures import RepeatedFailure
from memwatchd.daemon.logsetup import setup_logging
from memwatchd.daemon.pump import PRUNE_EVERY_S, WritePump
from memwatchd.daemon.service import ServiceNotifier
from memwatchd.daemon.status import DaemonStatus, alert_counts
from memwatchd.daemon.triage import TriageService
from memwatchd.group_tracker import GroupTracker
from memwatchd.groups import charge_paths
from memwatchd.merge import Merger
from memwatchd.models import AlertRecord, BpfHealth, BpfPoll, GroupCharge, ProcScan, Snapshot
from memwatchd.notify.alertmanager import AlertmanagerFeed
from memwatchd.notify.deliverer import Deliverer
from memwatchd.notify.render import Message
from memwatchd.store.files import DatabaseInUse, StoreError, WriterLock, acquire_lock
from memwatchd.store.writer import StoreWriter
from memwatchd.text import shown
from memwatchd.triage.report import TriageResult

if TYPE_CHECKING:
    from memwatchd.daemon.metrics import MetricsServer

log = logging.getLogger("memwatchd")
T = TypeVar("T")

BPF_GC_EVERY_S = 10.0  # the map sweep for entries that outlived their process (exits remove them)


def _in_daemon_thread(fn: Callable[[], T]) -> asyncio.Future[T]:
    """Run fn in a daemon thread: unlike the default executor, a stuck call cannot block shutdown."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(result: T) -> None:
        if not fut.done():
            fut.set_result(result)

    def fail(exc: BaseException) -> None:
        if not fut.done():
            fut.set_exception(exc)

    def target() -> None:
        try:
            r = fn()
        except BaseException as err:  # handed to the awaiting task
            with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
                loop.call_soon_threadsafe(fail, err)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, r)

    threading.Thread(target=target, daemon=True, name="memwatchd-scan").start()
    return fut


def with_limit_forecast(t: Transition, snap: Snapshot, cgroup_root: str = "/sys/fs/cgroup") -> Transition:
    """Add "its memory cgroup reaches the limit in ~N" to a growing alert (reads the cgroup files once)."""
    rate = t.record.rate
    if t.reason == "resolved" or t.record.kind == "oom" or rate is None or rate <= 0:
        return t  # no forecast for the dead
    key = (t.record.pid, t.record.start_ticks)
    proc = next((p for p in snap.processes if (p.pid, p.start_ticks) == key), None)
    if proc is None or not proc.cgroup:
        return t
    h = headroom(proc.cgroup, cgroup_root)
    if h is None:
        return t
    return dataclasses.replace(
        t, limit_forecast_s=h.free_bytes / rate, limit_cgroup=h.cgroup, limit_bytes=float(h.limit_bytes)
    )


def with_oom_scope(
    t: Transition, snaps: tuple[Snapshot | None, ...], cgroup_root: str = "/sys/fs/cgroup"
) -> Transition:
    """Say whether an OOM kill was cgroup-local or host-wide (reads the victim's cgroup files once)."""
    if t.record.kind != OomKind.name:
        return t
    cgroup = t.cgroup  # where the engine last saw the victim (its history outlives the last snapshots)
    for snap in (
        snaps if cgroup is None else ()
    ):  # the victim is gone: its cgroup comes from the last snapshots that saw it
        if snap is None:
            continue
        cgroup = next((p.cgroup for p in snap.processes if p.pid == t.record.pid and p.cgroup), None)
        if cgroup:
            break
    return dataclasses.replace(t, oom_scope=oom_scope(cgroup, cgroup_root).describe())


def _raise_nofile_limit() -> None:
    """The /proc reader keeps one statm fd per process (a pread is ~5x cheaper than open+read+close)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-file limit (%s); the /proc reader will fall back to paths", e)


# The watchdog is no longer fed once the database has been unusable this long (other than a full disk:
# a restart cannot free space and would lose the in-memory backlog), so systemd restarts the daemon.
DB_UNUSABLE_LIMIT_S = 600.0
COMMIT_WINDOW_INTERVALS = 10  # snapshots are committed together at least every 10 intervals ...
COMMIT_WINDOW_MAX_S = 30.0  # ... and at least every 30 s (a kill -9 loses at most this of samples)


def commit_window_s(interval_s: float) -> float:
    """How long snapshots may wait in memory before they are committed (together).

    Sub-second intervals (development, tests) commit every snapshot: whoever samples that fast wants the
    database live, and pays the writes knowingly.
    """
    if interval_s < 1.0:
        return 0.0
    return min(COMMIT_WINDOW_INTERVALS * interval_s, COMMIT_WINDOW_MAX_S)


class _CurrentStore:
    """The daemon's store as it is now, for parts started before the database could be opened."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    async def save_triage(self, result: TriageResult, now: float) -> int:
        store = self._daemon.store
        if store is None:
            raise StoreError("the database is not open yet (it could not be opened at start)")
        return await store.save_triage(result, now)


@dataclass(frozen=True, slots=True)
class DaemonHooks:
    """Test hooks: ways for tests to drive the real daemon that production never uses."""

    stall_after: int | None = None  # after this many cycles the /proc scan never returns
    prune_every_s: float = PRUNE_EVERY_S
    db_unusable_s: float = DB_UNUSABLE_LIMIT_S
    store_period_s: float | None = None  # keyframe/compaction period instead of an hour (benchmarks)


class Daemon:
    def __init__(
        self,
        cfg: Config,
        db_override: bool = False,
        *,
        clock: Clock = SYSTEM_CLOCK,
        hooks: DaemonHooks = DaemonHooks(),  # noqa: B008 - frozen, shared safely
    ) -> None:
        self.cfg = cfg
        self.db_override = db_override
        self.clock = clock
        self.hooks = hooks
        self.host = cfg.daemon.hostname or os.uname().nodename
        self.notifier = ServiceNotifier()
        self.stop_event = asyncio.Event()
        self.cycles = 0
        self._pinged_cycles = -1
        self.prev: Snapshot | None = None
        self._older: Snapshot | None = None  # the snapshot before prev (an OOM victim's last sighting)
        self.merger = Merger()
        self.group_tracker = GroupTracker()  # group and host sums, kept from each snapshot's changes
        self._trim = heap.TrimPolicy()
        self._bpf_gc_at = float("-inf")
        self.bpf: BpfCollector | None = None
        self.bpf_state = "disabled"
        self.procfs: ProcScanner | None = None
        self.scan_source = "proc"  # "bpf" (the kernel's task iterator) or "proc" ([procfs] source)
        self.scan_source_why: str | None = None  # why not the iterator, when not
        self.allocator = "system"  # the allocator running ("jemalloc" or "system"), set by run()
        self.store: StoreWriter | None = None
        self.pump: WritePump | None = None
        self.alerts: AlertEngine | None = None
        self.scopes: ScopeEngine | None = None  # rules of scope cgroup and host (alerts/scopes.py)
        self.deliverer: Deliverer | None = None
        self.dispatch: AlertDispatch | None = None
        self.alertmanager: AlertmanagerFeed | None = None
        self.metrics: MetricsServer | None = None
        self.triage: TriageService | None = None
        self.status = DaemonStatus()
        self.groups_ms = 0.0  # reading cgroup charges, per cycle (written by the scan thread)
        self.charges: ChargeReader | None = (
            ChargeReader(cfg.groups.cgroup_root) if cfg.groups.enabled else None
        )
        self._bpf_failing = False
        self.lock: WriterLock | None = None
        self.started_at = clock.wall()
        self._watchdog_withheld = False
        self._status_failing = False
        self._cycle_failure = RepeatedFailure("sampling cycle", log)
        self._rule_failure = RepeatedFailure("rule evaluation", log)
        self._scope_failure = RepeatedFailure("group and host rule evaluation", log)
        self._reload_wanted = False
        self._reload_task: asyncio.Task[None] | None = None

    # ---- setup -------------------------------------------------------------------------------
    async def open(self) -> None:
        _raise_nofile_limit()
        path = self.cfg.storage.path
        self.lock = acquire_lock(path)  # DatabaseInUse: another daemon writes this database
        if self.lock is None:
            log.warning("disk full: cannot create %s.lock; running without the one-writer lock", path)
        store: StoreWriter | None = None
        failure: StoreError | None = None
        try:
            store = await self._open_store()
        except StoreError as e:
            if not e.transient:  # corrupt, a symlink, permission denied: the operator must act
                raise
            failure = e  # a full disk: sample and alert now, write when space returns
        self.store = store
        self.pump = WritePump(
            store,
            retry_s=lambda: self.cfg.daemon.interval_s,
            status=self._status_fields,
            opener=self._open_store_late,
            commit_window_s=lambda: commit_window_s(self.cfg.daemon.interval_s),
            clock=self.clock,
            prune_every_s=self.hooks.prune_every_s,
        )
        if failure is not None:
            self.pump.unavailable(failure)
        self._load_bpf()
        # ScanSourceError ([procfs] source = "bpf" unusable here): a startup failure
        self.procfs, self.scan_source, self.scan_source_why = open_scanner(
            self.cfg.procfs, self.bpf, self.bpf_state
        )
        await self._open_alerting(store)
        await self._open_triage(store)
        self._open_metrics()
        self.status = DaemonStatus(
            bpf_state=self.bpf_state,
            scan_source=self.scan_source,
            allocator=self.allocator,
            write_failing=self.pump.write_failing,
        )
        if store is not None:
            # this run's counters start at zero: status must not mix the previous run's counts with this pid
            await store.set_status(**self._status_fields(0))

    async def _open_store(self) -> StoreWriter:
        return await StoreWriter.open(
            self.cfg.storage.path, self.cfg.storage, period_s=self.hooks.store_period_s
        )

    async def _open_store_late(self) -> StoreWriter:
        """The pump's retry after the database could not be opened at start."""
        store = await self._open_store()
        self.store = store
        return store

    def _status_fields(self, committed: int) -> dict[str, str | int | float | None]:
        """The status table's key/values, written in the snapshots' transaction (one commit per write)."""
        fields = self.status.store_fields()
        pump = self.pump
        fields.update(
            pid=os.getpid(),
            started_at=self.started_at,
            host=self.host,
            interval_s=self.cfg.daemon.interval_s,
            commit_window_s=commit_window_s(self.cfg.daemon.interval_s),
            committed_snapshots=committed,
            dropped_snapshots=pump.dropped if pump is not None else 0,
            poisoned_snapshots=pump.poisoned if pump is not None else 0,
        )
        if self.triage is not None:
            fields.update(self.triage.status_fields())
        return fields

    def _load_bpf(self) -> None:
        if not self.cfg.bpf.enabled:
            self.bpf_state = "disabled in config"
            log.info("BPF disabled in config ([bpf] enabled = false); running on /proc alone")
            return
        try:
            self.bpf = BpfCollector.load(self.cfg.bpf)
        except BpfUnavailable as e:
            self.bpf_state = f"unavailable: {e}"
            log.warning("BPF unavailable: %s; running on /proc alone", e)
            return
        self.bpf.attach_reader(asyncio.get_running_loop())
        self.bpf_state = "active"
        log.info("BPF probes attached")

    async def _open_alerting(self, store: StoreWriter | None) -> None:
        # without a database at start (full disk) alerting starts afresh; see docs/reliability.md
        open_alerts = await store.load_open_alerts() if store is not None else []
        scoped = {r.name for r in self.cfg.rules if is_scoped(r)}
        self.alerts = AlertEngine(
            [r for r in self.cfg.rules if not is_scoped(r)],
            [a for a in open_alerts if a.rule not in scoped],
            self.cfg.notify.repeat_interval_s,
        )
        self.scopes = ScopeEngine(
            self.cfg.rules, [a for a in open_alerts if a.rule in scoped], self.cfg.notify.repeat_interval_s
        )
        self.deliverer = deliverer = Deliverer(
            self.cfg.notify.timeout_s, self.cfg.notify.max_retries, self._delivered
        )
        n = self.cfg.notify
        self.alertmanager = AlertmanagerFeed(
            self.host,
            n.alertmanager,
            repeat_s=n.alertmanager_repeat_s,
            timeout_s=n.timeout_s,
            max_retries=n.max_retries,
        )
        # open episodes are posted again at once: a restart does not forget them (same startsAt: no duplicate)
        self.alertmanager.restore(open_alerts, self.cfg.rules, self.clock.wall())
        self.dispatch = AlertDispatch(
            deliverer.submit,
            host=self.host,
            urls=notify_urls(self.cfg),
            group_wait_s=self.cfg.notify.group_wait_s,
            alertmanager=self.alertmanager,
        )

    async def _open_triage(self, store: StoreWriter | None) -> None:
        assert self.deliverer is not None
        self.triage = TriageService(
            self.cfg.triage,
            _CurrentStore(self),  # the database may open later (full disk at start)
            self.deliverer.submit,
            self.host,
            notify_urls(self.cfg),
            self.cfg.storage.path,
            self.cfg.procfs.root,
        )
        await self.triage.start()

    def _open_metrics(self) -> None:
        if not self.cfg.prometheus.listen:
            return
        from memwatchd.daemon.metrics import MetricsError, MetricsServer  # prometheus_client only when used

        metrics = MetricsServer(self.cfg.prometheus)
        try:
            metrics.start()
        except MetricsError as e:  # port in use, bad address: monitoring goes on without it
            log.error("prometheus endpoint disabled: %s", e)
            return
        self.metrics = metrics
        log.info("prometheus metrics on http://%s/metrics", self.cfg.prometheus.listen)

    async def _delivered(self, msg: Message) -> None:
        assert self.alerts is not None and self.scopes is not None
        now = self.clock.wall()
        names = self.scopes.rule_names
        updated = [
            (self.scopes.mark_notified if r.rule in names else self.alerts.mark_notified)(r, r.state, now)
            for r in msg.records
        ]
        await self._save_alerts(updated)

    async def _save_alerts(self, records: list[AlertRecord]) -> None:
        if not records or self.store is None:
            return
        try:
            await self.store.save_alerts(records)
        except Exception as e:  # StoreError: the alert state is kept in memory and saved with the next change
            log.warning("could not save alert state: %s", e)

    # ---- sampling ----------------------------------------------------------------------------
    def _scan(
        self, procfs: ProcScanner, mono: float, known: tuple[frozenset[str], int] | None
    ) -> tuple[ProcScan, dict[str, GroupCharge]]:
        """The /proc scan and the charges of every cgroup the groups need: those of the last cycle's groups
        plus the places of processes new or changed in this scan, when `known` (those groups' paths, and the
        seq of the scan they were built from) is what this scan's change set follows; else of every place."""
        stall = self.hooks.stall_after
        if stall is not None and self.cycles >= stall:
            threading.Event().wait()  # test hook: a /proc read that never returns
        scan = procfs.scan(mono)
        charges: dict[str, GroupCharge] = {}
        if self.charges is not None:
            t0 = time.perf_counter()
            try:
                if scan.changed is not None and known is not None and scan.base_seq == known[1]:
                    paths = known[0] | charge_paths({(s.cgroup, s.unit) for s in scan.changed})
                else:
                    paths = frozenset(charge_paths({(s.cgroup, s.unit) for s in scan.samples}))
                charges = self.charges.read(paths)
            except Exception as e:  # an optional source: the cycle goes on without charges
                log.debug("cgroup charges unreadable: %s", e)
            self.groups_ms = (time.perf_counter() - t0) * 1000
        return scan, charges

    def _poll_bpf(self) -> BpfPoll | None:
        if self.bpf is None:
            return None
        try:
            poll = self.bpf.poll()
        except Exception as e:  # a failing map read must not stop sampling; said once, not per cycle
            if not self._bpf_failing:
                log.error("BPF map read failed (%s); counters missing until it recovers", e)
            self._bpf_failing = True
            return None
        if self._bpf_failing:
            log.info("BPF map reads recovered")
            self._bpf_failing = False
        return poll

    async def sample_once(self) -> Snapshot:
        procfs, pump = self.procfs, self.pump
        assert procfs is not None and pump is not None, "open() first"
        mono = self.clock.mono()
        ts = self.clock.wall()
        t0 = time.perf_counter()
        # the groups of the last snapshot, built from the last scan: this scan's changes are relative to them
        known = None
        prev, scan_seq = self.merger.prev, self.merger.scan_seq
        if (
            self.charges is not None
            and prev is not None
            and scan_seq is not None
            and (self.group_tracker.seq == prev.seq)
        ):
            known = (self.group_tracker.paths(), scan_seq)
        scan, charges = await _in_daemon_thread(lambda: self._scan(procfs, mono, known))
        poll = self._poll_bpf()
        if poll is not None and self.bpf is not None and mono - self._bpf_gc_at >= BPF_GC_EVERY_S:
            self._bpf_gc_at = mono
            self.bpf.gc(procfs.live_pids)
        health = poll.health if poll else BpfHealth(state=self.bpf_state)
        snap = self.merger.merge(scan, poll, ts=ts, mono=mono, bpf_health=health)
        if self.charges is not None:
            groups, host = self.group_tracker.update(snap, charges)
            snap = dataclasses.replace(snap, groups=groups, host=host)
            self.merger.prev = snap
        scan_ms = (time.perf_counter() - t0) * 1000
        self._older, self.prev = self.prev, snap
        self.cycles += 1
        pump.put(snap)
        self._judge(snap)
        self.status = status = self._build_status(snap, scan_ms)
        if self.metrics is not None:
            self.metrics.update(snap, status)
        for oom in snap.ooms:
            log.warning("OOM kill: pid %d (%s), anon-rss %d kB", oom.pid, shown(oom.comm), oom.anon_rss_kb)
        self.notifier.status(status.line())
        return snap

    def _tend_heap(self) -> None:
        """After the first cycle freeze the long-lived heap; after a burst of exits hand free pages back."""
        if self.cycles == 1:
            heap.freeze()  # the first snapshot's records, windows and caches are long-lived
            heap.trim()
            return
        snap = self.prev
        if self._trim.due(len(snap.gone) if snap is not None else 0, self.clock.mono()):
            self._shrink()
            heap.trim()

    def _shrink(self) -> None:
        """Per-process tables sized for the processes there are, once a burst of exits is over."""
        for part in (self.procfs, self.merger, self.group_tracker, self.alerts, self.store):
            if part is not None:
                part.shrink()

    def _build_status(self, snap: Snapshot, scan_ms: float) -> DaemonStatus:
        pump = self.pump
        assert pump is not None
        return DaemonStatus(
            processes=len(snap.processes),
            last_snapshot_ts=snap.ts,
            bpf_state=snap.bpf.state if self.bpf is not None else self.bpf_state,
            scan_source=self.scan_source,
            allocator=self.allocator,
            bpf_tracked=snap.bpf.tracked,
            map_full=snap.bpf.map_full,
            lost_events=snap.bpf.lost_events,
            scan_ms=scan_ms,
            groups_ms=self.groups_ms,
            groups=len(snap.groups),
            scan_errors=snap.scan_errors,
            committed_snapshots=pump.committed,
            dropped_snapshots=pump.dropped,
            write_errors=pump.write_errors,
            write_failing=pump.write_failing,
            last_write_ts=pump.last_write_ts,
            notify_failures=self.deliverer.failures if self.deliverer is not None else 0,
            notify_delivered=self.deliverer.delivered if self.deliverer is not None else 0,
            alerts=alert_counts(self.alerts.open_alerts()) if self.alerts is not None else (),
        )

    def _judge(self, snap: Snapshot) -> None:
        assert self.alerts is not None and self.scopes is not None and self.dispatch is not None
        root = self.cfg.groups.cgroup_root
        try:
            changed, due = self.alerts.observe(snap)
        except Exception as e:
            self._rule_failure.failed(e)
            changed, due = [], []
        else:
            self._rule_failure.ok()
        try:
            s_changed, s_due = self.scopes.observe(snap)
        except Exception as e:
            self._scope_failure.failed(e)
            s_changed, s_due = [], []
        else:
            self._scope_failure.ok()
        if changed or s_changed:
            asyncio.get_running_loop().create_task(self._save_alerts([*changed, *s_changed]))
        self.dispatch.offer(
            [*(with_oom_scope(with_limit_forecast(t, snap), (snap, self._older), root) for t in due), *s_due],
            snap.mono,
        )
        if self.triage is not None:
            self.triage.on_transitions(due)  # growth/leak alerts that just fired: where does it allocate?

    def status_line(self) -> str:
        return self.status.line()

    async def sampler(self) -> None:
        interval = self.cfg.daemon.interval_s
        next_at = self.clock.mono()
        while not self.stop_event.is_set():
            try:
                await self.sample_once()
            except Exception as e:
                self._cycle_failure.failed(e)
            else:
                self._cycle_failure.ok()
            self._tend_heap()
            interval = self.cfg.daemon.interval_s
            next_at += interval
            now = self.clock.mono()
            if next_at < now:  # overran: skip missed ticks instead of bursting
                next_at = now + interval - ((now - next_at) % interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), timeout=next_at - now)

    async def _write_status(self, snap: Snapshot) -> None:
        """Status alone, in a transaction of its own (the pump folds it into each commit; this is for
        callers between commits). A failure is a warning once, and its recovery is said once."""
        if self.store is None:
            return
        try:
            await self.store.set_status(**self._status_fields(self.pump.committed if self.pump else 0))
        except Exception as e:
            if not self._status_failing:
                log.warning("status update failed (memwatchctl status shows older values): %s", e)
            self._status_failing = True
        else:
            if self._status_failing:
                log.info("status updates work again")
            self._status_failing = False

    async def watchdog(self) -> None:
        period = self.notifier.watchdog_interval_s
        if not period:
            return
        while not self.stop_event.is_set():
            # only while sampling makes progress and the database has not been unusable for too long
            if self.cycles != self._pinged_cycles and not self._db_unusable_too_long():
                self._pinged_cycles = self.cycles
                self.notifier.watchdog()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), timeout=period)

    def _db_unusable_too_long(self) -> bool:
        pump = self.pump
        since = pump.failing_since if pump is not None else None
        if pump is None or since is None or pump.disk_full:
            if self._watchdog_withheld:
                log.info("database usable again: feeding the watchdog")
            self._watchdog_withheld = False
            return False
        if self.clock.mono() - since < self.hooks.db_unusable_s:
            return False
        if not self._watchdog_withheld:
            self._watchdog_withheld = True
            log.error(
                "database unusable for more than %gs (%s): no longer feeding the watchdog, so systemd"
                " restarts memwatchd",
                self.hooks.db_unusable_s,
                pump.write_failing,
            )
        return True

    # ---- reload / stop -----------------------------------------------------------------------
    def reload(self, path: str) -> asyncio.Task[None]:
        """SIGHUP: RELOADING=1 now, READY=1 once the new configuration is applied or refused.

        The file is read and checked in a thread (checking notification URLs starts an Apprise child), so
        sampling goes on meanwhile; SIGHUPs during a reload are folded into one more reload after it.
        Returns the reload task (the signal handler ignores it; tests await it).
        """
        self.notifier.reloading()
        self._reload_wanted = True
        if self._reload_task is None or self._reload_task.done():
            self._reload_task = asyncio.get_running_loop().create_task(self._reloads(path))
        return self._reload_task

    @staticmethod
    def _load_checked(path: str) -> tuple[Config, tuple[str, ...]]:
        new = load_config(path)
        check_usable(new)
        return new, notify_urls(new)

    async def _reloads(self, path: str) -> None:
        while self._reload_wanted:
            self._reload_wanted = False
            try:
                new, urls = await _in_daemon_thread(lambda: self._load_checked(path))
            except ConfigError as e:
                log.error("reload failed, keeping the running configuration: %s", e)
                self.notifier.ready(self.status_line())
                continue
            except Exception:  # a bug in a check must not end the daemon: the old configuration stays
                log.exception("reload failed, keeping the running configuration")
                self.notifier.ready(self.status_line())
                continue
            self._apply(new, urls, path)

    def _apply(self, new: Config, urls: tuple[str, ...], path: str) -> None:
        for section in ("bpf", "storage", "prometheus", "groups"):
            old_v, new_v = getattr(self.cfg, section), getattr(new, section)
            if section == "storage":
                new_v = dataclasses.replace(new_v, path=old_v.path) if self.db_override else new_v
            if new_v != old_v:
                log.warning("[%s] changed: takes effect after a restart", section)
        new_procfs = new.procfs
        if new_procfs.source != self.cfg.procfs.source:
            log.warning("[procfs] source changed: takes effect after a restart")
        # sections that need a restart keep their running values (the storage path may come from --db)
        self.cfg = dataclasses.replace(
            new,
            bpf=self.cfg.bpf,
            storage=self.cfg.storage,
            prometheus=self.cfg.prometheus,
            groups=self.cfg.groups,
        )
        if self.dispatch is not None:
            self.dispatch.urls = urls
            self.dispatch.group_wait_s = new.notify.group_wait_s
        if self.alertmanager is not None:
            self.alertmanager.update(new.notify.alertmanager, new.notify.alertmanager_repeat_s, new.rules)
        if self.procfs is not None:
            self.procfs.set_smaps(new_procfs.smaps)
        if self.alerts is not None:
            self.alerts.update_rules([r for r in new.rules if not is_scoped(r)])
        if self.scopes is not None:
            self.scopes.update_rules(new.rules)
        if self.triage is not None:
            self.triage.update(new.triage, urls)
        setup_logging(new.daemon.log_level)
        log.info("configuration reloaded from %s (%d rules)", path, len(new.rules))
        self.notifier.ready(self.status_line())

    async def close(self) -> None:
        if self.triage is not None:
            await self.triage.close()  # kills running tracer children: their probes go with them
            self.triage = None
        if self._reload_task is not None and not self._reload_task.done():
            self._reload_task.cancel()  # its thread may still read; the result is no longer wanted
        if self.procfs is not None:
            self.procfs.close()
        if self.bpf is not None:
            try:
                self.bpf.close()
            except Exception as e:
                log.warning("BPF detach: %s", e)
            self.bpf = None
        if self.deliverer is not None:
            if self.dispatch is not None:
                self.dispatch.flush()  # do not sit on a held group at shutdown
            await self.deliverer.close(timeout=2.0)
        if self.alertmanager is not None:
            await self.alertmanager.close(timeout=2.0)
        if self.metrics is not None:
            self.metrics.stop()
        if self.store is not None:
            await self.store.close()
            self.store = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None


async def run(
    cfg: Config,
    config_path: str,
    db_override: bool = False,
    hooks: DaemonHooks = DaemonHooks(),  # noqa: B008 - frozen, shared safely
    allocator_line: str = "system",
) -> int:
    d = Daemon(cfg, db_override, hooks=hooks)
    d.allocator = allocator_line.split(" ", 1)[0]
    loop = asyncio.get_running_loop()
    try:
        await d.open()
    except Exception as e:
        msg = f"startup failed: {e}"
        log.error("%s", msg)
        d.notifier.status(msg)
        await d.close()
        return 2 if isinstance(e, DatabaseInUse) else 1
    loop.add_signal_handler(signal.SIGTERM, d.stop_event.set)
    loop.add_signal_handler(signal.SIGINT, d.stop_event.set)
    loop.add_signal_handler(signal.SIGHUP, d.reload, config_path)
    assert d.pump is not None and d.deliverer is not None
    pump = d.pump
    tasks = [
        asyncio.create_task(d.sampler(), name="sampler"),
        asyncio.create_task(pump.run(d.stop_event), name="writer"),
        asyncio.create_task(d.deliverer.run(), name="deliverer"),
    ]
    # First snapshot before READY=1 so `status` has data as soon as systemd considers us started.
    d.notifier.ready(d.status_line())
    log.info(
        "memwatchd started: interval %gs, bpf %s, scan %s, allocator %s, database %s",
        cfg.daemon.interval_s,
        d.bpf_state,
        d.scan_source if d.scan_source_why is None else f"{d.scan_source} ({d.scan_source_why})",
        allocator_line,
        cfg.storage.path,
    )
    wd = asyncio.create_task(d.watchdog(), name="watchdog")
    await d.stop_event.wait()
    d.notifier.stopping()
    log.info("stopping")
    sampler, writer, deliverer = tasks
    try:
        await asyncio.wait_for(asyncio.shield(sampler), timeout=2.0)
    except (TimeoutError, Exception):
        sampler.cancel()
    try:
        await asyncio.wait_for(writer, timeout=10.0)  # finishes the write in progress and the backlog
        if pump.queue:  # the sampler's last snapshot came after the pump had emptied its queue
            await asyncio.wait_for(pump.run(d.stop_event), timeout=10.0)
    except (TimeoutError, Exception):
        writer.cancel()
    if pump.queue:
        log.warning("%d snapshots could not be written before exit", len(pump.queue))
    wd.cancel()
    await d.close()  # delivers what is queued (bounded), then detaches probes and closes the database
    deliverer.cancel()
    log.info("stopped")
    return 0


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    default=DEFAULT_CONFIG_PATH,
    show_default=True,
    metavar="FILE",
    help="TOML configuration file.",
)
@click.option(
    "--db",
    "db_path",
    default=None,
    metavar="FILE",
    help="Database file; overrides [storage] path (e.g. to keep a development database in the repository).",
)
@click.option("--check", is_flag=True, help="Validate the configuration and exit (0 valid, 2 invalid).")
def cli(config_path: str, db_path: str | None, check: bool) -> None:
    """Per-process memory monitor: eBPF allocation probes + /proc, SQLite history, leak rules, alerts.

    Runs in the foreground (systemd Type=notify). SIGHUP reloads the configuration; SIGTERM stops.
    """
    try:
        cfg = load_config(config_path)
        check_usable(cfg)
        if db_path:
            cfg = dataclasses.replace(
                cfg, storage=dataclasses.replace(cfg.storage, path=os.path.abspath(db_path))
            )
    except ConfigError as e:
        click.echo(f"memwatchd: {e}", err=True)
        ServiceNotifier().status(f"invalid configuration: {e}")
        sys.exit(2)
    if check:
        click.echo(f"{config_path}: ok ({len(cfg.rules)} rules)")
        return
    try:
        running = allocator.choose(cfg.daemon.allocator)  # jemalloc: executes the daemon again, once
    except allocator.AllocatorError as e:
        click.echo(f"memwatchd: {e}", err=True)
        ServiceNotifier().status(f"startup failed: {e}")
        sys.exit(2)
    setup_logging(cfg.daemon.log_level)
    if not running.startswith("jemalloc"):
        heap.limit_arenas()  # before any thread exists (the event loop's, aiosqlite's, the scans')
    sys.exit(asyncio.run(run(cfg, config_path, db_path is not None, allocator_line=running)))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
