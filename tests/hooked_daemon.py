"""Run the real daemon with DaemonHooks: test-only constructor parameters that production never sets.

python -m tests.hooked_daemon --config FILE [--stall-after N] [--prune-every-s S] [--db-unusable-s S]
    [--store-period-s S]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from pathlib import Path

from memwatchd.config import load_config
from memwatchd.daemon.app import DaemonHooks, run
from memwatchd.daemon.logsetup import setup_logging

ROOT = Path(__file__).resolve().parent.parent


def command(
    cfg: Path,
    *,
    stall_after: int | None = None,
    prune_every_s: float | None = None,
    db_unusable_s: float | None = None,
    store_period_s: float | None = None,
) -> list[str]:
    """argv that starts the hooked daemon (run it with cwd=ROOT)."""
    argv = [sys.executable, "-m", "tests.hooked_daemon", "--config", str(cfg)]
    if db_unusable_s is not None:
        argv += ["--db-unusable-s", str(db_unusable_s)]
    if store_period_s is not None:
        argv += ["--store-period-s", str(store_period_s)]
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
    ap.add_argument("--db-unusable-s", type=float, default=None)
    ap.add_argument("--store-period-s", type=float, default=None)
    args = ap.parse_args()
    cfg = load_config(args.config)
    hooks = DaemonHooks(stall_after=args.stall_after, store_period_s=args.store_period_s)
    if args.prune_every_s is not None:
        hooks = dataclasses.replace(hooks, prune_every_s=args.prune_every_s)
    if args.db_unusable_s is not None:
        hooks = dataclasses.replace(hooks, db_unusable_s=args.db_unusable_s)
    setup_logging(cfg.daemon.log_level)
    sys.exit(asyncio.run(run(cfg, args.config, hooks=hooks)))


if __name__ == "__main__":
    main()
