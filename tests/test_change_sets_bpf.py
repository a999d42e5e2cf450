"""The real BPF collector's poll change set (BpfPoll.changed): an idle process's entry is the previous poll's
very object and not named; an entry that moved is named."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.bpf_support import load_collector
from tests.test_bpf import CHUNKS, WORKLOAD_SRC, Phases

pytestmark = pytest.mark.bpf


def test_poll_names_the_entries_that_moved(tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the workload")
    binary = tmp_path / "alloc"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(WORKLOAD_SRC)], check=True)
    c = load_collector()
    w = Phases(binary)
    try:
        c.poll()
        a = c.poll()
        b = c.poll()
        assert b.base_seq == a.seq and b.changed is not None
        assert w.pid in b.stats and w.pid not in b.changed  # waiting on its stdin: nothing moved
        assert b.stats[w.pid] is a.stats[w.pid]
        moved = set(b.changed)
        assert all(s is a.stats[t] for t, s in b.stats.items() if t not in moved)
        assert w.step() == "mapped"
        d = c.poll()
        assert d.changed is not None and w.pid in d.changed
        assert d.stats[w.pid].mmap_count - b.stats[w.pid].mmap_count == CHUNKS
    finally:
        w.finish()
        c.close()
