"""Issue 12 with real programs against the real daemon (BPF on): the detection corpus, time-compressed.

One daemon (interval 0.5 s; `growth` of rss and `leak` of mapped bytes, min_rate 6MB/min, window 12 s, for
4 s) watches five programs from tests/workloads/patterns.c at once for ~35 s:
- a stepped leak (1 MiB every 4 s: three steps per window; before, the one-jump test failed for a quarter of
  every step period and reset `for`, so `growth` never fired),
- a pool of three workers each leaking 1 MiB per task (before, `leak` wanted allocations in >= 60 % of the
  window: never fired),
- realloc growth (glibc grows the buffer with mremap; before, mremap was not counted: `leak` never fired),
- a JVM-like heap committed and uncommitted in place with mmap(MAP_FIXED) (before, `leak` fired on the raw
  mmap bytes),
- one big jump (must stay silent).
The full-size corpus is scripts/bench_detect.
"""

from __future__ import annotations

import shutil

import pytest

from tests.detect import Params, Pattern, PatternResult, _c, run_corpus
from tests.helpers import bpf_possible

P = Params(interval_s=0.5, window_s=12.0, for_s=4.0, min_rate=6e6 / 60, bpf=True)
SLACK = 3.0  # a loaded test machine (2 cores shared)

PATTERNS = [
    Pattern(
        "dt-t-stepped", "leak", "1 MiB every 4 s",
        lambda c: _c(c, "stepped", "dt-t-stepped", c.grow_s, 1024, 4),
    ),
    Pattern(
        "dt-t-pool", "leak", "3 workers, 1 MiB per task",
        lambda c: _c(c, "pool", "dt-t-pool", c.grow_s, 3, 1024, 4),
    ),
    Pattern(
        "dt-t-realloc", "leak", "realloc 64 KiB / 0.25 s",
        lambda c: _c(c, "realloc", "dt-t-realloc", c.grow_s, 64, 250),
    ),
    Pattern(
        "dt-t-heap", "quiet", "JVM-like heap",
        lambda c: _c(c, "heap", "dt-t-heap", c.run_s, 32, 160, 8, 100),
    ),
    Pattern("dt-t-jump", "quiet", "200 MB at once", lambda c: _c(c, "jump", "dt-t-jump", c.run_s, 200, 5)),
]  # fmt: skip


@pytest.mark.bpf
def test_leaks_of_every_shape_fire_in_time_and_in_place_heaps_and_jumps_stay_silent() -> None:
    reason = bpf_possible()
    if reason:
        pytest.skip(reason)
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the workloads")
    logs: list[str] = []
    results = run_corpus(PATTERNS, P, grow_s=P.target_s + 8, run_s=P.target_s + 14, log=logs.append)
    assert not any("BPF did not attach" in m for m in logs), logs
    by_name: dict[str, PatternResult] = {r.name: r for r in results}
    problems = []
    for pat in PATTERNS:
        res = by_name[pat.name]
        for rule, r in res.rules.items():
            if pat.expected == "leak":
                if not r.fired:
                    problems.append(f"{pat.name}: {rule} missed")
                elif r.latency_s is None or r.latency_s > P.target_s + SLACK:
                    problems.append(f"{pat.name}: {rule} late ({r.latency_s}s > {P.target_s:g}s)")
            elif r.fired:
                problems.append(f"{pat.name}: {rule} false alert")
    assert not problems, problems
    assert by_name["dt-t-pool"].rules["leak"].processes == 3  # every leaking worker, not the parent
