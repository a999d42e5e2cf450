"""Run the real daemon with DaemonHooks: test-only constructor parameters that production never sets.

python -m tests.hooked_daemon --config FILE [--stall-after N] [--prune-every-s S]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from memwatchd.config import load_config
from memwatchd.daemon.app import DaemonHooks, run
from memwatchd.daemon.logsetup import setup_logging

ROOT = Path(__file__).resolve().parent.parent


def command(cfg: Path, *, stall_after: int | None = None, prune_every_s: float | None = None) -> list[str]:
    """argv that starts the hooked daemon (run it with cwd=ROOT)."""
    argv = [sys.executable, "-m", "tests.hooked_daemon", "--config", str(cfg)]
    if stall_after is not None:
        argv += ["--stall-after", str(stall_after)]
    if prune_every_s is not None:
        argv += ["--prune-every-s", str(prune_every_s)]
    return argv


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--stall-after", type=int, default=None)
    ap.add_argument("--prune-every-s", type=float, default=None)
    args = ap.parse_args()
    cfg = load_config(args.config)
    hooks = DaemonHooks(stall_after=args.stall_after)
    if args.prune_every_s is not None:
        hooks = DaemonHooks(stall_after=args.stall_after, prune_every_s=args.prune_every_s)
    setup_logging(cfg.daemon.log_level)
    sys.exit(asyncio.run(run(cfg, args.config, hooks=hooks)))


if __name__ == "__main__":
    main()
