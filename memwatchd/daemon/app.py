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
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import click

from memwatchd.collectors.cgroupfs import ChargeReader
from memwatchd.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config, notify_urls
from memwatchd.daemon.logsetup import setup_logging
from memwatchd.daemon.service import ServiceNotifier
from memwatchd.groups import aggregate_groups, charge_paths, host_memory
from memwatchd.merge import merge
from memwatchd.models import BpfHealth, BpfPoll, GroupCharge, Snapshot

log = logging.getLogger("memwatchd")
T = TypeVar("T")

WRITE_BACKLOG = 200  # snapshots kept in memory while the database cannot be written (disk full)
PRUNE_EVERY_S = 60.0


def _in_daemon_thread(fn: Callable[[], T]) -> asyncio.Future[T]:
    """Run fn in a daemon thread: unlike the default executor, a stuck call cannot block shutdown."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def target() -> None:
        try:
            r, e = fn(), None
        except BaseException as err:  # noqa: BLE001 - handed to the awaiting task
            r, e = None, err
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            loop.call_soon_threadsafe(settle, r, e)

    threading.Thread(target=target, daemon=True, name="memwatchd-scan").start()
    return fut


def _env_seconds(name: str, default: float) -> float:
    try:
        v = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return v if v > 0 else default


def with_limit_forecast(t: Any, snap: Snapshot, cgroup_root: str = "/sys/fs/cgroup") -> Any:
    """Add "its memory cgroup reaches the limit in ~N" to a growing alert (reads the cgroup files once)."""
    rate = t.record.rate
    if t.reason == "resolved" or rate is None or rate <= 0:
        return t
    key = (t.record.pid, t.record.start_ticks)
    proc = next((p for p in snap.processes if (p.pid, p.start_ticks) == key), None)
    if proc is None or not proc.cgroup:
        return t
    from memwatchd.collectors.cgroupfs import headroom

    h = headroom(proc.cgroup, cgroup_root)
    if h is None:
        return t
    return dataclasses.replace(
        t, limit_forecast_s=h.free_bytes / rate, limit_cgroup=h.cgroup, limit_bytes=float(h.limit_bytes)
    )


def _raise_nofile_limit() -> None:
    """The /proc reader keeps one statm fd per process (a pread is ~5x cheaper than open+read+close)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-file limit (%s); the /proc reader will fall back to paths", e)


class Daemon:
    def __init__(self, cfg: Config, db_override: bool = False) -> None:
        self.cfg = cfg
        self.db_override = db_override
        self.host = cfg.daemon.hostname or os.uname().nodename
        self.notifier = ServiceNotifier()
        self.stop_event = asyncio.Event()
        self.cycles = 0
        self._pinged_cycles = -1
        self.prev: Snapshot | None = None
        self.bpf: Any = None
        self.bpf_state = "disabled"
        self.store: Any = None
        self.queue: deque[Snapshot] = deque(maxlen=WRITE_BACKLOG)
        self.queue_event = asyncio.Event()
        self.dropped_snapshots = 0
        self.write_errors = 0
        self.write_failing: str | None = None
        self.last_write_ts: float | None = None
        self.committed = 0
        self.alerts: Any = None
        self.deliverer: Any = None
        self.metrics: Any = None
        self.triage: Any = None  # daemon/triage.py TriageService
        self.scan_ms = 0.0
        self.groups_ms = 0.0  # reading cgroup charges, per cycle
        self.charges: ChargeReader | None = (
            ChargeReader(cfg.groups.cgroup_root) if cfg.groups.enabled else None
        )
        stall = os.environ.get("MEMWATCHD_TEST_STALL_AFTER")
        self._stall_after = int(stall) if stall and stall.isdigit() else None
        self._bpf_failing = False
        self._held: list[Any] = []  # alert transitions waiting for [notify] group_wait
        self._last_sent = float("-inf")  # mono of the last alert messages handed to the deliverer
        self._retention_ref: tuple[float, float] | None = None  # (wall, mono) of the last prune
        self.prune_every_s = _env_seconds("MEMWATCHD_TEST_PRUNE_EVERY_S", PRUNE_EVERY_S)  # test hook

    # ---- setup -------------------------------------------------------------------------------
    async def open(self) -> None:
        from memwatchd.collectors.procfs import ProcfsCollector
        from memwatchd.store.writer import StoreWriter

        _raise_nofile_limit()
        self.store = await StoreWriter.open(self.cfg.storage.path, self.cfg.storage)
        self.procfs = ProcfsCollector(
            root=self.cfg.procfs.root,
            smaps=self.cfg.procfs.smaps,
            full_rescan_s=self.cfg.procfs.full_rescan_s,
        )
        self._load_bpf()
        await self._open_alerting()
        await self._open_triage()
        self._open_metrics()
        # this run's counters start at zero: status must not mix the previous run's counts with this pid
        await self.store.set_status(
            pid=os.getpid(),
            started_at=time.time(),
            bpf_state=self.bpf_state,
            host=self.host,
            interval_s=self.cfg.daemon.interval_s,
            committed_snapshots=0,
            dropped_snapshots=0,
            notify_failures=0,
            notify_delivered=0,
        )

    def _load_bpf(self) -> None:
        if not self.cfg.bpf.enabled:
            self.bpf_state = "disabled in config"
            log.info("BPF disabled in config ([bpf] enabled = false); running on /proc alone")
            return
        try:
            from memwatchd.collectors.bpf import BpfCollector, BpfUnavailable
        except ImportError as e:  # pragma: no cover - module ships with the package
            self.bpf_state = f"unavailable: {e}"
            log.warning("BPF unavailable (%s); running on /proc alone", e)
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

    async def _open_alerting(self) -> None:
        from memwatchd.alerts.engine import AlertEngine
        from memwatchd.notify.deliverer import Deliverer

        open_alerts = await self.store.load_open_alerts()
        self.alerts = AlertEngine(self.cfg.rules, open_alerts, self.cfg.notify.repeat_interval_s)
        self.deliverer = Deliverer(self.cfg.notify.timeout_s, self.cfg.notify.max_retries, self._delivered)
        self.default_urls = notify_urls(self.cfg)

    async def _open_triage(self) -> None:
        from memwatchd.daemon.triage import TriageService

        self.triage = TriageService(
            self.cfg.triage,
            self.store,
            self.deliverer.submit,
            self.host,
            self.default_urls,
            self.cfg.storage.path,
            self.cfg.procfs.root,
        )
        await self.triage.start()

    def _open_metrics(self) -> None:
        if not self.cfg.prometheus.listen:
            return
        try:
            from memwatchd.daemon.metrics import MetricsServer
        except ImportError:
            log.warning("prometheus endpoint not available in this build")
            return
        metrics = MetricsServer(self.cfg.prometheus)
        try:
            metrics.start()
        except Exception as e:  # MetricsError: port in use, bad address; monitoring goes on without it
            log.error("prometheus endpoint disabled: %s", e)
            return
        self.metrics = metrics
        log.info("prometheus metrics on http://%s/metrics", self.cfg.prometheus.listen)

    async def _delivered(self, msg: Any) -> None:
        now = time.time()
        updated = [self.alerts.mark_notified(r, r.state, now) for r in msg.records]
        await self._save_alerts(updated)

    async def _save_alerts(self, records: list[Any]) -> None:
        if not records:
            return
        try:
            await self.store.save_alerts(records)
        except Exception as e:  # StoreError: the alert state is kept in memory and saved with the next change
            log.warning("could not save alert state: %s", e)

    # ---- sampling ----------------------------------------------------------------------------
    def _scan(self, mono: float) -> tuple[Any, dict[str, GroupCharge]]:
        if self._stall_after is not None and self.cycles >= self._stall_after:
            threading.Event().wait()  # test hook: a /proc read that never returns
        scan = self.procfs.scan(mono)
        charges: dict[str, GroupCharge] = {}
        if self.charges is not None:
            t0 = time.perf_counter()
            try:
                charges = self.charges.read(
                    charge_paths((s.cgroup, s.unit) for s in scan.samples if s.vm_kb > 0)
                )
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
        mono = time.monotonic()
        ts = time.time()
        t0 = time.perf_counter()
        scan, charges = await _in_daemon_thread(lambda: self._scan(mono))
        poll = self._poll_bpf()
        if poll is not None and self.bpf is not None:
            self.bpf.gc(self.procfs.live_pids)
        health = poll.health if poll else BpfHealth(state=self.bpf_state)
        snap = merge(scan, poll, self.prev, ts=ts, mono=mono, bpf_health=health)
        if self.charges is not None:
            snap = dataclasses.replace(
                snap,
                groups=aggregate_groups(snap.processes, charges),
                host=host_memory(snap.meminfo, snap.processes),
            )
        self.scan_ms = (time.perf_counter() - t0) * 1000
        self.prev = snap
        self.cycles += 1
        if len(self.queue) == self.queue.maxlen:
            self.dropped_snapshots += 1  # the disk stayed unwritable for WRITE_BACKLOG intervals: oldest goes
        self.queue.append(snap)
        self.queue_event.set()
        self._judge(snap)
        if self.metrics is not None:
            self.metrics.update(snap, self)
        for oom in snap.ooms:
            log.warning("OOM kill: pid %d (%s), anon-rss %d kB", oom.pid, oom.comm, oom.anon_rss_kb)
        self.notifier.status(self.status_line())
        return snap

    def _judge(self, snap: Snapshot) -> None:
        try:
            changed, due = self.alerts.observe(snap)
        except Exception:
            log.exception("rule evaluation failed")
            return
        if changed:
            asyncio.get_running_loop().create_task(self._save_alerts(list(changed)))
        if self.triage is not None:
            self.triage.on_transitions(due)
        self._held.extend(with_limit_forecast(t, snap) for t in due)
        # [notify] group_wait: after a message goes out, what comes due within group_wait is held and sent
        # as one message per rule; a lone alert after a quiet spell goes out at once
        if self._held and snap.mono - self._last_sent >= self.cfg.notify.group_wait_s:
            self._last_sent = snap.mono
            self._send_held()

    def _send_held(self) -> None:
        from memwatchd.notify.render import render

        due, self._held = self._held, []
        for msg in render(due, self.host, self.default_urls):
            if msg.urls:
                self.deliverer.submit(msg)
            else:
                log.info("alert (no notification URLs configured): %s", msg.title)

    def status_line(self) -> str:
        n = len(self.prev.processes) if self.prev else 0
        last = (
            time.strftime("%H:%M:%S", time.localtime(self.last_write_ts)) if self.last_write_ts else "never"
        )
        db = f"db error: {self.write_failing}" if self.write_failing else f"last write {last}"
        return f"{n} processes, bpf {self.bpf_state}, {db}"

    async def sampler(self) -> None:
        interval = self.cfg.daemon.interval_s
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            try:
                await self.sample_once()
            except Exception:
                log.exception("sampling cycle failed")
            interval = self.cfg.daemon.interval_s
            next_at += interval
            now = time.monotonic()
            if next_at < now:  # overran: skip missed ticks instead of bursting
                next_at = now + interval - ((now - next_at) % interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), timeout=next_at - now)

    async def writer(self) -> None:
        # the first prune follows the first write: after a long downtime retention applies at once
        last_prune = time.monotonic() - self.prune_every_s
        while True:
            if not self.queue:
                if self.stop_event.is_set():
                    return
                self.queue_event.clear()
                stop = asyncio.ensure_future(self.stop_event.wait())
                more = asyncio.ensure_future(self.queue_event.wait())
                await asyncio.wait({stop, more}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                more.cancel()
                continue
            snap = self.queue[0]
            try:
                await self.store.write(snap)
            except Exception as e:
                if self.write_failing is None:
                    log.error(
                        "cannot write to the database (%s); keeping up to %d snapshots in memory, retrying",
                        e,
                        WRITE_BACKLOG,
                    )
                self.write_failing = str(e)
                self.write_errors += 1
                if self.stop_event.is_set():
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), timeout=self.cfg.daemon.interval_s)
                continue
            if self.queue and self.queue[0] is snap:
                self.queue.popleft()
            self.committed += 1
            self.last_write_ts = snap.ts
            if self.write_failing is not None:
                log.info("database writes resumed")
                self.write_failing = None
            await self._write_status(snap)
            if time.monotonic() - last_prune >= self.prune_every_s:
                last_prune = time.monotonic()
                try:
                    await self.store.prune(self._retention_now())
                except Exception as e:
                    log.warning("retention prune failed: %s", e)

    def _retention_now(self) -> float:
        """The wall time retention cuts at: it advances no faster than the monotonic clock.

        A wall-clock step forward (NTP correcting a wrong clock, an operator's date -s) would otherwise
        age every stored row at once and the next prune would delete up to the whole history. A step back
        is followed at once (it only keeps rows longer).
        """
        wall, mono = time.time(), time.monotonic()
        if self._retention_ref is not None:
            ref_wall, ref_mono = self._retention_ref
            wall = min(wall, ref_wall + (mono - ref_mono))
        self._retention_ref = (wall, mono)
        return wall

    async def _write_status(self, snap: Snapshot) -> None:
        try:
            await self.store.set_status(
                last_snapshot_ts=snap.ts,
                snapshot_processes=len(snap.processes),
                bpf_state=snap.bpf.state if self.bpf else self.bpf_state,
                bpf_tracked=snap.bpf.tracked,
                map_full=snap.bpf.map_full,
                lost_events=snap.bpf.lost_events,
                scan_ms=round(self.scan_ms, 2),
                groups_ms=round(self.groups_ms, 2),
                groups=len(snap.groups),
                scan_errors=snap.scan_errors,
                committed_snapshots=self.committed,
                dropped_snapshots=self.dropped_snapshots,
                notify_failures=getattr(self.deliverer, "failures", 0),
                notify_delivered=getattr(self.deliverer, "delivered", 0),
                **(self.triage.status_fields() if self.triage is not None else {}),
            )
        except Exception as e:
            log.debug("status update failed: %s", e)

    async def watchdog(self) -> None:
        period = self.notifier.watchdog_interval_s
        if not period:
            return
        while not self.stop_event.is_set():
            if self.cycles != self._pinged_cycles:  # only while sampling makes progress
                self._pinged_cycles = self.cycles
                self.notifier.watchdog()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), timeout=period)

    # ---- reload / stop -----------------------------------------------------------------------
    def reload(self, path: str) -> None:
        self.notifier.reloading()
        try:
            new = load_config(path)
            urls = notify_urls(new)
        except ConfigError as e:
            log.error("reload failed, keeping the running configuration: %s", e)
            self.notifier.ready(self.status_line())
            return
        for section in ("bpf", "storage", "prometheus", "groups"):
            old_v, new_v = getattr(self.cfg, section), getattr(new, section)
            if section == "storage":
                new_v = dataclasses.replace(new_v, path=old_v.path) if self.db_override else new_v
            if new_v != old_v:
                log.warning("[%s] changed: takes effect after a restart", section)
        new_procfs = new.procfs
        # sections that need a restart keep their running values (the storage path may come from --db)
        self.cfg = dataclasses.replace(
            new,
            bpf=self.cfg.bpf,
            storage=self.cfg.storage,
            prometheus=self.cfg.prometheus,
            groups=self.cfg.groups,
        )
        self.default_urls = urls
        if self.triage is not None:
            self.triage.update(new.triage, urls)
        self.procfs.smaps = new_procfs.smaps
        self.alerts.update_rules(new.rules)
        setup_logging(new.daemon.log_level)
        log.info("configuration reloaded from %s (%d rules)", path, len(new.rules))
        self.notifier.ready(self.status_line())

    async def close(self) -> None:
        if self.triage is not None:
            await self.triage.close()  # kills running tracer children: their probes go with them
            self.triage = None
        if getattr(self, "procfs", None) is not None:
            self.procfs.close()
        if self.bpf is not None:
            try:
                self.bpf.close()
            except Exception as e:
                log.warning("BPF detach: %s", e)
            self.bpf = None
        if self.deliverer is not None:
            if self._held:
                self._send_held()  # do not sit on a held group at shutdown
            await self.deliverer.close(timeout=2.0)
        if self.metrics is not None:
            self.metrics.stop()
        if self.store is not None:
            await self.store.close()
            self.store = None


async def run(cfg: Config, config_path: str, db_override: bool = False) -> int:
    d = Daemon(cfg, db_override)
    loop = asyncio.get_running_loop()
    try:
        await d.open()
    except Exception as e:
        msg = f"startup failed: {e}"
        log.error("%s", msg)
        d.notifier.status(msg)
        await d.close()
        return 1
    loop.add_signal_handler(signal.SIGTERM, d.stop_event.set)
    loop.add_signal_handler(signal.SIGINT, d.stop_event.set)
    loop.add_signal_handler(signal.SIGHUP, d.reload, config_path)
    tasks = [
        asyncio.create_task(d.sampler(), name="sampler"),
        asyncio.create_task(d.writer(), name="writer"),
        asyncio.create_task(d.deliverer.run(), name="deliverer"),
    ]
    # First snapshot before READY=1 so `status` has data as soon as systemd considers us started.
    d.notifier.ready(d.status_line())
    log.info(
        "memwatchd started: interval %gs, bpf %s, database %s",
        cfg.daemon.interval_s,
        d.bpf_state,
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
    except (TimeoutError, Exception):
        writer.cancel()
        if d.queue:
            log.warning("%d snapshots could not be written before exit", len(d.queue))
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
        notify_urls(cfg)
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
    setup_logging(cfg.daemon.log_level)
    sys.exit(asyncio.run(run(cfg, config_path, db_path is not None)))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
