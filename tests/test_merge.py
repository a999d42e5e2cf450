"""merge(): both sources per identity, one-sided processes, exits, deltas, PID reuse. Pure, so exhaustive."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from memwatchd.merge import merge
from memwatchd.models import BpfHealth, BpfPoll, BpfStats, MemInfo, ProcessExit, ProcSample, ProcScan

MEM = MemInfo(mem_total_kb=1000, mem_available_kb=500, swap_total_kb=0, swap_free_kb=0)


def sample(
    pid: int, start: int = 100, rss: int = 1000, comm: str = "app", hwm: int | None = 1200
) -> ProcSample:
    return ProcSample(
        pid=pid,
        start_ticks=start,
        comm=comm,
        ppid=1,
        state="S",
        rss_kb=rss,
        vm_kb=rss * 4,
        hwm_kb=hwm,
        anon_kb=rss // 2,
        swap_kb=0,
        unit="app.service",
        cgroup="/system.slice/app.service",
    )


def stats(tgid: int, n: int = 1, size: int = 4096) -> BpfStats:
    return BpfStats(
        tgid=tgid,
        mmap_count=n,
        mmap_bytes=n * size,
        munmap_count=0,
        munmap_bytes=0,
        brk_count=1,
        brk_bytes=8192,
        last_update_ns=1,
        mapped_bytes=n * size + 8192,
    )


def scan(*samples: ProcSample) -> ProcScan:
    return ProcScan(samples=samples, meminfo=MEM, boot_time=1_700_000_000.0, clk_tck=100)


def poll(*s: BpfStats, exits: tuple[ProcessExit, ...] = ()) -> BpfPoll:
    return BpfPoll(
        stats={x.tgid: x for x in s}, exits=exits, ooms=(), health=BpfHealth(state="active", tracked=len(s))
    )


def test_both_sources_merge_per_process() -> None:
    snap = merge(scan(sample(10)), poll(stats(10, 3)), None, ts=1000.0, mono=5.0)
    (p,) = snap.processes
    assert (p.pid, p.start_ticks, p.rss_kb, p.mmap_count, p.mmap_bytes, p.brk_bytes) == (
        10,
        100,
        1000,
        3,
        12288,
        8192,
    )
    assert p.start_time == 1_700_000_001.0
    assert p.mapped_bytes == 12288 + 8192
    assert p.d_rss_kb is None and p.dt_s is None  # first sighting has no deltas
    assert snap.bpf.state == "active" and snap.meminfo == MEM


def test_one_sided_processes_still_appear() -> None:
    snap = merge(scan(sample(10)), poll(stats(20)), None, ts=1.0, mono=1.0)
    by_pid = {p.pid: p for p in snap.processes}
    assert by_pid[10].mmap_count is None and by_pid[10].rss_kb == 1000
    assert by_pid[20].rss_kb is None and by_pid[20].mmap_count == 1


def test_proc_only_when_bpf_disabled() -> None:
    snap = merge(
        scan(sample(10)), None, None, ts=1.0, mono=1.0, bpf_health=BpfHealth(state="disabled in config")
    )
    assert snap.processes[0].mmap_count is None
    assert snap.bpf.state == "disabled in config"


def test_deltas_against_same_identity() -> None:
    a = merge(scan(sample(10, rss=1000)), poll(stats(10, 1)), None, ts=1.0, mono=1.0)
    b = merge(scan(sample(10, rss=1500)), poll(stats(10, 4)), a, ts=4.0, mono=4.0)
    (p,) = b.processes
    assert (p.d_rss_kb, p.d_mmap_count, p.d_mmap_bytes, p.dt_s) == (500, 3, 3 * 4096, 3.0)


def test_pid_reuse_never_joins_two_series() -> None:
    a = merge(scan(sample(10, start=100, rss=1000)), poll(stats(10, 5)), None, ts=1.0, mono=1.0)
    b = merge(scan(sample(10, start=999, rss=50)), poll(stats(10, 1)), a, ts=4.0, mono=4.0)
    (p,) = b.processes
    assert p.start_ticks == 999 and p.d_rss_kb is None and p.d_mmap_count is None


def test_exit_delivers_final_counters_once() -> None:
    a = merge(scan(sample(10)), poll(stats(10, 2)), None, ts=1.0, mono=1.0)
    final = stats(10, 7)
    b = merge(
        scan(),
        poll(exits=(ProcessExit(pid=10, comm="app", exit_code=0, final=final, mono_ns=2),)),
        a,
        ts=4.0,
        mono=4.0,
    )
    (p,) = b.processes
    assert p.exited and p.mmap_count == 7 and p.start_ticks == 100 and p.d_mmap_count == 5
    c = merge(scan(), poll(), b, ts=7.0, mono=7.0)
    assert c.processes == ()


def test_exit_after_scan_is_one_row_for_the_identity() -> None:
    a = merge(scan(sample(10)), poll(stats(10, 2)), None, ts=1.0, mono=1.0)
    final = stats(10, 3)
    b = merge(scan(sample(10)), poll(exits=(ProcessExit(10, "app", 0, final, 2),)), a, ts=4.0, mono=4.0)
    (p,) = b.processes
    assert p.exited and p.rss_kb == 1000 and p.mmap_count == 3


def test_exit_of_old_identity_while_pid_reused() -> None:
    a = merge(scan(sample(10, start=100)), poll(stats(10, 2)), None, ts=1.0, mono=1.0)
    b = merge(
        scan(sample(10, start=500)),
        poll(exits=(ProcessExit(10, "app", 0, stats(10, 9), 2),)),
        a,
        ts=4.0,
        mono=4.0,
    )
    keys = sorted((p.start_ticks, p.exited) for p in b.processes)
    assert keys == [(100, True), (500, False)]


def test_missing_hwm_carries_forward_from_same_identity() -> None:
    a = merge(scan(sample(10, hwm=2000)), None, None, ts=1.0, mono=1.0)
    b = merge(scan(sample(10, hwm=None)), None, a, ts=4.0, mono=4.0)
    assert b.processes[0].hwm_kb == 2000


@given(
    st.lists(st.tuples(st.integers(1, 50), st.integers(1, 3)), max_size=40),
    st.lists(st.integers(1, 60), max_size=40),
)
def test_every_identity_appears_exactly_once(procs: list[tuple[int, int]], bpf_pids: list[int]) -> None:
    uniq = {pid: start for pid, start in procs}
    samples = tuple(sample(pid, start) for pid, start in uniq.items())
    snap = merge(scan(*samples), poll(*(stats(p) for p in set(bpf_pids))), None, ts=1.0, mono=1.0)
    keys = [p.key for p in snap.processes]
    assert len(keys) == len(set(keys))
    assert {p.pid for p in snap.processes} == set(uniq) | set(bpf_pids)
