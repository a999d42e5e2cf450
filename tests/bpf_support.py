"""Shared pieces of the real-BPF tests: loading the collector, building the C workloads, merged views."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from memwatchd.collectors.bpf import BpfCollector, BpfUnavailable
from memwatchd.config import BpfConfig
from memwatchd.merge import merge
from memwatchd.models import BpfPoll, ProcessSnapshot, ProcScan
from tests.helpers import bpf_possible

WORKLOADS = Path(__file__).parent / "workloads"


def load_collector(cfg: BpfConfig | None = None, *, btf: bool = True) -> BpfCollector:
    """A loaded BpfCollector; a skip only where BPF cannot work at all (not root, no bcc).

    On a host where BPF works, a load failure (a compile error in memwatch.bpf.c, a probe that no longer
    attaches) is a test FAILURE, never a skip.
    """
    reason = bpf_possible()
    if reason is not None:
        pytest.skip(reason)
    try:
        return BpfCollector.load(cfg or BpfConfig(), btf=btf)
    except BpfUnavailable as e:
        pytest.fail(f"BPF should load on this host (root, bcc present) but did not: {e}")


def build(name: str, out_dir: Path) -> Path:
    """Compile tests/workloads/NAME.c into out_dir."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the workload")
    out = out_dir / name
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(WORKLOADS / f"{name}.c")], check=True)
    return out


def merged(poll: BpfPoll) -> dict[int, ProcessSnapshot]:
    """The merge's view of one BPF poll (no /proc scan): what the daemon would store, by pid."""
    scan = ProcScan(samples=(), meminfo=None, boot_time=0.0, clk_tck=100)
    return {p.pid: p for p in merge(scan, poll, None, ts=0.0, mono=0.0).processes}


def proc_start_ticks(pid: int) -> int:
    """Field 22 of /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[19])


@contextlib.contextmanager
def memcg(name: str, limit_bytes: int) -> Iterator[Path]:
    """A cgroup v1 memory cgroup with a limit; its processes are killed and it is removed at the end."""
    root = Path("/sys/fs/cgroup/memory")
    if not (root / "cgroup.procs").exists():
        pytest.skip("no cgroup v1 memory controller at /sys/fs/cgroup/memory")
    cg = root / f"memwatchd-test-{name}-{os.getpid()}"
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
