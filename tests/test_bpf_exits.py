"""Exits against real programs (real probes; root only): none lost in a burst, exact identities, exit
statuses and signals, OOM kills marked, the peak RSS of the last moments kept.

Each test failed before (issue 12): a burst overflowed the ring buffer (exits lost), exits carried no start
time (a reused PID merged unrelated processes), the exit code read 0 (also for an OOM kill), and the peak
RSS between the last /proc scan and the exit was lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memwatchd.models import BpfHealth, BpfPoll, ProcessExit
from tests.bpf_support import build, load_collector, memcg, merged, proc_start_ticks

pytestmark = pytest.mark.bpf

MIB = 1 << 20
BURST = int(os.environ.get("MEMWATCHD_BURST", "10000"))


@pytest.fixture(scope="module")
def collector() -> Iterator[Any]:
    c = load_collector()
    yield c
    c.close()


@pytest.fixture(scope="module")
def workloads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The workloads under names of their own: probes see every process on the machine, and other test
    runs may start the same programs meanwhile; an exit is ours when its comm is one of these names."""
    d = tmp_path_factory.mktemp("exits")
    out = {}
    for name in ("addrspace", "alloc"):
        unique = d / f"{name[:4]}{os.getpid()}"
        build(name, d).rename(unique)
        out[name] = unique
    return out


def _exits_of(collector: Any, pids: set[int], timeout_s: float = 5.0) -> list[ProcessExit]:
    """Poll until an exit of each pid arrived (or the timeout); the first exit of each of those pids (a
    later one is another process that reused the pid: other test runs fork storms on this machine too)."""
    found: dict[int, ProcessExit] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for e in sorted(collector.poll().exits, key=lambda e: e.mono_ns):
            if e.pid in pids:
                found.setdefault(e.pid, e)
        if set(found) >= pids:
            break
        time.sleep(0.05)
    return list(found.values())


def test_a_burst_of_exits_loses_none_and_each_keeps_its_identity(
    collector: Any, workloads: dict[str, Path]
) -> None:
    start = collector.poll()
    w = subprocess.Popen(
        [str(workloads["addrspace"]), "burst", str(BURST)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert w.stdout is not None and w.stdin is not None
    try:
        assert w.stdout.readline() == b"ready\n"
        pids = []
        for line in w.stdout:
            if line == b"end\n":
                break
            pids.append(int(line))
        assert len(pids) == BURST
        alive = {pid: proc_start_ticks(pid) for pid in pids}  # what /proc shows while they live
        status = {pid: i % 200 for i, pid in enumerate(pids)}
        w.stdin.write(b"\n")
        w.stdin.flush()
        done = w.stdout.readline().decode().split()
        assert done[0] == "done"
        print(f"{BURST} exits in {float(done[1]):.3f} s")
    finally:
        w.stdin.close()
        w.wait(timeout=60)
    poll = collector.poll()
    mine = [e for e in poll.exits if e.pid in alive and e.comm == workloads["addrspace"].name]
    assert poll.health.lost_events == start.health.lost_events
    assert len(mine) == BURST, f"{BURST - len(mine)} exits missing"
    assert {e.pid: e.start_ticks for e in mine} == alive  # exactly /proc's field 22, for every one
    assert {e.pid: e.exit_code for e in mine} == status
    assert all(e.final is not None and e.final.mmap_count >= 1 for e in mine)
    # what the daemon would store: one identity per process, none spanning two
    ours = BpfPoll(stats={}, exits=tuple(mine), ooms=(), health=poll.health)
    assert {(p.pid, p.start_ticks) for p in merged(ours).values()} == set(alive.items())


def test_reused_pids_stay_apart(collector: Any, workloads: dict[str, Path]) -> None:
    """More sequential children than PIDs exist: PIDs wrap, and every exit still names its own process."""
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    if pid_max > 100_000:
        pytest.skip(f"pid_max {pid_max}: too many processes to force PID reuse quickly")
    n = pid_max + 2000
    start = collector.poll()
    exits: list[ProcessExit] = []
    child = subprocess.Popen([str(workloads["alloc"]), "churn", str(n)])
    while child.poll() is None:
        time.sleep(0.5)
        exits += collector.poll().exits
    end = collector.poll()
    exits += end.exits
    assert child.returncode == 0
    assert end.health.lost_events == start.health.lost_events
    kids = [e for e in exits if e.comm == workloads["alloc"].name and e.pid != child.pid]
    assert len(kids) == n
    assert len({e.pid for e in kids}) < n  # PIDs were reused ...
    assert len({(e.pid, e.start_ticks) for e in kids}) == n  # ... identities never


def test_exit_status_and_signal(collector: Any) -> None:
    collector.poll()
    coded = subprocess.Popen(["sh", "-c", "exit 7"])
    termed = subprocess.Popen(["sleep", "30"])
    killed = subprocess.Popen(["sleep", "30"])
    time.sleep(0.2)
    termed.send_signal(signal.SIGTERM)
    killed.send_signal(signal.SIGKILL)
    for p in (coded, termed, killed):
        p.wait()
    got = {e.pid: e for e in _exits_of(collector, {coded.pid, termed.pid, killed.pid})}
    assert (got[coded.pid].exit_code, got[coded.pid].exit_signal) == (7, 0)
    assert (got[termed.pid].exit_code, got[termed.pid].exit_signal) == (-15, 15)
    assert (got[killed.pid].exit_code, got[killed.pid].exit_signal) == (-9, 9)
    assert not any(e.oom_killed for e in got.values())


def test_oom_kill_is_sigkill_and_marked(collector: Any, workloads: dict[str, Path]) -> None:
    collector.poll()
    with memcg("bpfexit", 32 * MIB) as cg:
        procs = str(cg / "cgroup.procs")

        def enter_cgroup() -> None:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        hog = subprocess.Popen(
            [str(workloads["alloc"]), "hog", "512"],
            preexec_fn=enter_cgroup,  # noqa: PLW1509 - no threads touch the child state
        )
        assert hog.wait(timeout=30) == -signal.SIGKILL
    (e,) = _exits_of(collector, {hog.pid})
    assert (e.exit_code, e.exit_signal, e.oom_killed) == (-9, 9, True)
    assert e.hwm_kb is not None and 16 * 1024 <= e.hwm_kb <= 40 * 1024  # up to the limit


def test_a_process_that_never_mapped_while_tracked_still_reports_its_exit() -> None:
    sleeper = subprocess.Popen(["sleep", "30"])  # maps its libraries before the probes exist
    try:
        time.sleep(1.1)  # older than the minimum age for exits without counters
        ticks = proc_start_ticks(sleeper.pid)
        fresh = load_collector()
        try:
            sleeper.terminate()
            sleeper.wait()
            (e,) = _exits_of(fresh, {sleeper.pid})
            assert e.final is None
            assert (e.start_ticks, e.exit_signal, e.comm) == (ticks, 15, "sleep")
        finally:
            fresh.close()
    finally:
        sleeper.kill()
        sleeper.wait()


PEAK_THEN_EXIT = """
import mmap
m = mmap.mmap(-1, 200 << 20)
for off in range(0, 200 << 20, 4096):
    m[off] = 1
m.close()
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
print(hwm, flush=True)
"""


def test_exit_carries_the_peak_rss_of_the_last_moments(collector: Any) -> None:
    # 200 MiB touched and released within a fraction of a second, then exit: no /proc scan saw the peak
    collector.poll()
    p = subprocess.Popen([sys.executable, "-c", PEAK_THEN_EXIT], stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=30)
    hwm_seen = int(out)  # VmHWM just before the exit, as the process itself read it
    assert hwm_seen >= 200 * 1024
    (e,) = _exits_of(collector, {p.pid})
    assert e.hwm_kb is not None and hwm_seen <= e.hwm_kb <= hwm_seen + 4096
    row = merged_exit(e)
    assert row.exited and row.hwm_kb == e.hwm_kb  # what the store keeps for the exited process


def merged_exit(e: ProcessExit) -> Any:
    return merged(BpfPoll(stats={}, exits=(e,), ooms=(), health=BpfHealth("active")))[e.pid]


def test_live_entries_carry_the_start_time_proc_shows(collector: Any) -> None:
    sleepers = [subprocess.Popen(["sleep", "30"]) for _ in range(50)]
    try:
        time.sleep(0.3)
        stats = collector.poll().stats
        compared = 0
        for pid, st in stats.items():
            try:
                ticks = proc_start_ticks(pid)
            except OSError:
                continue  # ended meanwhile
            assert st.start_ticks == ticks, pid
            compared += 1
        assert compared >= 50 and {s.pid for s in sleepers} <= set(stats)
    finally:
        for s in sleepers:
            s.kill()
            s.wait()


def test_without_btf_exits_still_arrive_with_unknown_identity_and_status() -> None:
    bare = load_collector(btf=False)
    try:
        p = subprocess.Popen(["sh", "-c", "exit 5"])
        p.wait()
        (e,) = _exits_of(bare, {p.pid})
        assert e.final is not None and e.final.mmap_count > 0  # counters as before
        assert (e.start_ticks, e.exit_code, e.exit_signal, e.oom_killed, e.hwm_kb) == (0, 0, 0, False, None)
    finally:
        bare.close()
