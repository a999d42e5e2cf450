"""Leak triage against real programs built in the test run: the top stack names the leaking function, the
alloc/free path is not among the outstanding stacks, and the estimate is within 25 % of the truth at the
default sampling rate. With and without frame pointers, with glibc and with jemalloc; the syscall fallback
on a stripped static binary; a process that exits during the trace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from memwatchd.config import TriageConfig
from tests.helpers import REPO, bpf_possible

SRC = REPO / "tests" / "workloads" / "leaky.c"
DEFAULT_RATE = TriageConfig().sample_every
LEAKS = 6000  # ~12.7 MB in 64..4159-byte blocks: ~190 samples at 64 KiB, sd ~7 %
CHURN = 2

pytestmark = pytest.mark.bpf

VARIANTS = {
    "frame-pointers": (["-O0", "-fno-omit-frame-pointer"], []),
    "no-frame-pointers-O2": (["-O2", "-fomit-frame-pointer"], []),
    "jemalloc": (["-O2", "-fomit-frame-pointer"], ["-ljemalloc"]),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    reason = bpf_possible()
    if reason:
        pytest.skip(reason)
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the workloads")
    out = tmp_path_factory.mktemp("leaky")
    bins: dict[str, Path] = {}
    for name, (cflags, libs) in VARIANTS.items():
        b = out / f"leaky-{name}"
        r = subprocess.run(
            ["gcc", "-Wall", *cflags, "-o", str(b), str(SRC), *libs], capture_output=True, text=True
        )
        if r.returncode != 0:
            if libs:
                pytest.fail(
                    f"cannot link against {libs} (scripts/setup --test installs libjemalloc-dev): {r.stderr}"
                )
            raise AssertionError(r.stderr)
        bins[name] = b
    static = out / "leaky-static-stripped"
    r = subprocess.run(
        ["gcc", "-O2", "-static", "-s", "-o", str(static), str(SRC)], capture_output=True, text=True
    )
    if r.returncode == 0:
        bins["static"] = static
    return bins


class Tracer:
    """The tracer child exactly as the daemon runs it (python -m memwatchd.triage.tracer)."""

    def __init__(self, pid: int, duration_s: float, sample_every: int = DEFAULT_RATE) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.p = subprocess.Popen(
            [sys.executable, "-m", "memwatchd.triage.tracer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert self.p.stdin and self.p.stderr
        self.p.stdin.write(
            json.dumps(
                {"pid": pid, "start_ticks": None, "duration_s": duration_s, "sample_every": sample_every}
            ).encode()
        )
        self.p.stdin.close()

    def wait_attached(self) -> str:
        assert self.p.stderr and self.p.stdout
        line = self.p.stderr.readline().decode()
        if "attached" not in line:  # failed before attaching: the result says why
            raise AssertionError(f"tracer did not attach: {line} {self.p.stdout.read().decode()}")
        return line

    def result(self) -> dict[str, Any]:
        assert self.p.stdout
        out = self.p.stdout.read()
        self.p.wait(timeout=120)
        d: dict[str, Any] = json.loads(out)
        return d


def functions(stack: dict[str, Any]) -> list[str]:
    return [f["function"] for f in stack["frames"]]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_top_stack_names_the_leak_and_the_estimate_is_within_25_percent(
    built: dict[str, Path], variant: str
) -> None:
    w = subprocess.Popen(
        [str(built[variant]), "steps", str(LEAKS), str(CHURN)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert w.stdin and w.stdout and w.stdout.readline() == b"ready\n"
        t = Tracer(w.pid, duration_s=25.0)
        t.wait_attached()
        w.stdin.write(b"go\n")
        w.stdin.flush()
        done = w.stdout.readline().split()
        truth = int(done[1])
        # end the window early: the trace stops when the process exits, with what was outstanding then
        w.stdin.close()
        w.wait(timeout=10)
        r = t.result()
    finally:
        w.kill()
        w.wait()
    assert r["status"] == "process exited", r
    assert r["mode"] == "uprobes"
    assert r["allocator"] == ("jemalloc" if variant == "jemalloc" else "glibc")
    top = r["stacks"][0]
    assert functions(top)[0] == "leak_here", functions(top)
    if variant == "frame-pointers":
        assert "main" in functions(top)  # the whole stack where frame pointers are kept
    for s in r["stacks"]:
        assert "churn_here" not in functions(s), s  # its blocks were all freed
    est = r["estimated_bytes"]
    assert abs(est - truth) <= 0.25 * truth, (est, truth, r["sampled_count"])
    assert abs(top["estimated_bytes"] - truth) <= 0.25 * truth
    assert r["sample_every"] == DEFAULT_RATE
    # every allocator call trapped (leaks + churn mallocs + reallocs), frees matched only sampled ones
    assert r["calls"] >= LEAKS * (1 + 2 * CHURN)


def test_stripped_static_binary_falls_back_to_mmap_stacks_and_says_so(built: dict[str, Path]) -> None:
    if "static" not in built:
        pytest.skip("no static libc to link against")
    w = subprocess.Popen([str(built["static"]), "mmap", "20"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert w.stdin and w.stdout and w.stdout.readline() == b"ready\n"
        t = Tracer(w.pid, duration_s=3.0)
        t.wait_attached()
        w.stdin.write(b"go\n")
        w.stdin.flush()
        truth = int(w.stdout.readline().split()[1])
        r = t.result()
    finally:
        w.kill()
        w.wait()
    assert r["status"] == "complete" and r["mode"] == "syscalls"
    assert any("statically linked and stripped" in lim for lim in r["limits"]), r["limits"]
    assert r["estimated_bytes"] == truth  # 256 KiB mappings are above the rate: every one is sampled


def test_a_process_gone_before_the_trace_is_a_failed_result_not_a_crash() -> None:
    reason = bpf_possible()
    if reason:
        pytest.skip(reason)
    p = subprocess.Popen(["true"])
    p.wait()
    t = Tracer(p.pid, duration_s=1.0)
    r = t.result()
    assert r["status"] == "failed" and "is gone" in r["error"]


def test_a_busy_alloc_free_path_running_while_probes_attach_is_not_reported(built: dict[str, Path]) -> None:
    """The probes attach one by one: a malloc seen before the free probe exists must not count."""
    w = subprocess.Popen(
        [str(built["frame-pointers"]), "run", "8192", "60"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert w.stdin and w.stdout and w.stdout.readline() == b"ready\n"
        w.stdin.write(b"go\n")
        w.stdin.flush()
        r = Tracer(w.pid, duration_s=3.0).result()
    finally:
        w.kill()
        w.wait()
    assert r["status"] == "complete", r
    assert functions(r["stacks"][0])[0] == "leak_here"
    churn = [s for s in r["stacks"] if "churn_here" in functions(s)]
    assert not churn, churn
