"""Real BPF tests of the eBPF collector: real probes, real workloads, real OOM kill. Root only."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from memwatchd.collectors.bpf import _MAPS, BpfCollector
from memwatchd.config import BpfConfig
from memwatchd.models import BpfStats
from tests.bpf_support import load_collector
from tests.helpers import bpf_possible

pytestmark = pytest.mark.bpf

WORKLOAD_SRC = Path(__file__).parent / "workloads" / "alloc.c"
MIB = 1 << 20
CHUNKS, CHUNK = 20, MIB
SBRKS, SBRK = 4, MIB


def _load(cfg: BpfConfig) -> BpfCollector:
    # no `import bcc` here: the collector must work in a process that never maps it; a load failure on a
    # host where BPF works fails the test (bpf_support.load_collector)
    return load_collector(cfg)


@pytest.fixture(scope="module")
def collector() -> Iterator[BpfCollector]:
    c = _load(BpfConfig())
    yield c
    c.close()


@pytest.fixture(scope="session")
def alloc_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the workload")
    out = tmp_path_factory.mktemp("workload") / "alloc"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(WORKLOAD_SRC)], check=True)
    return out


class Phases:
    """The workload in phases mode: step() lets it run one phase and returns its marker line."""

    def __init__(self, binary: Path) -> None:
        args = [str(binary), "phases", str(CHUNKS), str(CHUNK), str(SBRKS), str(SBRK)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.pid = self.proc.pid
        assert self.read() == "start"

    def read(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().decode().strip()

    def step(self) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"\n")
        return self.read()

    def finish(self) -> int:
        """Close stdin: the remaining phases run without waiting and the workload exits."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout=10)


def _stats(collector: BpfCollector, pid: int) -> BpfStats:
    s = collector.poll().stats.get(pid)
    assert s is not None, f"pid {pid} not in the stats map"
    return s


def test_import_does_not_load_bcc() -> None:
    code = "import sys, memwatchd.collectors.bpf; sys.exit('bcc' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


LOAD_AND_REPORT = """
import json, sys
from memwatchd.collectors.bpf import BpfCollector, BpfUnavailable
from memwatchd.config import BpfConfig
try:
    c = BpfCollector.load(BpfConfig())
except BpfUnavailable as e:
    print(json.dumps({"skip": str(e)}))
    sys.exit()
c.poll()
maps = open("/proc/self/maps").read()
print(json.dumps({"libbcc": "libbcc" in maps, "llvm": "LLVM" in maps, "bcc": "bcc" in sys.modules}))
c.close()
"""


def test_loaded_collector_keeps_bcc_and_llvm_out_of_the_process() -> None:
    reason = bpf_possible()
    if reason is not None:
        pytest.skip(reason)
    # a fresh interpreter: nothing else in it can have imported bcc
    out = subprocess.run([sys.executable, "-c", LOAD_AND_REPORT], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout)
    assert "skip" not in seen, f"BPF should load on this host but did not: {seen.get('skip')}"
    assert seen == {"libbcc": False, "llvm": False, "bcc": False}


def _loader_children() -> list[int]:
    me = str(os.getpid())
    found = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{d}/cmdline").read_bytes()
            ppid = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1]
            if b"memwatchd.collectors.bpf_loader" in cmdline and ppid == me:
                found.append(int(d))
    return found


def test_probes_stay_attached_after_the_loader_exited(collector: BpfCollector, alloc_bin: Path) -> None:
    assert _loader_children() == []
    w = Phases(alloc_bin)  # started after load, and after the loader is gone
    try:
        base = _stats(collector, w.pid)
        assert w.step() == "mapped"
        assert _stats(collector, w.pid).mmap_count - base.mmap_count == CHUNKS
    finally:
        w.finish()


_BPF_FD_KINDS = (
    "anon_inode:bpf-map",
    "anon_inode:[perf_event]",
    "anon_inode:bpf_link",
    "anon_inode:bpf-prog",
)


def _bpf_fds() -> Counter[str]:
    """Open BPF-related fds of this process, by kind."""
    out: Counter[str] = Counter()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(_BPF_FD_KINDS):
                out[target] += 1
    return out


def _map_ids() -> set[int]:
    ids = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:bpf-map":
                m = re.search(r"^map_id:\s*(\d+)", Path(f"/proc/self/fdinfo/{fd}").read_text(), re.M)
                if m:
                    ids.add(int(m.group(1)))
    return ids


def _map_exists(map_id: int) -> bool:
    """BPF_MAP_GET_FD_BY_ID: a map lives as long as an fd, a mapping or an attached program uses it."""
    libc = ctypes.CDLL(None, use_errno=True)
    nr = {"x86_64": 321, "aarch64": 280}[platform.machine()]
    attr = (ctypes.c_uint32 * 3)(map_id, 0, 0)
    fd = libc.syscall(ctypes.c_long(nr), ctypes.c_int(14), attr, ctypes.c_uint(ctypes.sizeof(attr)))
    if fd >= 0:
        os.close(fd)
        return True
    assert ctypes.get_errno() == errno.ENOENT
    return False


def test_close_releases_every_map_and_attachment_fd(collector: BpfCollector) -> None:
    before, ids_before = _bpf_fds(), _map_ids()  # the module's collector holds its own
    c = _load(BpfConfig())
    added = _bpf_fds() - before
    # stats, counters, events, exits, the task iterator's maps (+ the ring mmap's dup)
    assert added["anon_inode:bpf-map"] >= len(_MAPS)
    assert added["anon_inode:[perf_event]"] + added["anon_inode:bpf_link"] >= 4, added  # one per probe
    ours = _map_ids() - ids_before
    assert len(ours) == len(_MAPS) and all(_map_exists(i) for i in ours)
    c.close()
    assert _bpf_fds() == before
    # the maps are freed, so no program using them is still attached anywhere (freeing is deferred)
    deadline = time.monotonic() + 5
    while any(_map_exists(i) for i in ours) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_map_exists(i) for i in ours)
    c.close()  # idempotent


def test_exits_wait_in_the_kernel_without_a_reader_even_with_a_tiny_ring(alloc_bin: Path) -> None:
    # exits no longer pass through the ring buffer (one page here): 240 exits between polls, nobody
    # consuming meanwhile, all delivered
    small = _load(BpfConfig(ringbuf_kb=4))
    rounds, per_round = 12, 20
    try:
        start = small.poll()
        children: set[tuple[int, int]] = set()
        for _ in range(rounds):
            subprocess.run([str(alloc_bin), "churn", str(per_round)], check=True)
        p = small.poll()
        children |= {
            (e.pid, e.start_ticks) for e in p.exits if e.final is not None and e.final.mmap_count == 1
        }
        assert p.health.lost_events == start.health.lost_events
        assert len(children) == rounds * per_round
    finally:
        small.close()


def test_layout_drift_is_a_one_line_compile_error(collector: BpfCollector) -> None:
    from memwatchd.collectors.bpf import BpfCollector, BpfUnavailable

    with pytest.raises(BpfUnavailable) as e:
        BpfCollector.load(BpfConfig(), extra_cflags=("-UMW_STATS_SIZE", "-DMW_STATS_SIZE=1"))
    assert "differs from its Python mirror" in str(e.value)
    assert "\n" not in str(e.value)


def test_counters_account_for_each_phase(collector: BpfCollector, alloc_bin: Path) -> None:
    w = Phases(alloc_bin)
    try:
        base = _stats(collector, w.pid)
        assert w.step() == "mapped"
        mapped = _stats(collector, w.pid)
        assert mapped.mmap_count >= CHUNKS and mapped.mmap_bytes >= CHUNKS * CHUNK
        assert mapped.mmap_count - base.mmap_count == CHUNKS
        assert mapped.mmap_bytes - base.mmap_bytes == CHUNKS * CHUNK
        assert mapped.last_update_ns >= base.last_update_ns  # refreshed every 64th call, not each one

        assert w.step() == "unmapped"
        unmapped = _stats(collector, w.pid)
        assert unmapped.munmap_count - mapped.munmap_count == CHUNKS
        assert unmapped.munmap_bytes - mapped.munmap_bytes == CHUNKS * CHUNK
        assert unmapped.mmap_count == mapped.mmap_count

        assert w.step() == "brk"
        grown = _stats(collector, w.pid)
        # glibc's first sbrk also asks for the current break (brk(NULL)): one extra call, no growth
        assert SBRKS <= grown.brk_count - unmapped.brk_count <= SBRKS + 1
        assert grown.brk_bytes - unmapped.brk_bytes == SBRKS * SBRK
    finally:
        w.finish()


def _strace_counts(path: Path) -> dict[str, tuple[int, int]]:
    """syscall -> (calls, errors) from an `strace -c` summary."""
    out: dict[str, tuple[int, int]] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(\d*)\s*(\w+)$", line)
        if m:
            out[m.group(3)] = (int(m.group(1)), int(m.group(2) or 0))
    return out


def test_counts_agree_with_strace(collector: BpfCollector, alloc_bin: Path, tmp_path: Path) -> None:
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    w = Phases(alloc_bin)
    summary = tmp_path / "strace.txt"
    base = _stats(collector, w.pid)
    tracer = subprocess.Popen(
        ["strace", "-c", "-e", "trace=mmap,munmap,brk", "-o", str(summary), "-p", str(w.pid)],
        stderr=subprocess.PIPE,
    )
    assert tracer.stderr is not None
    assert b"attached" in tracer.stderr.readline()  # the workload is blocked in read(): nothing missed
    for marker in ("mapped", "unmapped", "brk"):
        assert w.step() == marker
    assert w.finish() == 0
    tracer.wait(timeout=10)
    final = next(e.final for e in collector.poll().exits if e.pid == w.pid)
    assert final is not None
    counts = _strace_counts(summary)
    assert final.mmap_count - base.mmap_count == counts["mmap"][0] - counts["mmap"][1]
    assert final.munmap_count - base.munmap_count == counts["munmap"][0] - counts["munmap"][1]
    assert final.brk_count - base.brk_count == counts["brk"][0]


def test_exit_delivers_final_counters_once(collector: BpfCollector, alloc_bin: Path) -> None:
    collector.poll()  # drop earlier exits
    w = Phases(alloc_bin)
    for _ in range(3):
        w.step()
    last = _stats(collector, w.pid)
    assert w.finish() == 0
    p = collector.poll()
    mine = [e for e in p.exits if e.pid == w.pid]
    assert len(mine) == 1
    assert mine[0].final == last
    assert mine[0].comm == "alloc"
    assert w.pid not in p.stats
    assert not [e for e in collector.poll().exits if e.pid == w.pid]


def _left_behind(collector: BpfCollector) -> set[int]:
    """Entries of processes that ended and are still in the map a moment later. Other sessions' processes
    come and go on this machine all the time: an entry counts only when it outlives its process (same
    start time) by half a second, which an exit that removes it never does."""

    def dead(stats: dict[int, BpfStats]) -> set[tuple[int, int]]:
        out = set()
        for t, st in stats.items():
            try:
                alive = int(Path(f"/proc/{t}/stat").read_bytes().rsplit(b")", 1)[1].split()[19])
            except (OSError, ValueError, IndexError):
                alive = -1
            if alive != st.start_ticks:
                out.add((t, st.start_ticks))
        return out

    first = dead(collector.poll().stats)
    time.sleep(0.5)
    return {t for t, _ in first & dead(collector.poll().stats)}


def test_fork_churn_leaves_map_near_empty(collector: BpfCollector) -> None:
    if shutil.which("stress-ng") is None:
        pytest.skip("stress-ng is not installed")
    subprocess.run(["stress-ng", "--fork", "2", "--fork-ops", "20000", "--quiet"], check=True, timeout=90)
    p = collector.poll()
    dead = _left_behind(collector)
    assert len(dead) < 50, f"{len(dead)} dead tgids left in the map"
    assert p.health.map_full == 0


def test_churn_of_tracked_processes_delivers_every_exit(collector: BpfCollector, alloc_bin: Path) -> None:
    # stress-ng's fork children rarely mmap, so most never get an entry; these children all do.
    n = 20000

    async def run() -> tuple[int, set[int]]:
        collector.attach_reader(asyncio.get_running_loop())
        start = collector.poll()
        proc = await asyncio.create_subprocess_exec(str(alloc_bin), "churn", str(n))
        assert await proc.wait() == 0
        await asyncio.sleep(0.2)
        p = collector.poll()
        children = {
            (e.pid, e.start_ticks) for e in p.exits if e.final is not None and e.final.mmap_count == 1
        }
        lost = p.health.lost_events - start.health.lost_events
        assert p.health.map_full == start.health.map_full
        return len(children) + lost, _left_behind(collector)

    delivered_or_lost, dead = asyncio.run(run())
    assert delivered_or_lost >= n
    assert len(dead) < 50, f"{len(dead)} dead tgids left in the map"


@contextlib.contextmanager
def _memcg(limit_bytes: int) -> Iterator[Path]:
    root = Path("/sys/fs/cgroup/memory")
    if not (root / "cgroup.procs").exists():
        pytest.skip("no cgroup v1 memory controller at /sys/fs/cgroup/memory")
    cg = root / f"memwatchd-test-{os.getpid()}"
    cg.mkdir()
    try:
        (cg / "memory.limit_in_bytes").write_text(str(limit_bytes))
        yield cg
    finally:
        for pid in (cg / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        deadline = time.monotonic() + 5
        while (cg / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        cg.rmdir()


def test_oom_kill_event(collector: BpfCollector, alloc_bin: Path) -> None:
    collector.poll()
    with _memcg(32 * MIB) as cg:
        procs = str(cg / "cgroup.procs")

        def enter_cgroup() -> None:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        hog = subprocess.Popen([str(alloc_bin), "hog", "512"], preexec_fn=enter_cgroup)  # noqa: PLW1509 - no threads touch the child state
        rc = hog.wait(timeout=30)
    assert rc == -signal.SIGKILL
    deadline = time.monotonic() + 2
    ooms = []
    while not ooms and time.monotonic() < deadline:
        ooms = [o for o in collector.poll().ooms if o.pid == hog.pid]
        time.sleep(0.02)
    assert len(ooms) == 1
    o = ooms[0]
    assert o.comm == "alloc"
    assert 16 * 1024 <= o.anon_rss_kb <= 40 * 1024
    assert o.total_vm_kb >= o.anon_rss_kb
    assert o.uid == 0 and o.mono_ns > 0


def test_map_full_is_counted(alloc_bin: Path) -> None:
    small = _load(BpfConfig(max_pids=32))  # below the validator's minimum on purpose
    procs = []
    try:
        for _ in range(64):
            procs.append(
                subprocess.Popen(
                    [str(alloc_bin), "phases", "1", "4096", "1", "4096"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
            )
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == b"start\n"
        p = small.poll()
        assert p.health.map_full > 0
        assert p.health.tracked <= 32
    finally:
        for p in procs:
            p.kill()
            p.wait()
        small.close()


def test_gc_removes_only_idle_entries_not_declared_live(collector: BpfCollector, alloc_bin: Path) -> None:
    idle, busy = Phases(alloc_bin), Phases(alloc_bin)
    try:
        idle.step()
        busy.step()
        busy.step()
        time.sleep(0.3)
        assert busy.step() == "brk"  # brk calls always refresh last_update_ns: inside the idle window
        live = {int(d) for d in os.listdir("/proc") if d.isdigit()} - {idle.pid, busy.pid}
        assert collector.gc(live, min_idle_s=0.2) >= 1
        after = collector.poll().stats
        assert idle.pid not in after
        assert busy.pid in after
    finally:
        idle.finish()
        busy.finish()


def test_batch_reader_resumes_across_small_chunks(collector: BpfCollector) -> None:
    from memwatchd.collectors import bpfsys
    from memwatchd.collectors.bpf import _Stats

    sleepers = [subprocess.Popen(["sleep", "30"]) for _ in range(20)]  # each mmaps at startup: an entry
    try:
        time.sleep(0.2)
        whole = collector.poll().stats
        # chunks of 3 entries: many calls, each resuming from the previous call's bucket token
        small = bpfsys.HashBatchReader(collector._stats_fd, _Stats, 3).read(lambda k, v: v.mmap_count)
        assert len(whole) > 20
        mine = {s.pid for s in sleepers}
        assert mine <= set(small) and mine <= set(whole)
        assert len(set(small) ^ set(whole)) <= 10  # only processes started or ended between the two reads
    finally:
        for s in sleepers:
            s.kill()
            s.wait()
