"""mapped_bytes and the mremap counters against real programs (real probes; root only).

Each test failed before mremap was counted and mapped_bytes followed the address space (issue 12): realloc
growth showed ~0, an in-place MAP_FIXED heap climbed by the bytes it re-committed, an exec'd program carried
its parent's mappings, and unmapping what was mapped before tracking went negative.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bpf_support import build, load_collector, merged

pytestmark = pytest.mark.bpf

MIB = 1 << 20


@pytest.fixture(scope="module")
def collector() -> Iterator[Any]:
    c = load_collector()
    yield c
    c.close()


@pytest.fixture(scope="module")
def addrspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("addrspace", tmp_path_factory.mktemp("addrspace"))


class Driven:
    """A workload that prints a marker line and waits for a line on stdin, phase after phase."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.pid = self.proc.pid

    def read(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().decode().strip()

    def next(self) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"\n")
        return self.read()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def test_realloc_growth_through_mremap_counts_and_shrinks(collector: Any, addrspace: Path) -> None:
    w = Driven([str(addrspace), "realloc", "256"])
    try:
        assert w.read() == "grown"
        grown = merged(collector.poll())[w.pid]
        assert grown.mapped_bytes is not None and grown.mapped_bytes >= 256 * MIB
        assert grown.mremap_count is not None and grown.mremap_count >= 200  # one per 1 MiB step, ~255
        assert grown.mremap_grow_bytes is not None and grown.mremap_grow_bytes >= 250 * MIB
        assert w.next() == "shrunk"
        shrunk = merged(collector.poll())[w.pid]
        assert shrunk.mapped_bytes is not None and shrunk.mapped_bytes <= grown.mapped_bytes - 250 * MIB
        assert shrunk.mremap_shrink_bytes is not None and shrunk.mremap_shrink_bytes >= 250 * MIB
    finally:
        w.close()


def _python(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
    )


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_stress_ng_bigheap_growth_is_seen(collector: Any) -> None:
    if not os.path.exists("/usr/bin/stress-ng"):
        pytest.skip("stress-ng is not installed")
    collector.poll()
    ng = subprocess.Popen(
        ["stress-ng", "--bigheap", "1", "--bigheap-growth", "1M", "--bigheap-ops", "600", "--quiet"]
    )
    try:
        best = 0
        deadline = time.monotonic() + 20
        while ng.poll() is None and time.monotonic() < deadline and best < 128 * MIB:
            time.sleep(0.01)  # the worker may grow its 600 MiB within a quarter of a second
            poll = collector.poll()
            for p in merged(poll).values():
                if p.mapped_bytes and _comm(p.pid).startswith("stress-ng-bighe"):
                    best = max(best, p.mapped_bytes)
        assert best >= 128 * MIB, f"bigheap worker's mapped_bytes peaked at {best >> 20} MiB"
    finally:
        ng.kill()
        ng.wait()


def test_map_fixed_commit_and_uncommit_inside_a_reservation_is_not_new_memory(
    collector: Any, addrspace: Path
) -> None:
    # JVM-like: 1 GiB PROT_NONE reservation, then 200 commits/uncommits of 64 MiB with mmap(MAP_FIXED)
    w = Driven([str(addrspace), "jvm", "1024", "64", "200"])
    try:
        assert w.read() == "reserved"
        reserved = merged(collector.poll())[w.pid]
        assert reserved.mapped_bytes is not None and reserved.mapped_bytes >= 1024 * MIB
        assert w.next() == "cycled"
        cycled = merged(collector.poll())[w.pid]
        assert cycled.mmap_bytes is not None and reserved.mmap_bytes is not None
        assert cycled.mmap_bytes - reserved.mmap_bytes == 400 * 64 * MIB  # the raw counters climb
        assert cycled.mapped_bytes is not None
        assert abs(cycled.mapped_bytes - reserved.mapped_bytes) <= MIB  # the address space did not
    finally:
        w.close()


EXEC_AFTER_100MB = """
import os, sys
keep = bytearray(100 << 20)  # one 100 MiB mapping (above the mmap threshold)
sys.stdout.write("allocated\\n"); sys.stdout.flush()
sys.stdin.readline()
os.execv("/bin/sleep", ["sleep", "30"])
"""


def test_exec_starts_mapped_bytes_again(collector: Any) -> None:
    p = _python(EXEC_AFTER_100MB)
    try:
        assert p.stdout is not None and p.stdin is not None
        assert p.stdout.readline() == b"allocated\n"
        before = merged(collector.poll())[p.pid]
        assert before.mapped_bytes is not None and before.mapped_bytes >= 100 * MIB
        p.stdin.write(b"\n")
        deadline = time.monotonic() + 5
        while _comm(p.pid) != "sleep" and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # sleep's dynamic loader maps its libraries
        after = merged(collector.poll())[p.pid]
        assert _comm(p.pid) == "sleep"
        assert after.mapped_bytes is not None and after.mapped_bytes < 16 * MIB, after.mapped_bytes
    finally:
        p.kill()
        p.wait()


MAPPED_BEFORE_TRACKING = """
import mmap, sys
m = mmap.mmap(-1, 64 << 20)
sys.stdout.write("mapped\\n"); sys.stdout.flush()
sys.stdin.readline()
m.close()
sys.stdout.write("unmapped\\n"); sys.stdout.flush()
sys.stdin.readline()
"""


def test_unmapping_what_was_mapped_before_tracking_never_goes_negative() -> None:
    p = _python(MAPPED_BEFORE_TRACKING)
    try:
        assert p.stdout is not None and p.stdin is not None
        assert p.stdout.readline() == b"mapped\n"
        fresh = load_collector()  # starts tracking now: the 64 MiB mapping predates it
        try:
            p.stdin.write(b"\n")
            assert p.stdout.readline() == b"unmapped\n"
            seen = merged(fresh.poll())[p.pid]
            assert seen.munmap_bytes is not None and seen.munmap_bytes >= 64 * MIB
            assert seen.mapped_bytes is not None and 0 <= seen.mapped_bytes < 8 * MIB
        finally:
            fresh.close()
    finally:
        p.kill()
        p.wait()
