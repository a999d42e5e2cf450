"""The whole daemon against its peers: CPU time per process per cycle, % of a core, anonymous memory.

A population of N idle processes (one small C parent forking N children that pause()) is started,
then each tool watches it for a fixed period at a 3 s interval:

- memwatchd: the real daemon (`memwatchd --config` with the shipped rules, database in a temp dir);
- atop -w FILE 3; pidstat -r -h -p ALL 3; Netdata's apps.plugin 3 (standalone, output discarded);
- prometheus-process-exporter (every process grouped by comm), scraped every 3 s by this script
  over 127.0.0.1.

CPU is measured, not wall time (the host is shared): utime+stime of the tool and its live descendants
from /proc/PID/stat (all threads, dead ones included) plus the reaped children's cutime+cstime, taken
at the start and end of the measurement period, after a warm-up. µs per process per cycle =
CPU / (processes on the host x cycles in the period). Anonymous memory is RssAnon from /proc/PID/status
(tool + descendants): the value at the end of the period and the largest seen during it. Tools run
interleaved (rotating order), 3 rounds, median.

Usage: .venv/bin/python scripts/bench_daemon.py [--quick] [--sizes 2000,10000] [--tools memwatchd,atop,...]
       [--rounds 3] [--measure 60] [--base CHECKOUT] [--out bench/daemon.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
INTERVAL_S = 3.0
TICK = os.sysconf("SC_CLK_TCK")
TOOLS = ["memwatchd", "memwatchd-proc", "atop", "pidstat", "apps.plugin", "process-exporter"]
BASE: Path | None = None  # --base CHECKOUT: that checkout's memwatchd also runs, as "memwatchd-base"
APPS_PLUGIN = "/usr/lib/netdata/plugins.d/apps.plugin"

SLEEPERS_C = r"""
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    setpgid(0, 0);
    for (int i = 0; i < n; i++) {
        pid_t p = fork();
        if (p == 0) { for (;;) pause(); }
        if (p < 0) { perror("fork"); return 1; }
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
"""


@dataclass
class Population:
    """N idle children of one C parent, in their own process group."""

    n: int
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def build_sleepers(tmp: Path) -> Path:
    src = tmp / "sleepers.c"
    src.write_text(SLEEPERS_C)
    exe = tmp / "sleepers"
    subprocess.run(["cc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def spawn(exe: Path, n: int) -> Population:
    p = subprocess.Popen([str(exe), str(n)], stdout=subprocess.PIPE)
    assert p.stdout is not None
    line = p.stdout.readline()
    if line.strip() != b"ready":
        p.kill()
        raise RuntimeError(f"sleepers did not start ({n} processes)")
    return Population(n, p)


def host_processes() -> int:
    return sum(1 for d in os.listdir("/proc") if d.isdigit())


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].decode().split()


def descendants(root: int) -> list[int]:
    """root and its live descendants (one pass over /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        f = _stat_fields(int(d))
        if f is not None:
            children.setdefault(int(f[1]), []).append(int(d))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(root: int) -> float:
    """utime+stime of root and its live descendants, plus what root's reaped children used."""
    total = 0
    for pid in descendants(root):
        f = _stat_fields(pid)
        if f is None:
            continue
        total += int(f[11]) + int(f[12])  # utime, stime (all threads of the process, ended ones too)
        if pid == root:
            total += int(f[13]) + int(f[14])  # cutime, cstime
    return total / TICK


def anon_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"RssAnon:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Tool:
    """How to start one tool; `extra` runs beside it during measurement (a scraper)."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    warm_s: float = 6.0
    extra: Callable[[threading.Event], None] | None = None
    cleanup: Callable[[], None] | None = None


def _memwatchd(tmp: Path, repo: Path = REPO, name: str = "memwatchd", source: str | None = None) -> Tool:
    shipped = (repo / "etc" / "memwatchd.toml").read_text()
    d = Path(tempfile.mkdtemp(dir=tmp))
    text = shipped.replace('path = "/var/lib/memwatchd/memwatchd.db"', f'path = "{d}/m.db"')
    text = text.replace("interval = 3 ", f"interval = {INTERVAL_S:g} ")
    if source is not None:  # [procfs] source: "proc" measures the /proc scan (no BPF task iterator)
        text, n = re.subn(r'(?m)^source = "auto"', f'source = "{source}"', text)
        if n != 1:
            raise RuntimeError("etc/memwatchd.toml has no [procfs] source line to override")
    cfg = d / "memwatchd.toml"
    cfg.write_text(text)
    # warm-up: BPF compile, the first full read of every process and the windows' first points
    exe = BIN / "memwatchd" if repo == REPO else repo / ".venv" / "bin" / "memwatchd"
    return Tool(name, [str(exe), "--config", str(cfg)], warm_s=20.0)


def _memwatchd_proc(tmp: Path) -> Tool:
    return _memwatchd(tmp, REPO, "memwatchd-proc", source="proc")


def _memwatchd_base(tmp: Path) -> Tool:
    assert BASE is not None
    return _memwatchd(tmp, BASE, "memwatchd-base")


def _atop(tmp: Path) -> Tool:
    f = Path(tempfile.mkdtemp(dir=tmp)) / "atop.raw"
    return Tool("atop", ["atop", "-w", str(f), str(int(INTERVAL_S))])


def _pidstat(tmp: Path) -> Tool:
    return Tool("pidstat", ["pidstat", "-r", "-h", "-p", "ALL", str(int(INTERVAL_S))])


def _apps_plugin(tmp: Path) -> Tool:
    d = Path(tempfile.mkdtemp(dir=tmp))
    env = {
        "NETDATA_HOST_PREFIX": "",
        "NETDATA_CONFIG_DIR": "/etc/netdata",
        "NETDATA_USER_CONFIG_DIR": "/etc/netdata",
        "NETDATA_STOCK_CONFIG_DIR": "/usr/lib/netdata/conf.d",
        "NETDATA_PLUGINS_DIR": "/usr/lib/netdata/plugins.d",
        "NETDATA_LOG_DIR": str(d),
        "NETDATA_CACHE_DIR": str(d),
        "NETDATA_LIB_DIR": str(d),
        "NETDATA_UPDATE_EVERY": str(int(INTERVAL_S)),
    }
    return Tool("apps.plugin", [APPS_PLUGIN, str(int(INTERVAL_S))], env=env)


def _process_exporter(tmp: Path) -> Tool:
    d = Path(tempfile.mkdtemp(dir=tmp))
    cfg = d / "all.yml"
    # every process, grouped by comm: the exporter's documented "all processes" configuration
    cfg.write_text("process_names:\n  - name: '{{.Comm}}'\n    cmdline:\n    - '.+'\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"

    def scrape(stop: threading.Event) -> None:
        while not stop.wait(INTERVAL_S):
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    r.read()
            except OSError:
                pass

    argv = [
        "prometheus-process-exporter",
        "-web.listen-address",
        f"127.0.0.1:{port}",
        "-config.path",
        str(cfg),
    ]
    return Tool("process-exporter", argv, extra=scrape)


MAKERS: dict[str, Callable[[Path], Tool]] = {
    "memwatchd": _memwatchd,
    "memwatchd-proc": _memwatchd_proc,
    "memwatchd-base": _memwatchd_base,
    "atop": _atop,
    "pidstat": _pidstat,
    "apps.plugin": _apps_plugin,
    "process-exporter": _process_exporter,
}


def available(name: str) -> str | None:
    """None when the tool can run here, else why not."""
    if name == "memwatchd-base" and BASE is None:
        return "no --base checkout given"
    exe = {
        "memwatchd": str(BIN / "memwatchd"),
        "memwatchd-proc": str(BIN / "memwatchd"),
        "memwatchd-base": str(BASE / ".venv" / "bin" / "memwatchd") if BASE else "",
        "atop": "atop",
        "pidstat": "pidstat",
        "apps.plugin": APPS_PLUGIN,
        "process-exporter": "prometheus-process-exporter",
    }[name]
    if shutil.which(exe) is None:
        return f"{exe} not installed (scripts/setup --test installs it)"
    return None


def measure(tool: Tool, measure_s: float, log: Path) -> dict[str, object]:
    env = dict(os.environ)
    env.update(tool.env)
    with open(log, "wb") as lf:
        # stdin stays open: apps.plugin reads commands from it and exits at EOF
        p = subprocess.Popen(
            tool.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=lf,
            env=env,
            start_new_session=True,
        )
    stop = threading.Event()
    th = None
    try:
        if tool.extra is not None:
            th = threading.Thread(target=tool.extra, args=(stop,), daemon=True)
            th.start()
        time.sleep(tool.warm_s)
        if p.poll() is not None:
            raise RuntimeError(f"{tool.name} exited with {p.returncode}: {log.read_text()[-500:]}")
        counts = [host_processes()]  # the host is shared: its population is sampled, not assumed
        c0 = cpu_seconds(p.pid)
        t0 = time.monotonic()
        peak = 0
        while time.monotonic() - t0 < measure_s:
            time.sleep(min(INTERVAL_S, measure_s - (time.monotonic() - t0)))
            peak = max(peak, anon_kb([p.pid]))
            counts.append(host_processes())
        c1 = cpu_seconds(p.pid)
        elapsed = time.monotonic() - t0
        pids = descendants(p.pid)
        anon_end = anon_kb(pids)
        nprocs = round(statistics.mean(counts))
        if p.poll() is not None:
            raise RuntimeError(f"{tool.name} exited with {p.returncode}: {log.read_text()[-500:]}")
    finally:
        stop.set()
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        if p.stdin is not None:
            p.stdin.close()
        if th is not None:
            th.join(timeout=15)
        if tool.cleanup is not None:
            tool.cleanup()
    cpu = c1 - c0
    cycles = elapsed / INTERVAL_S
    return {
        "cpu_s": round(cpu, 3),
        "elapsed_s": round(elapsed, 1),
        "processes": nprocs,
        "processes_min_max": [min(counts), max(counts)],
        "us_per_process_cycle": round(cpu * 1e6 / (nprocs * cycles), 2),
        "pct_core": round(100.0 * cpu / elapsed, 2),
        "anon_mb": round(anon_end / 1024.0, 1),
        "anon_peak_mb": round(max(peak, anon_end) / 1024.0, 1),
    }


def run_all(sizes: list[int], tools: list[str], rounds: int, measure_s: float) -> dict[str, object]:
    results: list[dict[str, object]] = []
    failed: list[dict[str, object]] = []
    skipped = {t: why for t in tools if (why := available(t)) is not None}
    runnable = [t for t in tools if t not in skipped]
    with tempfile.TemporaryDirectory(prefix="memwatchd-bench-daemon-") as tmp_s:
        tmp = Path(tmp_s)
        exe = build_sleepers(tmp)
        for n in sizes:
            pop = spawn(exe, n)
            try:
                for rnd in range(rounds):
                    order = runnable[rnd % len(runnable) :] + runnable[: rnd % len(runnable)]
                    for name in order:
                        if name in skipped:
                            continue
                        print(f"  {n} processes, round {rnd + 1}: {name} ...", file=sys.stderr, flush=True)
                        try:
                            r = measure(MAKERS[name](tmp), measure_s, tmp / f"{name}.log")
                        except RuntimeError as e:  # this run only: the tool stays in the next rounds
                            err = str(e)[-300:]
                            failed.append({"tool": name, "spawned": n, "round": rnd + 1, "error": err})
                            print(f"  {name} failed: {e}", file=sys.stderr)
                            continue
                        print(f"    {r}", file=sys.stderr, flush=True)
                        results.append({"tool": name, "spawned": n, "round": rnd + 1, **r})
            finally:
                pop.stop()
    return {"results": results, "skipped": skipped, "failed": failed}


def summarize(raw: list[dict[str, object]]) -> list[dict[str, object]]:
    rows = []
    keys = sorted({(str(r["tool"]), int(r["spawned"])) for r in raw}, key=lambda k: (k[1], k[0]))  # type: ignore[call-overload]
    for tool, n in keys:
        rs = [r for r in raw if r["tool"] == tool and r["spawned"] == n]
        med = {
            k: statistics.median(float(r[k]) for r in rs)  # type: ignore[arg-type]
            for k in ("us_per_process_cycle", "pct_core", "anon_mb", "anon_peak_mb", "processes")
        }
        rows.append({"tool": tool, "spawned": n, "runs": len(rs), **{k: round(v, 2) for k, v in med.items()}})
    return rows


LABELS = {
    "memwatchd": "memwatchd (shipped rules, BPF on)",
    "memwatchd-proc": 'memwatchd, /proc scan ([procfs] source = "proc")',
    "memwatchd-base": "memwatchd before (--base checkout, same config)",
    "atop": "atop -w FILE 3",
    "pidstat": "pidstat -r -h -p ALL 3",
    "apps.plugin": "Netdata apps.plugin 3",
    "process-exporter": "prometheus-process-exporter (scraped every 3 s)",
}


def markdown(rows: list[dict[str, object]], skipped: dict[str, str]) -> str:
    out = [
        "| processes on host | tool | µs CPU / process / cycle | % of a core | anon RSS (end / peak)"
        " | runs |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {round(float(str(r['processes']))):,} | {LABELS.get(str(r['tool']), r['tool'])}"
            f" | {r['us_per_process_cycle']}"
            f" | {r['pct_core']} | {r['anon_mb']} / {r['anon_peak_mb']} MB | {r['runs']} |"
        )
    for t, why in skipped.items():
        out.append(f"\n{t}: skipped ({why})")
    return "\n".join(out)


def run(quick: bool) -> list[dict[str, object]]:
    """Entry point for scripts/bench_all.py: rows in its table format."""
    sizes = [2000] if quick else [2000, 10000]
    data = run_all(sizes, TOOLS, 1 if quick else 3, 30.0 if quick else 60.0)
    rows = []
    for r in summarize(data["results"]):  # type: ignore[arg-type]
        rows.append(
            {
                "benchmark": "daemon",
                "config": f"{r['tool']} @ {r['spawned']} idle",
                "value": r["us_per_process_cycle"],
                "unit": "µs CPU/process/cycle",
                "target": "<= 5" if r["tool"] == "memwatchd" else "",
                "note": f"{r['pct_core']}% of a core, anon {r['anon_mb']} MB",
            }
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2,000 processes, one round, 30 s per tool")
    ap.add_argument("--sizes", default=None, help="comma-separated idle process counts (default 2000,10000)")
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of: " + ", ".join(TOOLS))
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; quick 1)")
    ap.add_argument("--measure", type=float, default=None, help="seconds measured per run (default 60)")
    ap.add_argument("--out", default=str(REPO / "bench" / "daemon.json"), help="JSON output")
    ap.add_argument(
        "--base",
        default=None,
        metavar="CHECKOUT",
        help="another checkout with its own .venv (e.g. a worktree of an older main): its memwatchd runs too,"
        " interleaved, as memwatchd-base",
    )
    args = ap.parse_args()
    global BASE  # noqa: PLW0603 - a command-line option of this script, set once before anything runs
    if args.base:
        BASE = Path(args.base).resolve()
    # SIGTERM ends the run through the finally blocks: populations and tools are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = [int(s) for s in (args.sizes or ("2000" if args.quick else "2000,10000")).split(",")]
    rounds = args.rounds or (1 if args.quick else 3)
    measure_s = args.measure or (30.0 if args.quick else 60.0)
    tools = [t for t in args.tools.split(",") if t]
    if BASE is not None and "memwatchd-base" not in tools:
        tools.insert(1, "memwatchd-base")
    for t in tools:
        if t not in MAKERS:
            print(f"Error: unknown tool {t!r} (choose from {', '.join(MAKERS)})", file=sys.stderr)
            return 2
    if os.geteuid() != 0:
        print("Error: run as root (memwatchd's BPF probes, atop, apps.plugin)", file=sys.stderr)
        return 2
    started = time.time()
    data = run_all(sizes, tools, rounds, measure_s)
    rows = summarize(data["results"])  # type: ignore[arg-type]
    doc = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "command": "scripts/bench_daemon.py " + " ".join(sys.argv[1:]),
        "commit": subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "host": f"{platform.node()} {platform.release()}, {os.cpu_count()} CPUs (shared)",
        "load_at_start": os.getloadavg(),
        "interval_s": INTERVAL_S,
        "measure_s": measure_s,
        "rounds": rounds,
        "summary": rows,
        **data,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    md = markdown(rows, data["skipped"])  # type: ignore[arg-type]
    Path(args.out).with_suffix(".md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
