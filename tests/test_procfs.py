"""The /proc collector against the real /proc (child processes with known memory) and fake trees."""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.fakeproc import PF_KTHREAD, FakeProc, stat_line, status_text
from hypothesis import given
from hypothesis import strategies as st

from memwatchd.collectors.procfs import (
    ProcfsCollector,
    parse_smaps_rollup,
    parse_stat,
    parse_status,
    read_meminfo,
    unit_from_cgroup,
)
from memwatchd.models import ProcSample, ProcScan
from memwatchd.text import from_kernel, to_kernel

MIB = 1024 * 1024

# A child that holds `data` fully written (so resident) and answers commands on stdin:
# "rss" prints its own VmRSS in kB, "grow N" writes N more MiB, "exit" leaves.
CHILD = r"""
import sys
def vmrss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
keep = [b"x" * (int(sys.argv[1]) << 20)]
print("ready", flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "rss":
        print(vmrss(), flush=True)
    elif cmd[0] == "grow":
        keep.append(b"y" * (int(cmd[1]) << 20))
        print("grown", flush=True)
    elif cmd[0] == "exit":
        break
"""


class Child:
    def __init__(self, mib: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(mib)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.ask(None) == "ready"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ask(self, cmd: str | None) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if cmd is not None:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def child() -> Iterator[Child]:
    c = Child(64)
    try:
        yield c
    finally:
        c.stop()


def sample_of(scan: ProcScan, pid: int) -> ProcSample:
    found = [s for s in scan.samples if s.pid == pid]
    assert len(found) == 1, f"pid {pid} in scan {len(found)} times"
    return found[0]


# --- real /proc -------------------------------------------------------------------------------------


def test_real_rss_matches_child_own_view(child: Child) -> None:
    with ProcfsCollector() as coll:
        before = int(child.ask("rss"))
        scan = coll.scan(time.monotonic())
        after = int(child.ask("rss"))
        s = sample_of(scan, child.pid)
        assert before >= 64 * 1024
        assert abs(s.rss_kb - before) <= 0.05 * before and abs(s.rss_kb - after) <= 0.05 * after
        assert s.hwm_kb is not None and s.hwm_kb >= s.rss_kb * 0.95
        assert s.anon_kb >= 60 * 1024
        assert s.vm_kb >= s.rss_kb
        assert s.comm == "python3" or s.comm.startswith("python")
        assert s.ppid == os.getpid()
        with open(f"/proc/{child.pid}/stat", "rb") as f:
            raw = f.read()
        assert s.start_ticks == int(raw[raw.rfind(b")") + 2 :].split()[19])
        assert child.pid in coll.live_pids
        assert scan.meminfo is not None and scan.meminfo.mem_total_kb > 0
        assert scan.clk_tck == os.sysconf("SC_CLK_TCK")
        assert abs(scan.boot_time - (time.time() - time.clock_gettime(time.CLOCK_BOOTTIME))) < 5


def test_real_kernel_threads_absent() -> None:
    with ProcfsCollector() as coll:
        scan = coll.scan(time.monotonic())
    kthreads = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = parse_stat(f.read())
            except (OSError, ValueError):
                continue
            if stat.flags & PF_KTHREAD:
                kthreads.add(stat.pid)
    pids = {s.pid for s in scan.samples}
    assert not pids & kthreads
    assert 2 not in pids or not kthreads  # kthreadd, when this PID namespace shows kernel threads
    assert os.getpid() in pids


def test_real_memory_change_seen_next_scan(child: Child) -> None:
    with ProcfsCollector(full_rescan_s=3600) as coll:
        t = time.monotonic()
        first = sample_of(coll.scan(t), child.pid)
        unchanged = sample_of(coll.scan(t + 1), child.pid)
        assert unchanged is first  # nothing moved: the same immutable sample, nothing re-read
        assert child.ask("grow 32") == "grown"
        grown = sample_of(coll.scan(t + 2), child.pid)  # long before any full rescan
        own = int(child.ask("rss"))
        assert grown.rss_kb - first.rss_kb >= 30 * 1024
        assert abs(grown.rss_kb - own) <= 0.05 * own
        assert grown.hwm_kb is not None and grown.hwm_kb >= grown.rss_kb * 0.95  # status was re-read
        assert grown.anon_kb - first.anon_kb >= 30 * 1024
        assert grown.start_ticks == first.start_ticks


def _fds_on(path: str) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the fd listdir itself used is gone by now
            n += os.readlink(f"/proc/self/fd/{fd}") == path
    return n


def test_real_exit_drops_identity_and_fd(child: Child) -> None:
    statm = f"/proc/{child.pid}/statm"
    with ProcfsCollector() as coll:
        coll.scan(time.monotonic())
        assert child.pid in coll.live_pids
        assert _fds_on(statm) == 1
        child.stop()
        scan = coll.scan(time.monotonic())
        assert child.pid not in coll.live_pids
        assert all(s.pid != child.pid for s in scan.samples)
        assert _fds_on(statm) == 0
    assert coll.held_fds == 0


def test_real_churn_keeps_state_bounded() -> None:
    with ProcfsCollector() as coll:
        coll.scan(time.monotonic())
        base = coll.held_fds
        for round_ in range(5):
            kids = [subprocess.Popen(["sleep", "30"]) for _ in range(20)]
            try:
                scan = coll.scan(time.monotonic())
                assert {k.pid for k in kids} <= {s.pid for s in scan.samples}
            finally:
                for k in kids:
                    k.kill()
                    k.wait()
            coll.scan(time.monotonic())
            assert coll.held_fds <= base + 5, f"round {round_}"
            assert len(coll._cache) == len(coll.live_pids)


def test_real_smaps_pss_uss(child: Child) -> None:
    with ProcfsCollector(smaps=True) as coll:
        s = sample_of(coll.scan(time.monotonic()), child.pid)
    assert s.pss_kb is not None and s.uss_kb is not None
    assert 60 * 1024 <= s.uss_kb <= s.rss_kb
    assert s.uss_kb <= s.pss_kb <= s.rss_kb


def test_real_fd_cap_falls_back_to_path_reads(child: Child) -> None:
    with ProcfsCollector(max_held_fds=3) as coll:
        scan = coll.scan(time.monotonic())
        assert coll.held_fds <= 3
        assert sample_of(scan, child.pid).rss_kb >= 60 * 1024
        assert len(scan.samples) > 3


# --- fake /proc: hostile content ----------------------------------------------------------------------


def hostile_tree(root: Path) -> FakeProc:
    fp = FakeProc(root)
    fp.add(100, b"my prog", cgroup="0::/system.slice/nginx.service\n")
    fp.add(101, b"a) (b", cgroup="0::/user.slice/user-1000.slice/user@1000.service/app.slice/foo.scope\n")
    fp.add(102, b"\xff\xfe bad\x01", cgroup="0::/\n")
    fp.add(103, b"kworker?", cmdline=b"")
    fp.add(104, b"defunct", state="Z", vsize_kb=0, rss_pages=0, status=status_text(None, None, None))
    fp.add(105, b"kthreadd", ppid=0, flags=PF_KTHREAD | 0x40, vsize_kb=0, rss_pages=0, cgroup=None)
    (fp.add(106, b"vanished") / "status").unlink()  # stat still there, status gone: exited mid-scan
    d = fp.add(107, b"oddstatus")
    (d / "status").unlink()
    (d / "status").mkdir()  # reading it fails (EISDIR)
    fp.add(
        108,
        b"v1",
        cgroup="12:memory:/system.slice/db.service\n11:cpu,cpuacct:/system.slice/db.service\n"
        "1:name=systemd:/system.slice/db.service\n0::/\n",
    )
    (fp.add(109, b"nocgroup", cgroup=None))
    (fp.add(110, b"garbage") / "stat").write_bytes(b"110 (garbage) S 1 not numbers\n")
    fp.add(111, b"trunc", status=b"Name:\ttrunc\nVmHWM:\tlots kB\nRssAnon:")
    for name in ("self", "sys", "12abc", "\u0663", "net"):
        (root / name).mkdir()
    (root / "meminfo").write_bytes(b"MemTotal: lots\n\x00\xff garbage\n")
    return fp


def test_fake_hostile_content(tmp_path: Path) -> None:
    hostile_tree(tmp_path)
    with ProcfsCollector(str(tmp_path)) as coll:
        scan = coll.scan(100.0)
        live = coll.live_pids
    by_pid = {s.pid: s for s in scan.samples}
    assert set(by_pid) == {100, 101, 102, 103, 104, 108, 109, 111}
    assert scan.errors == 3  # 106 (status gone), 107 (status unreadable), 110 (stat garbage)
    assert live == set(by_pid) | {105}  # the kernel thread was read, just not reported
    assert scan.meminfo is None
    assert scan.boot_time == 1700000000.0
    assert by_pid[100].comm == "my prog" and by_pid[100].unit == "nginx.service"
    assert by_pid[100].rss_kb == 1024 and by_pid[100].vm_kb == 10240
    assert (by_pid[100].hwm_kb, by_pid[100].anon_kb, by_pid[100].swap_kb) == (2048, 512, 0)
    assert by_pid[101].comm == "a) (b" and by_pid[101].unit == "foo.scope"
    assert by_pid[102].comm == "\\xff\\xfe bad\x01" and by_pid[102].unit is None and by_pid[102].cgroup == "/"
    zombie = by_pid[104]
    assert (zombie.state, zombie.rss_kb, zombie.hwm_kb, zombie.anon_kb, zombie.swap_kb) == (
        "Z",
        0,
        None,
        0,
        None,
    )
    assert by_pid[108].unit == "db.service" and by_pid[108].cgroup == "/system.slice/db.service"
    assert by_pid[109].unit is None and by_pid[109].cgroup is None
    assert (by_pid[111].hwm_kb, by_pid[111].anon_kb, by_pid[111].swap_kb) == (None, 0, None)


def test_fake_hostile_content_with_held_fds(tmp_path: Path) -> None:
    hostile_tree(tmp_path)
    with ProcfsCollector(str(tmp_path), hold_fds=True) as coll:
        scan = coll.scan(100.0)
        assert {s.pid for s in scan.samples} == {100, 101, 102, 103, 104, 108, 109, 111}
        assert scan.errors == 3
        assert coll.held_fds == len(coll.live_pids)
    assert coll.held_fds == 0


def test_fake_root_vanishes_between_scans(tmp_path: Path) -> None:
    fp = FakeProc(tmp_path)
    for pid in range(300, 310):
        fp.add(pid)
    with ProcfsCollector(str(tmp_path)) as coll:
        assert len(coll.scan(0.0).samples) == 10
        for pid in range(300, 305):
            fp.remove(pid)
        scan = coll.scan(3.0)
        assert {s.pid for s in scan.samples} == set(range(305, 310)) == coll.live_pids
        assert scan.errors == 0


def _capset_drop_dac() -> None:
    """Drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from this (forked) process's effective set."""
    libc = ctypes.CDLL(None, use_errno=True)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [
            ("effective", ctypes.c_uint32),
            ("permitted", ctypes.c_uint32),
            ("inheritable", ctypes.c_uint32),
        ]

    hdr, data = Header(0x20080522, 0), (Data * 2)()
    if libc.capget(ctypes.byref(hdr), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    data[0].effective &= ~((1 << 1) | (1 << 2))
    if libc.capset(ctypes.byref(hdr), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


@pytest.mark.skipif(os.geteuid() != 0, reason="unreadable-file case is built by dropping root's DAC override")
def test_fake_unreadable_files_eacces(tmp_path: Path) -> None:
    fp = FakeProc(tmp_path)
    fp.add(400)
    (fp.add(401) / "status").chmod(0)
    (fp.add(402) / "stat").chmod(0)
    (fp.add(403) / "cgroup").chmod(0)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            _capset_drop_dac()
            with ProcfsCollector(str(tmp_path)) as coll:
                scan = coll.scan(0.0)
            units = {s.pid: s.unit for s in scan.samples}
            os.write(w, repr((sorted(units), scan.errors, units.get(403, "absent"))).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    out = os.read(r, 4096).decode()
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert out == repr(([400, 403], 2, None))


# --- fake /proc: the incremental design stays correct ---------------------------------------------------


def test_fake_pid_reuse_is_a_new_identity(tmp_path: Path) -> None:
    fp = FakeProc(tmp_path)
    fp.add(500, b"old", start=1000, status=status_text(hwm=1111), cgroup="0::/system.slice/a.service\n")
    with ProcfsCollector(str(tmp_path), full_rescan_s=3600) as coll:
        old = sample_of(coll.scan(0.0), 500)
        assert (old.start_ticks, old.hwm_kb, old.unit) == (1000, 1111, "a.service")
        # Same PID, same sizes, a different process: rewritten in place, and as a new directory.
        fp.add(500, b"new", start=2000, status=status_text(hwm=2222), cgroup="0::/system.slice/b.service\n")
        new = sample_of(coll.scan(3.0), 500)
        assert (new.start_ticks, new.comm, new.hwm_kb, new.unit) == (2000, "new", 2222, "b.service")
        fp.remove(500)
        fp.add(500, b"newer", start=3000, status=status_text(hwm=3333), cgroup="0::/system.slice/c.service\n")
        newer = sample_of(coll.scan(6.0), 500)
        assert (newer.start_ticks, newer.hwm_kb, newer.unit) == (3000, 3333, "c.service")


def test_fake_status_reread_only_when_sizes_change_or_rescan_due(tmp_path: Path) -> None:
    fp = FakeProc(tmp_path)
    fp.add(600, rss_pages=256, status=status_text(hwm=1000, anon=500, swap=0))
    with ProcfsCollector(str(tmp_path), full_rescan_s=60.0) as coll:
        assert sample_of(coll.scan(0.0), 600).hwm_kb == 1000
        # status alone changes (sizes in stat do not): not re-read before the full rescan.
        (tmp_path / "600" / "status").write_bytes(status_text(hwm=1500, anon=600, swap=7))
        (tmp_path / "600" / "cgroup").write_text("0::/system.slice/moved.service\n")
        same = sample_of(coll.scan(3.0), 600)
        assert (same.hwm_kb, same.anon_kb, same.swap_kb, same.unit) == (1000, 500, 0, "app.service")
        # rss changes: status is re-read on the next scan, cgroup still waits for the full rescan.
        fp.add(
            600,
            rss_pages=512,
            status=status_text(hwm=2048, anon=1800, swap=7),
            cgroup="0::/system.slice/moved.service\n",
        )
        grown = sample_of(coll.scan(6.0), 600)
        assert (grown.rss_kb, grown.hwm_kb, grown.anon_kb, grown.swap_kb) == (2048, 2048, 1800, 7)
        assert grown.unit == "app.service"
        # Past full_rescan_s everything is re-read even though nothing in stat moved.
        (tmp_path / "600" / "status").write_bytes(status_text(hwm=4096, anon=1800, swap=9))
        late = sample_of(coll.scan(61.0), 600)
        assert (late.hwm_kb, late.swap_kb, late.unit) == (4096, 9, "moved.service")


def test_fake_zombie_keeps_the_cgroup_it_ran_in_through_a_full_rescan(tmp_path: Path) -> None:
    """cgroup v1's /proc/PID/cgroup shows "/" for a zombie: a full rescan while the process is a zombie keeps
    the labels it ran under (failed before: it was relabelled "/", and so was its stored history)."""
    fp = FakeProc(tmp_path)
    fp.add(660, cgroup="4:memory:/app\n1:name=systemd:/system.slice/app.service\n")
    with ProcfsCollector(str(tmp_path), full_rescan_s=60.0) as coll:
        alive = sample_of(coll.scan(0.0), 660)
        assert (alive.unit, alive.cgroup) == ("app.service", "/app")
        fp.add(
            660,
            state="Z",
            rss_pages=0,
            vsize_kb=0,
            status=b"Name:\tproc\n",
            cgroup="4:memory:/\n1:name=systemd:/\n",
        )
        zombie = sample_of(coll.scan(61.0), 660)
        assert zombie.state == "Z"
        assert (zombie.unit, zombie.cgroup) == ("app.service", "/app")
        # a process first seen as a zombie has only the file to go by
        fp.add(661, state="Z", rss_pages=0, vsize_kb=0, status=b"Name:\tproc\n", cgroup="4:memory:/\n")
        assert sample_of(coll.scan(62.0), 661).cgroup == "/"


def test_fake_vsize_change_rereads_status(tmp_path: Path) -> None:
    fp = FakeProc(tmp_path)
    fp.add(650, vsize_kb=10240, status=status_text(hwm=1000))
    with ProcfsCollector(str(tmp_path), full_rescan_s=3600) as coll:
        coll.scan(0.0)
        fp.add(650, vsize_kb=20480, status=status_text(hwm=1001))
        s = sample_of(coll.scan(3.0), 650)
        assert (s.vm_kb, s.hwm_kb) == (20480, 1001)


def test_fake_full_rescans_are_staggered(tmp_path: Path) -> None:
    fp = FakeProc(tmp_path)
    for pid in range(1000, 1200):
        fp.add(pid)
    with ProcfsCollector(str(tmp_path), full_rescan_s=60.0) as coll:
        coll.scan(0.0)
        due = sorted(e.next_full for e in coll._cache.values())
    assert due[0] >= 30.0 and due[-1] <= 60.0
    # No 3 s interval holds more than a fifth of them.
    per_interval = [sum(1 for d in due if k * 3 <= d < (k + 1) * 3) for k in range(21)]
    assert max(per_interval) <= len(due) // 5


def test_fake_cache_bounded_under_churn(tmp_path: Path) -> None:
    fp = FakeProc(tmp_path)
    with ProcfsCollector(str(tmp_path)) as coll:
        for round_ in range(10):
            pids = range(2000 + round_ * 20, 2000 + round_ * 20 + 20)
            for pid in pids:
                fp.add(pid, start=round_)
            scan = coll.scan(round_ * 3.0)
            assert len(scan.samples) == 20 and len(coll._cache) == 20
            assert coll.live_pids == set(pids)
            for pid in pids:
                fp.remove(pid)


def test_fake_smaps_rollup(tmp_path: Path) -> None:
    fp = FakeProc(tmp_path)
    rollup = (
        b"00400000-7fff0000 ---p 00000000 00:00 0    [rollup]\nRss:    1024 kB\nPss:     700 kB\n"
        b"Pss_Anon:    500 kB\nShared_Clean:    200 kB\nPrivate_Clean:   100 kB\nPrivate_Dirty:   400 kB\n"
    )
    fp.add(700, smaps=rollup)
    fp.add(701)  # no smaps_rollup
    with ProcfsCollector(str(tmp_path), smaps=True) as coll:
        scan = coll.scan(0.0)
    assert (sample_of(scan, 700).pss_kb, sample_of(scan, 700).uss_kb) == (700, 500)
    assert (sample_of(scan, 701).pss_kb, sample_of(scan, 701).uss_kb) == (None, None)


def test_missing_root_raises(tmp_path: Path) -> None:
    with ProcfsCollector(str(tmp_path / "nope")) as coll, pytest.raises(FileNotFoundError):
        coll.scan(0.0)


# --- pure parsers ------------------------------------------------------------------------------------


@given(
    comm=st.binary(max_size=64),
    pid=st.integers(1, 4194304),
    ppid=st.integers(0, 4194304),
    start=st.integers(0, 2**63),
    state=st.sampled_from("RSDZTtXIP"),
    flags=st.integers(0, 2**32 - 1),
)
def test_parse_stat_any_comm(comm: bytes, pid: int, ppid: int, start: int, state: str, flags: int) -> None:
    s = parse_stat(
        stat_line(pid, comm, state=state, ppid=ppid, start=start, flags=flags, vsize_kb=8, rss_pages=3)
    )
    assert s.comm == from_kernel(comm) and to_kernel(s.comm) == comm  # lossless (memwatchd.text)
    assert (s.pid, s.state, s.ppid, s.flags, s.start_ticks, s.vsize, s.rss_pages) == (
        pid, state, ppid, flags, start, 8192, 3)  # fmt: skip


@pytest.mark.parametrize("data", [b"", b"12", b"12 (x", b"12 (x) S 1 2", b"x (y) S " + b"1 " * 30, b")("])
def test_parse_stat_rejects_malformed(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_stat(data)


def test_parse_stat_real_self() -> None:
    with open("/proc/self/stat", "rb") as f:
        s = parse_stat(f.read())
    assert s.pid == os.getpid() and s.ppid == os.getppid() and s.state == "R"


@pytest.mark.parametrize(
    ("text", "unit", "cgroup"),
    [
        ("0::/system.slice/nginx.service\n", "nginx.service", "/system.slice/nginx.service"),
        ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/foo.scope\n", "foo.scope",
         "/user.slice/user-1000.slice/user@1000.service/app.slice/foo.scope"),
        ("0::/user.slice/user-1000.slice/user@1000.service/init.scope\n", "init.scope",
         "/user.slice/user-1000.slice/user@1000.service/init.scope"),
        ("0::/system.slice/docker-abc.scope/inner\n", "docker-abc.scope",
         "/system.slice/docker-abc.scope/inner"),
        ("0::/system.slice/_cpu.service\n", "cpu.service", "/system.slice/_cpu.service"),
        ("0::/\n", None, "/"),
        ("0::/user.slice\n", None, "/user.slice"),
        ("", None, None),
        ("garbage\n\n:\n", None, None),
        (  # v1: unit from name=systemd, cgroup from the memory controller
            "12:memory:/system.slice/db.service\n3:cpu,cpuacct:/\n1:name=systemd:/system.slice/db.service\n",
            "db.service", "/system.slice/db.service",
        ),
        ("4:memory:/process_api/76db\n1:name=systemd:/\n0::/\n", None, "/process_api/76db"),
        ("7:cpuset,memory:/system.slice/x.service\n", "x.service", "/system.slice/x.service"),
        (  # hybrid: memory on v1, units from name=systemd and the unified line
            "5:memory:/system.slice/h.service\n1:name=systemd:/system.slice/h.service\n"
            "0::/system.slice/h.service\n",
            "h.service", "/system.slice/h.service",
        ),
        ("0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-9f.scope\n", "cri-containerd-9f.scope",
         "/kubepods.slice/kubepods-pod1.slice/cri-containerd-9f.scope"),
    ],
)  # fmt: skip
def test_unit_from_cgroup(text: str, unit: str | None, cgroup: str | None) -> None:
    assert unit_from_cgroup(text) == (unit, cgroup)


@given(st.text(max_size=300))
def test_unit_from_cgroup_never_raises(text: str) -> None:
    unit, _cgroup = unit_from_cgroup(text)
    assert unit is None or unit.endswith((".service", ".scope", ".socket", ".mount", ".swap"))


def test_parse_status_and_smaps() -> None:
    assert parse_status(status_text(hwm=10, anon=20, swap=30)) == (10, 20, 30)
    assert parse_status(status_text(None, None, None)) == (None, None, None)
    assert parse_status(b"") == (None, None, None)
    assert parse_smaps_rollup(
        b"x\nPss: 5 kB\nPss_Anon: 1 kB\nPrivate_Clean: 2 kB\nPrivate_Dirty: 3 kB\n"
    ) == (5, 5)
    assert parse_smaps_rollup(b"x\nPss: 5 kB\n") == (5, None)


def test_read_meminfo(tmp_path: Path) -> None:
    FakeProc(tmp_path)
    m = read_meminfo(str(tmp_path))
    assert m is not None
    assert (m.mem_total_kb, m.mem_available_kb, m.swap_total_kb, m.swap_free_kb) == (
        16000000,
        8000000,
        2000000,
        1500000,
    )
    assert read_meminfo(str(tmp_path / "missing")) is None
    (tmp_path / "meminfo").write_bytes(b"MemTotal: 1 kB\nMemAvailable: 1 kB\n")  # no swap lines
    assert read_meminfo(str(tmp_path)) is None
    real = read_meminfo("/proc")
    assert real is not None and 0 < real.mem_available_kb <= real.mem_total_kb
