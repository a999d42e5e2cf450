"""Shared test helpers: run the real daemon on a temporary config, wait for conditions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def bpf_possible() -> str | None:
    """None when real BPF can load here, else the reason (for skip messages)."""
    if os.geteuid() != 0:
        return "BPF tests need root"
    import importlib.util

    # find_spec, not import: importing bcc would map libbcc/LLVM into the test process for nothing
    if importlib.util.find_spec("bcc") is None:
        return "bcc is not importable (install python3-bpfcc)"
    return None


def write_config(
    tmp: Path, *, bpf: bool, interval: float = 0.5, extra: str = "", triage: str = "enabled = false\n"
) -> Path:
    """A daemon config in tmp; leak triage is off unless `triage` (the [triage] table's body) says otherwise,
    so tests that count alert messages do not also receive "where it allocates" follow-ups."""
    cfg = tmp / "memwatchd.toml"
    cfg.write_text(
        f'[daemon]\ninterval = {interval}\nlog_level = "debug"\n'
        f"[bpf]\nenabled = {'true' if bpf else 'false'}\n"
        f"[triage]\n{triage}"
        f'[storage]\npath = "{tmp / "db" / "memwatchd.db"}"\n{extra}'
    )
    return cfg


def start_daemon(
    cfg: Path, env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    with open(log or (cfg.parent / "daemon.log"), "wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [str(BIN / "memwatchd"), "--config", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )


def stop_daemon(p: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    return p.wait(timeout=timeout)


def wait_for(
    cond: Callable[[], Any], timeout: float = 20.0, every: float = 0.2, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def ctl(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "memwatchctl"), "--db", str(db), *args], capture_output=True, text=True, timeout=60
    )


def ctl_json(db: Path, *args: str) -> Any:
    r = ctl(db, *args, "--json")
    if r.returncode != 0:
        return None
    return json.loads(r.stdout)
