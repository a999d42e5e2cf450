"""Run real memory patterns against the real daemon: which rules fired, when, and whether they resolved.

Used by scripts/bench_detect (the whole corpus) and by the rule tests (one or two patterns, short windows).
Every pattern is a real program (tests/workloads/: C compiled here, python, node, redis-server), started
under a process name "dt<tag>-..." (a tag per run: parallel test suites on one host do not mix) so one
`growth` rule (rss) and one `leak` rule (eBPF mapped bytes) matching "dt<tag>-*" watch all of them at once. A
real json:// webhook receiver on 127.0.0.1 takes the messages; the alert episodes are read back with
`memwatchctl alerts --json`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import ctl, start_daemon, stop_daemon, wait_for, write_config
from tests.receivers import WebhookReceiver

WORKLOADS = Path(__file__).resolve().parent / "workloads"
RULES = ("growth", "leak")


def build_patterns(out_dir: Path) -> Path:
    """Compile tests/workloads/patterns.c into out_dir; the path of the binary."""
    exe = out_dir / "patterns"
    if not exe.exists():
        subprocess.run(
            ["gcc", "-O2", "-Wall", "-o", str(exe), str(WORKLOADS / "patterns.c")], check=True, timeout=120
        )
    return exe


@dataclass(frozen=True, slots=True)
class Params:
    """Daemon and rule settings of one run (seconds; rates in bytes per second)."""

    interval_s: float = 1.0
    window_s: float = 60.0
    for_s: float = 10.0
    min_rate: float = 1e6 / 60  # 1MB/min
    bpf: bool = True

    @property
    def target_s(self) -> float:
        """The latency a true leak must beat: window + for + 2 intervals."""
        return self.window_s + self.for_s + 2 * self.interval_s


@dataclass(frozen=True, slots=True)
class Ctx:
    """What a pattern's command line may depend on."""

    exe: Path  # compiled patterns.c
    tmp: Path
    run_s: float  # how long the whole run lasts
    grow_s: float  # how long a leak keeps growing
    tag: str = ""  # per run: other runs on the same host (parallel test suites) use other process names

    def comm(self, name: str) -> str:
        """The process name this run gives pattern `name` ("dt-x" -> "dt<tag>-x", 15 characters at most)."""
        return name.replace("dt-", f"dt{self.tag}-", 1)


@dataclass(frozen=True, slots=True)
class Pattern:
    """One program of the corpus.

    expected: "leak" (every rule must fire within the target), "quiet" (no rule may fire), "warmup" (may
    fire while it grows; must resolve within one window of the plateau).
    """

    name: str  # process name, "dt-..." (15 characters at most)
    expected: str
    describe: str
    argv: Callable[[Ctx], list[str]]
    needs: str = ""  # an executable that must exist, else the pattern is skipped
    driver: Callable[[Ctx, subprocess.Popen[str], Callable[[str], None]], None] | None = None
    rules: tuple[str, ...] = RULES  # the rules this pattern is judged by


@dataclass(slots=True)
class _Running:
    pattern: Pattern
    proc: subprocess.Popen[str]
    grow_at: float | None = None  # wall time the pattern started (growth start for leaks and warm-ups)
    hold_at: float | None = None  # wall time the growth stopped (plateau)
    lines: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RuleResult:
    """What one rule did for one pattern."""

    fired: bool
    processes: int  # distinct processes of the pattern the rule fired for
    latency_s: float | None  # first firing (judged, from the alert record) after the start of growth
    delivered_s: float | None  # first FIRING message at the webhook after the start of growth
    resolved: bool | None  # every fired episode resolved (None when nothing fired)
    resolve_after_plateau_s: float | None  # last resolution after the plateau began (warm-ups, leaks)


@dataclass(frozen=True, slots=True)
class PatternResult:
    name: str
    expected: str
    describe: str
    rules: dict[str, RuleResult]
    skipped: str = ""

    def verdict(self, p: Params) -> list[str]:
        """Problems against the targets (empty: the pattern met them)."""
        out: list[str] = []
        if self.skipped:
            return out
        for rule, r in self.rules.items():
            if self.expected == "leak":
                if not r.fired:
                    out.append(f"{rule}: missed")
                elif r.latency_s is not None and r.latency_s > p.target_s:
                    out.append(f"{rule}: late by {r.latency_s - p.target_s:.0f}s")
            elif self.expected == "quiet" and r.fired:
                out.append(f"{rule}: false alert")
            elif self.expected == "warmup" and r.fired:
                late = r.resolve_after_plateau_s
                if late is None:
                    out.append(f"{rule}: did not resolve")
                elif late > p.window_s:
                    out.append(f"{rule}: resolved {late - p.window_s:.0f}s after one window")
        return out


def _reader(r: _Running) -> None:
    assert r.proc.stdout is not None
    for raw in r.proc.stdout:
        line = raw.strip()
        r.lines.append(line)
        if line.startswith("grow ") and r.grow_at is None:
            r.grow_at = float(line.split()[1])
        elif line == "hold" and r.hold_at is None:
            r.hold_at = time.time()


def _pids_in(body: dict[str, Any]) -> list[tuple[int, bool]]:
    """(pid, firing) for each process a message tells about."""
    title, text = str(body.get("title", "")), str(body.get("message", ""))
    if "(pid " in title and "processes" not in title and "killed" not in title:
        m = re.search(r"\(pid (\d+)", title)
        return [(int(m.group(1)), "FIRING" in title and "RESOLVED" not in title)] if m else []
    out = []
    for line in text.splitlines():
        m = re.match(r"\s+\S.* \(pid (\d+)[,)].*?: (.*)", line)
        if m:
            out.append((int(m.group(1)), not m.group(2).startswith("RESOLVED")))
    return out


def _config(p: Params, hook_url: str, tag: str) -> str:
    rate = f"{p.min_rate * 3600 / 1e6:g}MB/h"
    rules = ""
    for kind in RULES:
        metric = "rss" if kind == "growth" else "mapped"
        rules += (
            f'[[rules]]\nname = "{kind}"\nkind = "{kind}"\nmetric = "{metric}"\nmin_rate = "{rate}"\n'
            f'window = "{p.window_s:g}s"\nfor = "{p.for_s:g}s"\nmatch = {{ comm = "dt{tag}-*" }}\n'
        )
    return (
        f'[notify]\nurls = ["{hook_url}"]\nrepeat_interval = "1h"\ngroup_wait = "0s"\n'
        f'[procfs]\nfull_rescan = "5s"\n{rules}'
    )


def run_corpus(
    patterns: Sequence[Pattern],
    params: Params,
    grow_s: float,
    run_s: float,
    log: Callable[[str], None] = lambda s: None,
) -> list[PatternResult]:
    """Start the daemon, run every pattern at once for run_s seconds, and judge what the rules did."""
    with tempfile.TemporaryDirectory(prefix="memwatchd-detect-") as tmpname, WebhookReceiver() as hook:
        tmp = Path(tmpname)
        tag = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(2))
        ctx = Ctx(exe=build_patterns(tmp), tmp=tmp, run_s=run_s, grow_s=grow_s, tag=tag)
        cfg = write_config(
            tmp, bpf=params.bpf, interval=params.interval_s, extra=_config(params, hook.url(), tag)
        )
        daemon = start_daemon(cfg)
        received: list[tuple[float, dict[str, Any]]] = []
        running: list[_Running] = []
        skipped: dict[str, str] = {}
        drivers: list[threading.Thread] = []
        try:
            wait_for(lambda: "memwatchd started" in (tmp / "daemon.log").read_text(), 120, what="daemon")
            if params.bpf and "BPF probes attached" not in (tmp / "daemon.log").read_text():
                log("BPF did not attach: the leak rule cannot fire")
            time.sleep(2 * params.interval_s)
            for pat in patterns:
                if pat.needs and shutil.which(pat.needs) is None:
                    skipped[pat.name] = f"{pat.needs} not installed"
                    continue
                proc = subprocess.Popen(
                    [ctx.comm(a) if a == pat.name else a for a in pat.argv(ctx)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                    start_new_session=True,  # one kill of the group ends workers and forks too
                    cwd=tmp,
                )
                r = _Running(pat, proc)
                running.append(r)
                threading.Thread(target=_reader, args=(r,), daemon=True).start()
                if pat.driver is not None:

                    def mark(what: str, r: _Running = r) -> None:
                        if what == "grow":
                            r.grow_at = time.time()
                        elif what == "hold":
                            r.hold_at = time.time()

                    t = threading.Thread(target=pat.driver, args=(ctx, proc, mark), daemon=True)
                    t.start()
                    drivers.append(t)
            log(f"running {len(running)} patterns for {run_s:.0f}s")
            end = time.monotonic() + run_s
            seen = 0
            while time.monotonic() < end:
                bodies = hook.bodies
                received += [(time.time(), b) for b in bodies[seen:]]
                seen = len(bodies)
                time.sleep(0.1)
            for r in running:
                if r.proc.poll() is not None:
                    log(f"{r.pattern.name} ended early (exit {r.proc.returncode}): {r.lines[-3:]}")
            rows = json.loads(ctl(tmp / "db" / "memwatchd.db", "alerts", "--json").stdout or "[]")
        finally:
            for r in running:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(r.proc.pid, signal.SIGKILL)
                r.proc.wait()
            stop_daemon(daemon, timeout=30)
        return [_judge(r, rows, received, ctx) for r in running] + [
            PatternResult(n, p.expected, p.describe, {}, skipped=why)
            for n, why in skipped.items()
            for p in patterns
            if p.name == n
        ]


def _judge(
    r: _Running, rows: list[dict[str, Any]], received: list[tuple[float, dict[str, Any]]], ctx: Ctx
) -> PatternResult:
    pat = r.pattern
    grow = r.grow_at
    mine = [a for a in rows if a["comm"] == ctx.comm(pat.name)]
    pids = {a["pid"] for a in mine}
    out: dict[str, RuleResult] = {}
    for rule in pat.rules:
        eps = [a for a in mine if a["rule"] == rule and a.get("fired_at")]
        fired_at = min((a["fired_at"] for a in eps), default=None)
        delivered = None
        for ts, body in received:
            if rule in str(body.get("title", "")).split(":")[0].split() and any(
                firing and pid in pids for pid, firing in _pids_in(body)
            ):
                delivered = ts
                break
        resolved = all(a["state"] == "resolved" for a in eps) if eps else None
        last_res = max((a["resolved_at"] or 0 for a in eps), default=None) if resolved else None
        out[rule] = RuleResult(
            fired=bool(eps),
            processes=len({a["pid"] for a in eps}),
            latency_s=None if fired_at is None or grow is None else fired_at - grow,
            delivered_s=None if delivered is None or grow is None else delivered - grow,
            resolved=resolved,
            resolve_after_plateau_s=(
                None if last_res is None or r.hold_at is None else max(0.0, last_res - r.hold_at)
            ),
        )
    return PatternResult(pat.name, pat.expected, pat.describe, out)


# ----- the corpus ---------------------------------------------------------------------------------------


def _py(script: str, *args: object) -> list[str]:
    return [sys.executable, str(WORKLOADS / script), *map(str, args)]


def _c(ctx: Ctx, mode: str, name: str, seconds: float, *args: object) -> list[str]:
    return [str(ctx.exe), mode, name, f"{seconds:g}", *map(str, args)]


def _linked(ctx: Ctx, tool: str, name: str) -> str:
    """A symlink named NAME to TOOL: the kernel takes a process's name from the file it executes."""
    link = ctx.tmp / name
    if not link.exists():
        target = shutil.which(tool)
        assert target is not None
        link.symlink_to(target)
    return str(link)


def _redis_argv(ctx: Ctx) -> list[str]:
    sock = ctx.tmp / "redis.sock"
    return [
        _linked(ctx, "redis-server", ctx.comm("dt-redis")),
        "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no",
        "--dir", str(ctx.tmp), "--daemonize", "no", "--loglevel", "warning",
    ]  # fmt: skip


REDIS_FILL_S = 40.0
REDIS_MB_PER_S = 1.5


def _redis_fill(ctx: Ctx, proc: subprocess.Popen[str], mark: Callable[[str], None]) -> None:
    """Warm the cache: SETs of 1 KiB values at REDIS_MB_PER_S for REDIS_FILL_S, then leave it idle."""
    sock_path = str(ctx.tmp / "redis.sock")
    deadline = time.monotonic() + 30
    s = socket.socket(socket.AF_UNIX)
    while True:
        try:
            s.connect(sock_path)
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                return
            time.sleep(0.1)
    value = "v" * 1024
    per_tick = int(REDIS_MB_PER_S * 1e6 / 1024 / 10)
    time.sleep(2.0)  # the daemon sees the idle server first
    mark("grow")
    start, i, key = time.monotonic(), 0, 0
    while time.monotonic() < start + REDIS_FILL_S and proc.poll() is None:
        cmds = []
        for _ in range(per_tick):
            cmds.append(
                f"*3\r\n$3\r\nSET\r\n${len(str(key)) + 4}\r\nkey:{key}\r\n${len(value)}\r\n{value}\r\n"
            )
            key += 1
        s.sendall("".join(cmds).encode())
        got = b""
        while got.count(b"\r\n") < per_tick:
            chunk = s.recv(65536)
            if not chunk:
                return
            got += chunk
        i += 1
        time.sleep(max(0.0, start + i * 0.1 - time.monotonic()))
    mark("hold")
    s.close()


def corpus(p: Params) -> list[Pattern]:
    """The benchmark's patterns; rates are set against the rules' min_rate (p.min_rate, 1MB/min)."""
    mr = p.min_rate
    return [
        Pattern(
            "dt-steady", "leak", "C, malloc 256 KiB every 0.5 s (30 MB/min)",
            lambda c: _c(c, "steady", "dt-steady", c.grow_s, 256, 500),
        ),
        Pattern(
            "dt-steady-py", "leak", "python, 256 KiB bytes kept every 5 s (3 MB/min)",
            lambda c: _py("py_patterns.py", "steady", "dt-steady-py", c.grow_s, 256, 5),
        ),
        Pattern(
            "dt-stepped", "leak", "C, 1 MiB kept every 20 s (3 MB/min, stepped)",
            lambda c: _c(c, "stepped", "dt-stepped", c.grow_s, 1024, 20),
        ),
        Pattern(
            "dt-realloc", "leak", "C, one buffer grown by realloc 64 KiB/s (3.9 MB/min, mremap)",
            lambda c: _c(c, "realloc", "dt-realloc", c.grow_s, 64, 1000),
        ),
        Pattern(
            "dt-pool", "leak", "C, 3 workers, each leaks 1 MiB per task, a task per worker every 20 s",
            lambda c: _c(c, "pool", "dt-pool", c.grow_s, 3, 1024, 20),
        ),
        Pattern(
            "dt-slow", "leak",
            f"C, malloc 16 KiB every 0.6 s via brk ({16 * 1024 / 0.6 / mr:.1f}x min_rate, as a 5 MB/h leak"
            " is of a 3 MB/h rule; its 1 h window scaled to 60 s)",
            lambda c: _c(c, "steady", "dt-slow", c.grow_s, 16, 600),
        ),
        Pattern(
            "dt-gc-node", "quiet",
            "node (V8, --max-old-space-size=160), 40 MB of objects built over 15 s then dropped, repeated",
            lambda c: [
                "node", "--max-old-space-size=160", str(WORKLOADS / "gc_sawtooth.js"), "dt-gc-node",
                f"{c.run_s:g}", "15", "40",
            ],
            needs="node",
        ),
        Pattern(
            "dt-gc-py", "quiet", "python, a 30 MB cache filled over 12 s then cleared, repeated",
            lambda c: _py("py_patterns.py", "sawtooth", "dt-gc-py", c.run_s, 12, 30),
        ),
        Pattern(
            "dt-heap", "quiet",
            "C, JVM-like heap: commit 32->160 MB in place with mmap(MAP_FIXED), uncommit, repeat (~10 s)",
            lambda c: _c(c, "heap", "dt-heap", c.run_s, 32, 160, 8, 600),
        ),
        Pattern(
            "dt-mmap-churn", "quiet", "C, mmap/munmap 4 KiB-4 MiB at random, 64 MB working set, 200 ops/s",
            lambda c: _c(c, "churn", "dt-mmap-churn", c.run_s, 64, 200),
        ),
        Pattern(
            "dt-fork-churn", "quiet", "C, 10 forks/s, each child touches 8 MB and exits after 0.2 s",
            lambda c: _c(c, "forks", "dt-fork-churn", c.run_s, 10, 8),
        ),
        Pattern(
            "dt-jump", "quiet", "C, idle 20 s, then 200 MB at once, then idle",
            lambda c: _c(c, "jump", "dt-jump", c.run_s, 200, 20),
        ),
        Pattern(
            "dt-warm-py", "warmup", "python, cache warm-up 2 MB/s for 40 s, then plateau",
            lambda c: _py("py_patterns.py", "steady", "dt-warm-py", 40, 256, 0.125),
        ),
        Pattern(
            "dt-redis", "warmup",
            f"redis-server, SET 1 KiB values at {REDIS_MB_PER_S:g} MB/s for {REDIS_FILL_S:g} s, then idle",
            _redis_argv, needs="redis-server", driver=_redis_fill,
        ),
    ]  # fmt: skip
