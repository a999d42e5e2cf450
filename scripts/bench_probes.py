"""Probe overhead: throughput kept under memwatchd's probes, next to the floor of the hook and bpftrace.

Usage (root): .venv/bin/python scripts/bench_probes.py [--quick] [--json FILE]

Every round runs each configuration once, in rotated order, so drift (thermal, noisy neighbours) spreads
over all of them; a configuration's figure is the median over rounds of its throughput divided by the
untraced throughput of the same round (pairing cancels slow drift in the load of a shared machine).
  worst case  tests/workloads/alloc.c "loop": mmap(4 KiB)+munmap pairs for a fixed time
  realistic   stress-ng --malloc 1 for a fixed time, bogo ops
Throughput is taken per CPU second of the workload ("value"), which holds up when other tasks share the
machine, and per wall second ("value_wall"); on an idle machine the two agree.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from memwatchd.collectors.bpf import BpfCollector  # noqa: E402
from memwatchd.config import BpfConfig  # noqa: E402

WORKLOAD_SRC = ROOT / "tests" / "workloads" / "alloc.c"
BPFTRACE_PROG = (
    "tracepoint:syscalls:sys_enter_mmap { @mc[pid] = count(); @mb[pid] = sum(args->len); } "
    "tracepoint:syscalls:sys_enter_munmap { @uc[pid] = count(); @ub[pid] = sum(args->len); } "
    "tracepoint:syscalls:sys_enter_brk { @bc[pid] = count(); }"
)
RATIO = "ratio of untraced throughput"
Setup = Callable[[], contextlib.AbstractContextManager[None]]


@contextlib.contextmanager
def _untraced() -> Iterator[None]:
    yield


@contextlib.contextmanager
def _memwatchd(*extra_cflags: str) -> Iterator[None]:
    c = BpfCollector.load(BpfConfig(), extra_cflags=extra_cflags)
    try:
        yield
    finally:
        c.poll()  # the daemon reads the map once per interval; here once per run
        c.close()


@contextlib.contextmanager
def _bpftrace() -> Iterator[None]:
    p = subprocess.Popen(["bpftrace", "-e", BPFTRACE_PROG], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert p.stdout is not None
        seen = []
        for raw in p.stdout:  # a RLIMIT_MEMLOCK warning may come first; it is harmless on 5.11+
            seen.append(raw.decode().strip())
            if seen[-1].startswith("Attaching"):
                break
        else:
            raise RuntimeError(f"bpftrace did not start: {' / '.join(seen)}")
        time.sleep(0.2)
        yield
    finally:
        p.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.communicate(timeout=10)
        if p.poll() is None:
            p.kill()
            p.wait()


Rates = tuple[float, float]  # (per CPU second, per wall second)


def _loop_rate(binary: Path, seconds: float) -> Rates:
    out = subprocess.run([str(binary), "loop", str(seconds)], capture_output=True, text=True, check=True)
    wall, cpu = (float(x) for x in out.stdout.split())
    return cpu, wall


def _malloc_rate(seconds: float) -> Rates:
    with tempfile.NamedTemporaryFile(suffix=".yaml") as y:
        subprocess.run(
            [
                "stress-ng",
                "--malloc",
                "1",
                "--timeout",
                f"{round(seconds)}s",
                "--metrics-brief",
                "--yaml",
                y.name,
            ],
            capture_output=True,
            check=True,
        )
        text = Path(y.name).read_text()
    cpu = re.search(r"bogo-ops-per-second-usr-sys-time:\s*([\d.]+)", text)
    wall = re.search(r"bogo-ops-per-second-real-time:\s*([\d.]+)", text)
    if cpu is None or wall is None:
        raise RuntimeError("no bogo ops/s in stress-ng's YAML output")
    return float(cpu.group(1)), float(wall.group(1))


def _interleaved(
    configs: dict[str, Setup], measure: Callable[[], Rates], rounds: int
) -> dict[str, list[Rates]]:
    names = list(configs)
    results: dict[str, list[Rates]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            with configs[n]():
                results[n].append(measure())
    return results


def _rows(benchmark: str, unit: str, results: dict[str, list[Rates]], targets: dict[str, str]) -> list[dict]:
    def med(name: str, i: int) -> float:
        return statistics.median(r[i] for r in results[name])

    def paired(name: str, i: int) -> float:
        return statistics.median(r[i] / u[i] for r, u in zip(results[name], results["untraced"], strict=True))

    base_cpu, base_wall = med("untraced", 0), med("untraced", 1)
    rows = [
        {
            "benchmark": benchmark,
            "config": "untraced",
            "value": round(base_cpu),
            "value_wall": round(base_wall),
            "unit": unit,
            "target": "",
            "runs": len(results["untraced"]),
        }
    ]
    for name, runs in results.items():
        if name != "untraced":
            rows.append(
                {
                    "benchmark": benchmark,
                    "config": name,
                    "value": round(paired(name, 0), 3),
                    "value_wall": round(paired(name, 1), 3),
                    "unit": RATIO,
                    "target": targets.get(name, ""),
                    "runs": len(runs),
                }
            )
    return rows


def run(quick: bool) -> list[dict]:
    """One row per (benchmark, config). Needs root and gcc; bpftrace and stress-ng are optional."""
    rounds, loop_s, malloc_s = (6, 1.0, 1.0) if quick else (15, 3.0, 3.0)
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "alloc"
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(WORKLOAD_SRC)], check=True)

        configs: dict[str, Setup] = {
            "untraced": _untraced,
            "memwatchd probes": _memwatchd,
            "empty probe on raw sys_exit (floor)": lambda: _memwatchd("-DMW_EMPTY_SYS_EXIT"),
        }
        if shutil.which("bpftrace"):
            configs["bpftrace one-liner (sys_enter tracepoints)"] = _bpftrace
        rows = _rows(
            "probe overhead: mmap+munmap loop",
            "pairs per CPU second",
            _interleaved(configs, lambda: _loop_rate(binary, loop_s), rounds),
            {"memwatchd probes": ">= 0.91"},
        )
        if shutil.which("stress-ng"):
            realistic = {
                "untraced": _untraced,
                "memwatchd probes": _memwatchd,
                "empty probe on raw sys_exit (floor)": configs["empty probe on raw sys_exit (floor)"],
            }
            rows += _rows(
                "probe overhead: stress-ng --malloc 1",
                "bogo ops per CPU second",
                _interleaved(realistic, lambda: _malloc_rate(malloc_s), rounds),
                {"memwatchd probes": ">= 0.99"},
            )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer, shorter runs (under 90 s)")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("Error: needs root (loads BPF programs)", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    rows = run(args.quick)
    print(f"{'benchmark':38} {'config':44} {'value':>10} {'(wall)':>10}  {'unit':30} target")
    for r in rows:
        cells = f"{r['benchmark']:38} {r['config']:44} {r['value']:>10} {r['value_wall']:>10}"
        print(f"{cells}  {r['unit']:30} {r['target']}")
    print(f"({time.monotonic() - t0:.0f} s)")
    text = json.dumps(rows, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
