"""RELIABILITY.md 6-11: vanishing processes, PID reuse, churn, hostile /proc, full BPF maps, no BPF."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.common import (
    Daemons,
    config,
    log_text,
    query,
    rss_kb,
    snapshot_ids,
    status,
    stop,
    wait_log,
)
from tests.fixtures.fakeproc import PF_KTHREAD, FakeProc, status_text
from tests.helpers import bpf_possible, ctl, ctl_json, wait_for
from tests.receivers import WebhookReceiver

PER_PROCESS_WORDS = ("/proc/", "No such file", "No such process", "ENOENT", "ESRCH", "Permission denied")


def _no_per_process_logging(text: str) -> None:
    for w in PER_PROCESS_WORDS:
        assert w not in text, f"{w!r} logged:\n{text[-2000:]}"
    assert "Traceback" not in text


# ---- 6. processes vanishing between listing and reading ---------------------------------------------


def test_vanished_entries_are_counted_not_logged(tmp_path: Path, daemons: Daemons) -> None:
    """Deterministic: listed PID directories whose files are gone (ENOENT) or unreadable as files (EISDIR)."""
    fp = FakeProc(tmp_path / "proc")
    for pid in range(100, 110):
        fp.add(pid, b"fine")
    for pid in range(200, 205):
        (tmp_path / "proc" / str(pid)).mkdir()  # listed, but stat is gone
    for pid in range(300, 303):
        (tmp_path / "proc" / str(pid) / "stat").mkdir(parents=True)  # read fails with EISDIR
    db = tmp_path / "db" / "memwatchd.db"
    log = tmp_path / "daemon.log"
    p = daemons.start(config(tmp_path, interval=0.2, procfs_root=tmp_path / "proc"), log)
    try:
        wait_for(lambda: len(snapshot_ids(db)) >= 10, 30, what="snapshots")
        rows = query(db, "SELECT nproc, scan_errors FROM snapshots")
        assert all(r == (10, 8) for r in rows), rows[:5]
        assert status(db).get("scan_errors") == 8
    finally:
        rc, _ = stop(p)
    assert rc == 0
    _no_per_process_logging(log_text(log))


def test_real_fork_churn_vanishing_processes_are_skipped_silently(tmp_path: Path, daemons: Daemons) -> None:
    db = tmp_path / "db" / "memwatchd.db"
    log = tmp_path / "daemon.log"
    p = daemons.start(config(tmp_path, interval=0.1, log_level="debug"), log)
    try:
        wait_for(lambda: len(snapshot_ids(db)) >= 3, 30, what="snapshots")
        n0 = max(snapshot_ids(db))
        churn = subprocess.run(
            ["stress-ng", "--fork", "4", "--timeout", "8s", "--quiet"], timeout=60, check=False
        )
        assert churn.returncode == 0
        assert p.poll() is None
        rows = query(db, "SELECT count(*), sum(scan_errors), max(nproc) FROM snapshots WHERE id > ?", (n0,))[
            0
        ]
        assert rows[0] >= 40, rows  # sampling went on at its pace during the churn
        print(f"churn: {rows[0]} snapshots, {rows[1]} vanished processes counted, up to {rows[2]} processes")
    finally:
        rc, _ = stop(p)
    assert rc == 0
    _no_per_process_logging(log_text(log))  # even at log level debug


# ---- 7. PID reuse -------------------------------------------------------------------------------------


def test_pid_reuse_starts_a_new_series_and_no_rule_joins_them(tmp_path: Path, daemons: Daemons) -> None:
    """pid 4242 grows 4 s as one identity, then 4 s as a new one (same pid, new start time), then vanishes.
    pid 4343 grows the same 8 s as a single identity: the control, which must fire."""
    interval, step_s, mb_per_s = 0.2, 4.0, 4
    fp = FakeProc(tmp_path / "proc")
    with WebhookReceiver() as hook:
        extra = (
            f'[notify]\nurls = ["{hook.url()}"]\n'
            '[[rules]]\nname = "grow"\nkind = "growth"\nmin_rate = "30MB/min"\nwindow = "6s"\n'
            'match = { comm = "grow*" }\n'
        )
        db = tmp_path / "db" / "memwatchd.db"
        log = tmp_path / "daemon.log"

        def put(pid: int, start: int, t: float) -> None:
            pages = 2560 + int(t * mb_per_s * 256)
            fp.add(
                pid,
                b"grow%d" % pid,
                start=start,
                rss_pages=pages,
                vsize_kb=pages * 4 + 50000,
                status=status_text(hwm=pages * 4, anon=pages * 4),
            )

        put(4242, 1000, 0)
        put(4343, 1000, 0)
        p = daemons.start(
            config(tmp_path, interval=interval, procfs_root=tmp_path / "proc", extra=extra), log
        )
        try:
            wait_for(lambda: len(snapshot_ids(db)) >= 2, 30, what="snapshots")
            t0 = time.monotonic()
            while (t := time.monotonic() - t0) < 2 * step_s:
                put(4242, 1000 if t < step_s else 5000, t)
                put(4343, 1000, t)
                time.sleep(0.05)
            fp.remove(4242)
            fired = wait_for(
                lambda: [b["title"] for b in hook.bodies if "FIRING" in b["title"]], 15, what="control fires"
            )
            time.sleep(2.0)
            titles = [b["title"] for b in hook.bodies]
            assert any("pid 4343" in t for t in titles), titles
            assert not any("pid 4242" in t or "processes" in t for t in titles), (
                f"joined series fired: {titles}"
            )
            assert fired
            procs = ctl_json(db, "processes", "--pid", "4242", "--since", "10m")
            assert procs is not None and len(procs) == 2, procs
            assert len({r["start_ticks"] if "start_ticks" in r else r["start_time"] for r in procs}) == 2, (
                procs
            )
            hist = ctl_json(db, "history", "--pid", "4242", "--since", "10m", "--tier", "raw")
            assert hist and len({r["start_ticks"] for r in hist}) == 2
        finally:
            rc, _ = stop(p)
        assert rc == 0


# ---- 8. fork churn with BPF ----------------------------------------------------------------------------


def _bpf_or_skip() -> None:
    reason = bpf_possible()
    if reason:
        pytest.skip(reason)


MMAP_CHURN = """
import mmap, os, sys, time
end = time.monotonic() + float(sys.argv[1])
live = []
while time.monotonic() < end:
    pid = os.fork()
    if pid == 0:
        m = mmap.mmap(-1, 1 << 16)
        time.sleep(0.3)
        os._exit(0)
    live.append(pid)
    if len(live) > 50:
        os.waitpid(live.pop(0), 0)
    time.sleep(0.002)
for pid in live:
    os.waitpid(pid, 0)
"""


def _churn_with_bpf(tmp_path: Path, daemons: Daemons, seconds: int) -> dict[str, int]:
    _bpf_or_skip()
    db = tmp_path / "db" / "memwatchd.db"
    log = tmp_path / "daemon.log"
    p = daemons.start(config(tmp_path, bpf=True, interval=0.5), log)
    try:
        wait_log(log, "memwatchd started", 120)
        if "BPF probes attached" not in log_text(log):
            pytest.skip(f"BPF did not attach here: {log_text(log)[-500:]}")
        wait_for(lambda: len(snapshot_ids(db)) >= 4, 30, what="snapshots")
        time.sleep(6)  # GC idle time: the map settles to the live processes
        base = status(db)
        base_rss = rss_kb(p.pid)
        churner = subprocess.Popen(["stress-ng", "--fork", "4", "--timeout", f"{seconds}s", "--quiet"])
        # stress-ng's children exit without allocating; these mmap first, so each gets a BPF map entry
        mapper = subprocess.Popen([sys.executable, "-c", MMAP_CHURN, str(seconds)])
        peak = base_rss
        peak_tracked = 0
        while churner.poll() is None or mapper.poll() is None:
            peak = max(peak, rss_kb(p.pid))
            peak_tracked = max(peak_tracked, int(status(db).get("bpf_tracked") or 0))
            time.sleep(0.5)
        assert churner.returncode == 0 and mapper.returncode == 0
        assert p.poll() is None, "daemon died during the churn"
        assert peak_tracked > int(base.get("bpf_tracked") or 0) + 5, "the churn never reached the BPF map"
        # exited processes leave the map (exit event, GC after 5 s idle as a safety net)
        wait_for(
            lambda: int(status(db).get("bpf_tracked") or 0) <= int(base.get("bpf_tracked") or 0) + 10,
            20,
            what=f"BPF map back near {base.get('bpf_tracked')} (now {status(db).get('bpf_tracked')})",
        )
        after = status(db)
        end_rss = rss_kb(p.pid)
        assert end_rss - base_rss < 30 * 1024, f"daemon RSS {base_rss} -> {end_rss} kB"
        assert int(after.get("processes") or 0) <= int(base.get("processes") or 0) + 10
        assert status(db).get("bpf_state", "").startswith("active")
    finally:
        rc, _ = stop(p)
    assert rc == 0
    assert "Traceback" not in log_text(log)
    return {
        "base_rss_kb": base_rss,
        "peak_rss_kb": peak,
        "end_rss_kb": end_rss,
        "tracked_before": int(base.get("bpf_tracked") or 0),
        "tracked_peak": peak_tracked,
        "tracked_after": int(after.get("bpf_tracked") or 0),
    }


@pytest.mark.bpf
def test_fork_churn_keeps_daemon_and_bpf_map_bounded(tmp_path: Path, daemons: Daemons) -> None:
    r = _churn_with_bpf(tmp_path, daemons, 10)
    print(r)


@pytest.mark.bpf
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fork_churn_long(tmp_path: Path, daemons: Daemons) -> None:
    print(_churn_with_bpf(tmp_path, daemons, 120))


# ---- 9. hostile /proc content through the daemon ----------------------------------------------------------

HOSTILE = {
    501: (b"a b", "a b"),
    502: (b"x) (y", "x) (y"),
    503: (b"bad\xff\xfeutf8", "bad\\xff\\xfeutf8"),
    504: (b"\xe6\x97\xa5\xe6\x9c\xac", "日本"),
    505: (b"' OR 1=1 --", "' OR 1=1 --"),
    506: (b"new\nline", "new\nline"),
    507: (b"", ""),
    508: (b"bad\\xfeutf8", "bad\\\\xfeutf8"),  # a real backslash: kept doubled, distinct from 503 (issue 14)
}


def test_hostile_proc_content_through_the_daemon_round_trips(tmp_path: Path, daemons: Daemons) -> None:
    fp = FakeProc(tmp_path / "proc")
    for pid, (comm, _) in HOSTILE.items():
        fp.add(pid, comm, cmdline=b"")
    fp.add(
        600, b"zombie", state="Z", rss_pages=0, vsize_kb=0, status=status_text(hwm=None, anon=None, swap=None)
    )
    fp.add(
        601,
        b"kworker/0:1",
        flags=PF_KTHREAD,
        rss_pages=0,
        vsize_kb=0,
        status=status_text(hwm=None, anon=None, swap=None),
        cgroup=None,
    )
    fp.add(602, b"nocgroup", cgroup=None)
    fp.add(603, b"garbage")
    (tmp_path / "proc" / "603" / "stat").write_bytes(b"603 (garbage S 1 2")  # truncated stat
    fp.add(604, b"badstatus", status=b"\xff\xfe\x00VmHWM: lots kB\n")
    db = tmp_path / "db" / "memwatchd.db"
    log = tmp_path / "daemon.log"
    p = daemons.start(config(tmp_path, interval=0.2, procfs_root=tmp_path / "proc"), log)
    try:
        wait_for(lambda: len(snapshot_ids(db)) >= 3, 30, what="snapshots")
        for pid, (raw, shown) in HOSTILE.items():
            rows = ctl_json(db, "processes", "--pid", str(pid), "--since", "10m")
            assert rows and rows[0]["comm"] == shown, (pid, rows)
            # the process's name, byte for byte as in /proc/PID/comm, finds it again, exactly
            if shown:
                again = ctl_json(db, "processes", "--comm", os.fsdecode(raw), "--since", "10m")
                assert again is not None and [r["pid"] for r in again] == [pid], (shown, again)
            r = ctl(db, "processes", "--pid", str(pid), "--since", "10m")
            assert r.returncode == 0 and "Traceback" not in r.stderr
        zombie = ctl_json(db, "history", "--pid", "600", "--since", "10m")
        assert zombie and zombie[-1]["rss_kb"] == 0
        assert ctl_json(db, "processes", "--pid", "601", "--since", "10m") == []  # kernel thread left out
        assert ctl_json(db, "processes", "--pid", "602", "--since", "10m")[0]["unit"] is None
        assert (
            ctl_json(db, "processes", "--pid", "603", "--since", "10m") == []
        )  # unparseable: skipped, counted
        assert ctl_json(db, "history", "--pid", "604", "--since", "10m")[-1]["hwm_kb"] is None
        assert status(db).get("scan_errors") == 1
        top = ctl(db, "top")
        assert top.returncode == 0 and "\n" not in "".join(
            ln for ln in top.stdout.splitlines() if "new" in ln and "line" in ln
        )
    finally:
        rc, _ = stop(p)
    assert rc == 0
    _no_per_process_logging(log_text(log))


# ---- 10. BPF map full and ring-buffer overflow ---------------------------------------------------------

SPAWNER = """
import mmap, os, signal, sys, time
n = int(sys.argv[1])
r, w = os.pipe()
kids = []
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        os.close(w)
        m = mmap.mmap(-1, 1 << 16)        # one mmap: the child gets a BPF map entry
        os.read(r, 1)                     # park until the parent closes the pipe
        os._exit(0)
    kids.append(pid)
print("ready", flush=True)
sys.stdin.readline()
os.close(w)                                  # every child wakes and exits at once: an exit-event burst
for pid in kids:
    os.waitpid(pid, 0)
print("done", flush=True)
"""


@pytest.mark.bpf
def test_bpf_map_full_and_ring_buffer_overflow_are_counted_and_shown(
    tmp_path: Path, daemons: Daemons
) -> None:
    _bpf_or_skip()
    db = tmp_path / "db" / "memwatchd.db"
    log = tmp_path / "daemon.log"
    cfg = config(tmp_path, bpf=True, interval=0.5, bpf_extra="max_pids = 1024\nringbuf_kb = 4\n")
    p = daemons.start(cfg, log)
    sp = None
    try:
        wait_log(log, "memwatchd started", 120)
        if "BPF probes attached" not in log_text(log):
            pytest.skip(f"BPF did not attach here: {log_text(log)[-500:]}")
        wait_for(lambda: len(snapshot_ids(db)) >= 2, 30, what="snapshots")
        assert status(db).get("map_full") == 0 and status(db).get("lost_events") == 0
        # exits wait in a kernel map of min(max_pids, 32768) records between polls (issue 12): 2,000 exits
        # at once overflow the 1,024 here; children older than 1 s are recorded even without a stats entry
        sp = subprocess.Popen(
            [sys.executable, "-c", SPAWNER, "2000"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert sp.stdout and sp.stdin
        assert sp.stdout.readline().strip() == "ready"
        st = wait_for(
            lambda: (s := status(db)) and int(s.get("map_full") or 0) > 0 and s, 20, what="map_full counted"
        )
        assert int(st["bpf_tracked"]) <= 1024
        time.sleep(1.2)
        sp.stdin.write("go\n")
        sp.stdin.flush()
        assert sp.stdout.readline().strip() == "done"
        st = wait_for(
            lambda: (s := status(db)) and int(s.get("lost_events") or 0) > 0 and s,
            20,
            what=f"lost events counted (status {status(db)})",
        )
        r = ctl(db, "status")
        assert r.returncode == 0
        assert "BPF map full" in r.stdout and "lost events" in r.stdout
        shown = {
            ln.split("  ")[0].strip(): ln.split()[-1]
            for ln in r.stdout.splitlines()
            if ln.startswith(("BPF map full", "lost events"))
        }
        assert int(shown["BPF map full"]) > 0 and int(shown["lost events"]) > 0, r.stdout
        assert p.poll() is None
        print({k: st.get(k) for k in ("map_full", "lost_events", "bpf_tracked")})
    finally:
        if sp is not None and sp.poll() is None:
            sp.kill()
            sp.wait()
        rc, _ = stop(p)
    assert rc == 0
    assert "Traceback" not in log_text(log)


# ---- 11. BPF unavailable ----------------------------------------------------------------------------------


def test_without_bpf_privileges_runs_on_proc_and_says_why(tmp_path: Path, daemons: Daemons) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop capabilities from")
    db = tmp_path / "db" / "memwatchd.db"
    log = tmp_path / "daemon.log"
    p = daemons.start(
        config(tmp_path, bpf=True, interval=0.2),
        log,
        prefix=["setpriv", "--inh-caps=-all", "--bounding-set=-bpf,-perfmon,-sys_admin"],
    )
    try:
        wait_for(lambda: len(snapshot_ids(db)) >= 5, 60, what="snapshots from /proc alone")
        st = status(db)
        assert st["bpf_state"].startswith("unavailable: missing capabilities"), st
        assert "CAP_BPF" in st["bpf_state"]
        own = ctl_json(db, "history", "--pid", str(os.getpid()), "--since", "5m")
        assert own and own[-1]["rss_kb"] > 0 and own[-1]["mmap_count"] is None
        r = ctl(db, "status")
        assert "unavailable: missing capabilities" in r.stdout
    finally:
        rc, _ = stop(p)
    assert rc == 0
    text = log_text(log)
    assert text.count("BPF unavailable") == 1, text
    assert "Traceback" not in text
