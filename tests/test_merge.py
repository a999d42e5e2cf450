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


def test_exits_with_a_start_time_join_only_their_own_identity() -> None:
    # seen only at exit, pid reused within the interval, and no previous snapshot to go by: the start
    # time alone keeps the three processes apart, and the live one is not marked exited
    ex = (
        ProcessExit(10, "a", 0, stats(10, 1), 2, start_ticks=300, hwm_kb=5000),
        ProcessExit(10, "b", 1, stats(10, 2), 3, start_ticks=400, hwm_kb=6000),
    )
    b = merge(scan(sample(10, start=500)), poll(exits=ex), None, ts=4.0, mono=4.0)
    rows = sorted((p.start_ticks, p.start_time, p.exited, p.hwm_kb, p.comm) for p in b.processes)
    assert rows == [
        (300, 1_700_000_003.0, True, 5000, "a"),
        (400, 1_700_000_004.0, True, 6000, "b"),
        (500, 1_700_000_005.0, False, 1200, "app"),
    ]


def test_exit_after_scan_keeps_the_peak_rss_at_the_exit() -> None:
    a = merge(scan(sample(10)), poll(stats(10, 2)), None, ts=1.0, mono=1.0)
    e = ProcessExit(10, "app", -9, None, 2, start_ticks=100, exit_signal=9, oom_killed=True, hwm_kb=9999)
    (p,) = merge(scan(sample(10)), poll(stats(10, 2), exits=(e,)), a, ts=4.0, mono=4.0).processes
    assert p.exited and p.hwm_kb == 9999 and p.mmap_count == 2  # counters kept when the exit has none


def test_a_stats_entry_with_another_start_time_is_not_attached() -> None:
    other = BpfStats(10, 5, 5 * 4096, 0, 0, 0, 0, 1, start_ticks=77)
    (p,) = merge(scan(sample(10, start=100)), poll(other), None, ts=1.0, mono=1.0).processes
    assert p.start_ticks == 100 and p.mmap_count is None


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


# ---- Merger: work in proportion to change ------------------------------------------------------------------

from dataclasses import fields  # noqa: E402

from memwatchd.merge import Merger  # noqa: E402
from memwatchd.models import Snapshot  # noqa: E402


def _values(p: object) -> tuple[object, ...]:
    return tuple(getattr(p, f.name) for f in fields(p) if f.name != "dt_s")  # type: ignore[arg-type]


def test_merger_reuses_the_record_of_an_unchanged_process() -> None:
    m = Merger()
    s10, s11, b10 = sample(10), sample(11), stats(10, 2)
    a = m.merge(scan(s10, s11), poll(b10), ts=1.0, mono=1.0)
    assert a.fresh == a.processes and a.gone == () and a.base_seq is None
    b = m.merge(scan(s10, s11), poll(b10), ts=4.0, mono=4.0)  # same objects: deltas become 0 once
    assert b.base_seq == a.seq and len(b.fresh or ()) == 2
    assert all(p.d_rss_kb == 0 and p.dt_s == 3.0 for p in b.processes)
    c = m.merge(scan(s10, s11), poll(b10), ts=7.0, mono=7.0)
    assert c.fresh == () and c.gone == ()
    assert all(x is y for x, y in zip(b.processes, c.processes, strict=True))  # no new objects
    s11b = sample(11, rss=2000)
    d = m.merge(scan(s10, s11b), poll(b10), ts=10.0, mono=10.0)
    assert [p.pid for p in d.fresh or ()] == [11] and d.processes[0] is c.processes[0]
    assert d.processes[1].d_rss_kb == 1000
    e = m.merge(scan(s11b), poll(), ts=13.0, mono=13.0)  # pid 10 left, and with it its BPF entry
    assert e.gone == ((10, 100),)


def test_merger_reports_pid_reuse_as_gone_and_fresh() -> None:
    m = Merger()
    m.merge(scan(sample(10, start=100)), poll(), ts=1.0, mono=1.0)
    b = m.merge(scan(sample(10, start=200)), poll(), ts=4.0, mono=4.0)
    assert b.gone == ((10, 100),)
    assert [(p.pid, p.start_ticks, p.d_rss_kb) for p in b.fresh or ()] == [(10, 200, None)]


@given(
    st.lists(
        st.lists(st.tuples(st.integers(1, 6), st.integers(1, 2), st.integers(0, 2)), max_size=6),
        min_size=1,
        max_size=8,
    ),
    st.lists(st.lists(st.integers(1, 6), max_size=4), min_size=8, max_size=8),
)
def test_merger_matches_merge_and_its_changes_add_up(
    steps: list[list[tuple[int, int, int]]], exits: list[list[int]]
) -> None:
    """Same records as the stateless merge() (dt_s aside), and prev - gone + fresh == this snapshot."""
    m = Merger()
    prev: Snapshot | None = None
    m_prev: Snapshot | None = None
    cache: dict[tuple[int, int, int], ProcSample] = {}
    bcache: dict[tuple[int, int], BpfStats] = {}
    for i, step in enumerate(steps):
        by_pid = {pid: (start, size) for pid, start, size in step}
        samples = tuple(
            cache.setdefault((pid, st_, sz), sample(pid, start=st_, rss=1000 + sz))
            for pid, (st_, sz) in by_pid.items()
        )
        bstats = tuple(
            bcache.setdefault((pid, sz), stats(pid, sz + 1)) for pid, (_, sz) in by_pid.items() if pid % 2
        )
        ex = tuple(
            ProcessExit(pid, "app", 0, bcache.setdefault((pid, 9), stats(pid, 9)), 1) for pid in exits[i]
        )
        sc, pl = scan(*samples), poll(*bstats, exits=ex)
        mono = 3.0 * (i + 1)
        want = merge(sc, pl, prev, ts=mono, mono=mono)
        got = m.merge(sc, pl, ts=mono, mono=mono)
        assert [_values(p) for p in got.processes] == [_values(p) for p in want.processes]
        keys = [(p.pid, p.start_ticks) for p in got.processes]
        if m_prev is not None:
            fresh_ids = {id(p) for p in got.fresh or ()}
            old_ids = {id(p) for p in m_prev.processes}
            for p in got.processes:  # every record is either fresh or last snapshot's very object
                assert id(p) in fresh_ids or id(p) in old_ids
            before = {(p.pid, p.start_ticks) for p in m_prev.processes}
            assert set(got.gone) == before - set(keys)
        prev, m_prev = want, got
