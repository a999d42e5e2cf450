"""Driver for scripts/bench: runs each scripts/bench_<name>.py's run(quick) and prints one table."""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ORDER = ["daemon", "probes", "scan", "memory", "store", "writes", "alerts", "triage", "detect"]


def _path(name: str) -> Path:
    """scripts/bench_<name>.py, or the executable scripts/bench_<name> (bench_detect runs on its own too)."""
    py = HERE / f"bench_{name}.py"
    return py if py.exists() else HERE / f"bench_{name}"


def load(name: str):  # noqa: ANN201 - module
    path = _path(name)
    loader = importlib.machinery.SourceFileLoader(f"bench_{name}", str(path))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path, loader=loader)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO))
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser(
        description="memwatchd benchmarks, each figure beside its peer in the same run"
    )
    ap.add_argument("--quick", action="store_true", help="short runs (under 5 minutes in all)")
    ap.add_argument("--only", default=",".join(ORDER), help="comma-separated subset of: " + ", ".join(ORDER))
    ap.add_argument("--out", default=str(REPO / "bench" / "results.json"), help="JSON output file")
    args = ap.parse_args()
    rows: list[dict] = []
    t0 = time.time()
    for name in [n for n in args.only.split(",") if n]:
        if not _path(name).exists():
            print(f"(no benchmark {name!r} yet)", file=sys.stderr)
            continue
        print(f"== {name} ...", file=sys.stderr, flush=True)
        try:
            rows += load(name).run(args.quick)
        except Exception as e:  # one failing benchmark must not hide the others
            rows.append(
                {
                    "benchmark": name,
                    "config": "ERROR",
                    "value": None,
                    "unit": "",
                    "target": "",
                    "note": repr(e),
                }
            )
    w = [
        max(len(str(r.get(k, ""))) for r in rows + [{k: k}])
        for k in ("benchmark", "config", "value", "unit", "target")
    ]
    line = "  ".join(f"{{:{n}}}" for n in w)
    print(line.format("benchmark", "config", "value", "unit", "target"))
    for r in rows:
        v = r.get("value")
        v = f"{v:.3g}" if isinstance(v, float) else v
        print(
            line.format(
                r.get("benchmark", ""), r.get("config", ""), str(v), r.get("unit", ""), r.get("target", "")
            )
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "seconds": round(time.time() - t0, 1),
        "command": "scripts/bench" + (" --quick" if args.quick else ""),
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    md = ["| benchmark | config | value | unit | target |", "|---|---|---|---|---|"]
    for r in rows:
        v = r.get("value")
        v = f"{v:.3g}" if isinstance(v, float) else v
        cells = (r.get("benchmark", ""), r.get("config", ""), v, r.get("unit", ""), r.get("target", ""))
        md.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    out.with_suffix(".md").write_text(
        f"Measured {meta['date']} with `{meta['command']}`"
        f" (kernel {meta['kernel']}, {meta['cpus']} CPUs).\n\n" + "\n".join(md) + "\n"
    )
    print(f"\nwritten {out} in {meta['seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
