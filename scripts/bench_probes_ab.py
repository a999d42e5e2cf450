"""A/B probe overhead: the probes of two (or more) source trees against no probes, interleaved per round.

Usage (root): .venv/bin/python scripts/bench_probes_ab.py [--rounds N] [--seconds S] [--malloc] NAME=TREE ...
  e.g. git worktree add --detach /tmp/before <commit>; scripts/bench_probes_ab.py before=/tmp/before now=.

Each round measures the workload untraced and under each tree's collector (loaded in a child from that tree,
held while the workload runs), in rotated order; a tree's figure is its throughput divided by the untraced
throughput of the same round. Reported: the median per tree, and the median of the paired per-round
differences to the first tree (pairing cancels the slow drift of a shared machine).
  default   tests/workloads/alloc.c "loop": mmap(4 KiB)+munmap pairs per CPU second
  --malloc  stress-ng --malloc 1: bogo ops per CPU second
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOLD = (
    "import sys; sys.path.insert(0, sys.argv[1]);"
    "from memwatchd.collectors.bpf import BpfCollector; from memwatchd.config import BpfConfig;"
    "c = BpfCollector.load(BpfConfig()); print('ready', flush=True);"
    "sys.stdin.readline(); c.poll(); c.close()"
)


def _loop(binary: Path, seconds: float) -> float:
    out = subprocess.run([str(binary), "loop", str(seconds)], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[1])


def _malloc(seconds: float) -> float:
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
        m = re.search(r"bogo-ops-per-second-usr-sys-time:\s*([\d.]+)", Path(y.name).read_text())
    if m is None:
        raise RuntimeError("no bogo ops/s in stress-ng's YAML output")
    return float(m.group(1))


def main() -> int:
    """Run the rounds and print one line per round, then the summary."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--malloc", action="store_true")
    ap.add_argument("trees", nargs="+", metavar="NAME=TREE")
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.trees)
    with tempfile.TemporaryDirectory() as d:
        binary = Path(d) / "alloc"
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(ROOT / "tests/workloads/alloc.c")], check=True)

        def measure() -> float:
            return _malloc(args.seconds) if args.malloc else _loop(binary, args.seconds)

        names = ["untraced", *trees]
        ratios: dict[str, list[float]] = {k: [] for k in trees}
        for r in range(args.rounds):
            vals: dict[str, float] = {}
            for n in names[r % len(names) :] + names[: r % len(names)]:
                if n == "untraced":
                    vals[n] = measure()
                    continue
                h = subprocess.Popen(
                    [sys.executable, "-c", HOLD, str(Path(trees[n]).resolve())],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    cwd="/",
                )
                assert h.stdin is not None and h.stdout is not None
                if h.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"{n}: the collector did not load")
                time.sleep(0.2)
                vals[n] = measure()
                h.stdin.close()
                h.wait()
            for k in trees:
                ratios[k].append(vals[k] / vals["untraced"])
            print(r, {k: round(v[-1], 3) for k, v in ratios.items()}, flush=True)
    first = next(iter(trees))
    for k, v in ratios.items():
        line = f"{k}: median {statistics.median(v):.3f} (min {min(v):.3f}, max {max(v):.3f}, n={len(v)})"
        if k != first:
            diff = statistics.median(b - a for a, b in zip(ratios[first], v, strict=True))
            line += f"; paired median difference to {first} {diff:+.3f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
