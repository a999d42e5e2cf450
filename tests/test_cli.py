"""memwatchctl against a database built by the real StoreWriter: exact tables and JSON, errors, help text."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from memwatchd.cli.main import cli
from memwatchd.config import StorageConfig
from memwatchd.models import AlertRecord, BpfHealth, MemInfo, ProcessExit, ProcessSnapshot, Snapshot
from memwatchd.store.writer import StoreWriter

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
NOW = T0 + 40
ENV = {"TZ": "UTC", "COLUMNS": "200", "MEMWATCHCTL_NOW": str(NOW)}


def _p(pid: int, comm: str, rss: int, mmaps: int, **kw: Any) -> ProcessSnapshot:
    fields: dict[str, Any] = dict(
        pid=pid,
        start_ticks=pid * 100,
        start_time=T0 - 3600,
        comm=comm,
        unit=f"{comm}.service",
        cgroup=None,
        rss_kb=rss,
        anon_kb=rss // 2,
        swap_kb=0,
        vm_kb=rss * 4,
        hwm_kb=rss,
        pss_kb=None,
        uss_kb=None,
        mmap_count=mmaps,
        mmap_bytes=mmaps * 65536,
        munmap_count=0,
        munmap_bytes=0,
        brk_count=2,
        brk_bytes=8192,
        mapped_bytes=mmaps * 65536 + 8192,
        mremap_count=1,
        mremap_grow_bytes=4096,
        mremap_shrink_bytes=0,
        d_mmap_count=2,
        d_mmap_bytes=2 * 65536,
        dt_s=3.0,
    )
    fields.update(kw)
    return ProcessSnapshot(**fields)


def make_db(tmp: Path) -> Path:
    """Ten snapshots, 3 s apart: web (11) grows, db (12) is steady, job (13) exits at the fifth."""
    db = tmp / "m.db"
    snaps = []
    for i in range(10):
        procs = [
            _p(11, "web", 10_000 + 1024 * i, 10 + 2 * i),
            _p(12, "db", 50_000, 5, d_mmap_count=0, d_mmap_bytes=0),
        ]
        exits: tuple[ProcessExit, ...] = ()
        if i < 5:
            procs.append(_p(13, "job", 2_000 + i, 1, exited=i == 4, d_mmap_count=0, d_mmap_bytes=0))
        if i == 4:
            exits = (
                ProcessExit(pid=13, comm="job", exit_code=1, final=None, mono_ns=int((3 * i - 1) * 1e9)),
            )
        snaps.append(
            Snapshot(
                ts=T0 + 3 * i,
                mono=3.0 * i,
                processes=tuple(procs),
                meminfo=MemInfo(16 << 20, 8 << 20, 2 << 20, 1 << 20),
                bpf=BpfHealth("active"),
                exits=exits,
            )
        )
    alert = AlertRecord(
        rule="web-growth",
        kind="growth",
        pid=11,
        start_ticks=1100,
        comm="web",
        unit="web.service",
        state="firing",
        since=T0 + 3,
        fired_at=T0 + 9,
        value=15e6,
        rate=1000.0,
        summary="web grows 3.4M/h",
    )

    async def go() -> None:
        w = await StoreWriter.open(str(db), StorageConfig())
        for s in snaps:
            await w.write(s)
        await w.save_alerts([alert])
        await w.set_status(bpf_state="active", lost_events=7, map_full=0, pid=4242, last_snapshot_ts=T0 + 27)
        await w.close()

    asyncio.run(go())
    return db


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_db(tmp_path_factory.mktemp("cli"))


def run(db: Path | None, *args: str) -> Result:
    pre = ["--db", str(db)] if db is not None else []
    return CliRunner().invoke(cli, [*pre, *args], env=ENV, catch_exceptions=False)


def test_top_table(db: Path) -> None:
    r = run(db, "top")
    assert r.exit_code == 0, r.output
    assert r.stdout == (
        "2023-11-14 22:13:47  mem 16G total, 8.0G available  swap 1.0G used of 2.0G  2 processes"
        "  alloc 0.67 mmaps/s 43K/s mmap 0B/s brk\n"
        "PID   COMM   UNIT          RSS   ANON   SWAP   GROWTH   MMAP/S   MMAP B/S   MEAN MAP\n"
        "────────────────────────────────────────────────────────────────────────────────────\n"
        " 12   db     db.service    49M    24M     0B        -        0       0B/s        64K\n"
        " 11   web    web.service   19M   9.4M     0B        -     0.67      43K/s        64K\n"
    )


def test_top_json_sorted_by_mmap(db: Path) -> None:
    r = run(db, "top", "--sort", "mmap", "--limit", "1", "--json")
    data = json.loads(r.stdout)
    assert data["summary"] == {
        "ts": T0 + 27,
        "interval_s": 3.0,
        "mem_total_kb": 16 << 20,
        "mem_available_kb": 8 << 20,
        "swap_used_kb": 1 << 20,
        "swap_total_kb": 2 << 20,
        "processes": 2,
        "mmaps_per_s": 0.67,
        "mmap_bytes_per_s": 43690.7,
        "brk_bytes_per_s": 0,
    }
    assert data["processes"] == [
        {
            "pid": 11,
            "start_ticks": 1100,
            "start_time": T0 - 3600,
            "comm": "web",
            "unit": "web.service",
            "rss_kb": 19216,
            "anon_kb": 9608,
            "vm_kb": 76864,
            "mmap_count": 28,
            "mmap_bytes": 28 * 65536,
            "munmap_count": 0,
            "munmap_bytes": 0,
            "swap_kb": 0,
            "hwm_kb": 19216,
            "brk_count": 2,
            "brk_bytes": 8192,
            "pss_kb": None,
            "uss_kb": None,
            "mapped_bytes": 28 * 65536 + 8192,
            "mremap_count": 1,
            "mremap_grow_bytes": 4096,
            "mremap_shrink_bytes": 0,
            "growth_kb_per_h": None,
            "mmaps_per_s": 0.67,
            "mmap_bytes_per_s": 43690.7,
            "brk_bytes_per_s": 0.0,
            "mean_mmap_bytes": 65536,
        }
    ]


def test_history_table(db: Path) -> None:
    r = run(db, "history", "--pid", "11", "--since", "@1700000000", "--until", "@1700000010")
    assert r.stdout == (
        "tier: raw\n"
        "TIME                  PID   COMM    RSS   ANON   SWAP    VM    HWM   MMAPS   MMAP B   MUNMAP B   BRK B\n"  # noqa: E501 - exact output
        "──────────────────────────────────────────────────────────────────────────────────────────────────────\n"  # noqa: E501 - exact output
        "2023-11-14 22:13:20    11   web    9.8M   4.9M     0B   39M   9.8M      10     640K         0B    8.0K\n"  # noqa: E501 - exact output
        "2023-11-14 22:13:23    11   web     11M   5.4M     0B   43M    11M      12     768K         0B    8.0K\n"  # noqa: E501 - exact output
        "2023-11-14 22:13:26    11   web     12M   5.9M     0B   47M    12M      14     896K         0B    8.0K\n"  # noqa: E501 - exact output
        "2023-11-14 22:13:29    11   web     13M   6.4M     0B   51M    13M      16     1.0M         0B    8.0K\n"  # noqa: E501 - exact output
    )


def test_history_json_and_csv(db: Path) -> None:
    rows = json.loads(run(db, "history", "--pid", "12", "--since", "@1700000000", "--json").stdout)
    base = {
        "pid": 12,
        "start_ticks": 1200,
        "start_time": T0 - 3600,
        "comm": "db",
        "unit": "db.service",
        "tier": "raw",
        "samples": 1,
        "rss_kb": 50000,
        "anon_kb": 25000,
        "swap_kb": 0,
        "vm_kb": 200000,
        "hwm_kb": 50000,
        "pss_kb": None,
        "uss_kb": None,
        "mmap_count": 5,
        "mmap_bytes": 327680,
        "munmap_count": 0,
        "munmap_bytes": 0,
        "brk_count": 2,
        "brk_bytes": 8192,
        "mapped_bytes": 5 * 65536 + 8192,
        "mremap_count": 1,
        "mremap_grow_bytes": 4096,
        "mremap_shrink_bytes": 0,
        "rss_min_kb": 50000,
        "rss_max_kb": 50000,
        "rss_avg_kb": 50000.0,
        "anon_min_kb": 25000,
        "anon_max_kb": 25000,
        "anon_avg_kb": 25000.0,
        "swap_min_kb": 0,
        "swap_max_kb": 0,
        "swap_avg_kb": 0.0,
    }
    assert rows == [{"ts": T0, **base}, {"ts": T0 + 27, **base}]
    assert list(rows[0])[:2] == ["ts", "pid"]
    csv = run(
        db, "history", "--pid", "12", "--since", "@1700000000", "--until", "@1700000010", "--csv"
    ).stdout
    assert csv.splitlines() == [
        "ts,pid,start_ticks,start_time,comm,unit,tier,samples,rss_kb,anon_kb,swap_kb,vm_kb,hwm_kb,pss_kb,uss_kb,"  # noqa: E501 - exact output
        "mmap_count,mmap_bytes,munmap_count,munmap_bytes,brk_count,brk_bytes,rss_min_kb,rss_max_kb,rss_avg_kb,"  # noqa: E501 - exact output
        "anon_min_kb,anon_max_kb,anon_avg_kb,swap_min_kb,swap_max_kb,swap_avg_kb,"
        "mapped_bytes,mremap_count,mremap_grow_bytes,mremap_shrink_bytes",
        "1700000000.0,12,1200,1699996400.0,db,db.service,raw,1,50000,25000,0,200000,50000,,,5,327680,0,0,2,8192,"  # noqa: E501 - exact output
        "50000,50000,50000.0,25000,25000,25000.0,0,0,0.0,335872,1,4096,0",
        "1700000009.0,12,1200,1699996400.0,db,db.service,raw,1,50000,25000,0,200000,50000,,,5,327680,0,0,2,8192,"  # noqa: E501 - exact output
        "50000,50000,50000.0,25000,25000,25000.0,0,0,0.0,335872,1,4096,0",
    ]


def test_history_minute_tier_by_unit(db: Path) -> None:
    rows = json.loads(
        run(
            db, "history", "--unit", "web.service", "--since", "@1700000000", "--tier", "minute", "--json"
        ).stdout
    )
    assert [
        (r["ts"], r["samples"], r["rss_min_kb"], r["rss_max_kb"], r["rss_avg_kb"], r["rss_kb"]) for r in rows
    ] == [
        (1699999980.0, 10, 10000, 19216, 14608.0, 19216),  # all ten snapshots fall in 22:13
    ]


def test_processes_table(db: Path) -> None:
    r = run(db, "processes", "--since", "1h")
    assert r.stdout == (
        "PID   COMM   UNIT          STARTED               FIRST SEEN            LAST SEEN             EXITED                CODE\n"  # noqa: E501 - exact output
        "───────────────────────────────────────────────────────────────────────────────────────────────────────────────────────\n"  # noqa: E501 - exact output
        " 11   web    web.service   2023-11-14 21:13:20   2023-11-14 22:13:20   live                  -                        -\n"  # noqa: E501 - exact output
        " 12   db     db.service    2023-11-14 21:13:20   2023-11-14 22:13:20   live                  -                        -\n"  # noqa: E501 - exact output
        " 13   job    job.service   2023-11-14 21:13:20   2023-11-14 22:13:20   2023-11-14 22:13:32   2023-11-14 22:13:31      1\n"  # noqa: E501 - exact output
    )


def test_status_json_and_table(db: Path) -> None:
    st = json.loads(run(db, "status", "--json").stdout)
    assert st["db_bytes"] > 0 and st["db_path"].endswith("m.db")
    for k in ("db_bytes", "db_path", "wal_bytes"):
        del st[k]
    assert st == {
        "bpf_state": "active",
        "last_snapshot_ts": T0 + 27,
        "lost_events": 7,
        "map_full": 0,
        "pid": 4242,
        "latest_snapshot_ts": T0 + 27,
        "span_start_ts": T0,
        "span_end_ts": T0 + 27,
        "processes_live": 2,
        "processes_known": 3,
        "snapshots_raw": 10,
        "ooms": 0,
        "host_memory": None,  # the fixture writes no host breakdown
    }
    lines = run(db, "status").stdout.splitlines()
    assert lines[1:] == [
        "time span      2023-11-14 22:13:20 .. 2023-11-14 22:13:47 (27s)",
        "last snapshot  2023-11-14 22:13:47 (13s ago)",
        "daemon pid     4242",
        "BPF            active",
        "scan source    -",  # the fixture's status (as a daemon before scan_source wrote it) has none
        "lost events    7",
        "BPF map full   0",
        "processes      2 live, 3 known",
        "OOM kills      0",
    ]


def test_alerts(db: Path) -> None:
    assert run(db, "alerts").stdout == (
        "SINCE                 RULE         KIND     PID   COMM   STATE    FIRED                 RESOLVED   VALUE     RATE   SUMMARY         \n"  # noqa: E501 - exact output
        "────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────\n"  # noqa: E501 - exact output
        "2023-11-14 22:13:23   web-growth   growth    11   web    firing   2023-11-14 22:13:29   -            14M   3.4M/h   web grows 3.4M/h\n"  # noqa: E501 - exact output
    )
    rows = json.loads(run(db, "alerts", "--json").stdout)
    assert [(a["rule"], a["state"], a["value"]) for a in rows] == [("web-growth", "firing", 15e6)]
    assert json.loads(run(db, "alerts", "--state", "resolved", "--json").stdout) == []


def test_plot(db: Path) -> None:
    r = run(db, "plot", "--pid", "11", "--since", "@1700000000", "--width", "20", "--height", "4")
    assert r.stdout == (
        "rss of pid 11 (1 process, tier raw)\n"
        "    19M ┤               ▁▁▅▅█\n"
        "    14M ┤           ▂▂▆▆█████\n"
        "        ┤      ▃▃▇▇▇█████████\n"
        "   9.8M ┤▁▁▄▄████████████████\n"
        "        └────────────────────\n"
        "         2023-11-14 22:13:20 2023-11-14 22:13:47\n"
    )
    pts = json.loads(run(db, "plot", "--unit", "web.service", "--since", "@1700000000", "--json").stdout)
    assert pts[0] == {"ts": T0, "rss_kb": 10000} and pts[-1] == {"ts": T0 + 27, "rss_kb": 19216}


# ---- hostile input and errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    "comm", ["it's", '"', "%", "_", "w%", "we_", "x\x00y", "k" * 10_000, "web' OR '1'='1"]
)
def test_hostile_comm_returns_empty(db: Path, comm: str) -> None:
    r = run(db, "history", "--comm", comm, "--since", "@1700000000", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == []
    assert json.loads(run(db, "processes", "--comm", comm, "--since", "1h", "--json").stdout) == []


def test_comm_glob(db: Path) -> None:
    rows = json.loads(run(db, "processes", "--comm-glob", "[wj]*", "--since", "1h", "--json").stdout)
    assert [r["pid"] for r in rows] == [11, 13]


@pytest.mark.parametrize("since", ["bad", "2x", "-1h", "2023-13-45", "\x00", "9" * 100])
def test_bad_since_is_a_usage_error(db: Path, since: str) -> None:
    r = run(db, "history", "--pid", "1", "--since", since)
    assert r.exit_code == 2
    assert "Invalid value for '--since'" in r.stderr and "Traceback" not in r.output


def test_usage_errors(db: Path) -> None:
    assert run(db, "history").exit_code == 2  # no selector
    assert run(db, "history", "--pid", "1", "--json", "--csv").exit_code == 2
    assert run(db, "history", "--pid", "1", "--since", "1h", "--until", "2h").exit_code == 2


def test_missing_unreadable_and_foreign_databases_are_one_line_errors(tmp_path: Path) -> None:
    r = run(tmp_path / "none.db", "status")
    assert r.exit_code == 1 and r.stderr.startswith("Error: database ") and r.stderr.count("\n") == 1
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    r = run(junk, "top")
    assert r.exit_code == 1 and r.stderr.startswith("Error: ") and "Traceback" not in r.output
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    r = run(empty, "status")
    assert r.exit_code == 1 and "not a memwatchd database" in r.stderr
    r = run(None, "--config", str(tmp_path / "missing.toml"), "status")
    assert r.exit_code == 1 and r.stderr.startswith("Error: ") and "--db" in r.stderr


def test_config_names_the_database(db: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text(f'[storage]\npath = "{db}"\n')
    r = run(None, "--config", str(cfg), "status", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["processes_known"] == 3


def test_every_command_and_option_has_help() -> None:
    assert cli.help
    ctx = click.Context(cli)
    for param in cli.params:
        if isinstance(param, click.Option):
            assert param.help, f"memwatchctl {param.name}"
    names = cli.list_commands(ctx)  # includes the lazily imported ones
    assert set(names) >= {"top", "history", "processes", "plot", "status", "alerts", "notify-test"}
    for name in names:
        cmd = cli.get_command(ctx, name)
        assert cmd is not None and cmd.help and cmd.get_short_help_str(), name
        for param in cmd.get_params(ctx):
            if isinstance(param, click.Option):
                assert param.help, f"memwatchctl {name} {param.opts}"
        r = CliRunner().invoke(cli, [name, "--help"])
        assert r.exit_code == 0 and "Usage: " in r.stdout


def test_json_field_names_are_pinned(db: Path) -> None:
    """Users' scripts read these keys: the typed rows must print exactly these, in this order."""
    since = ("--since", "@1700000000")
    hist = json.loads(run(db, "history", "--pid", "12", *since, "--json").stdout)
    assert list(hist[0]) == [
        "ts", "pid", "start_ticks", "start_time", "comm", "unit", "tier", "samples",
        "rss_kb", "anon_kb", "swap_kb", "vm_kb", "hwm_kb", "pss_kb", "uss_kb",
        "mmap_count", "mmap_bytes", "munmap_count", "munmap_bytes", "brk_count", "brk_bytes",
        "rss_min_kb", "rss_max_kb", "rss_avg_kb", "anon_min_kb", "anon_max_kb", "anon_avg_kb",
        "swap_min_kb", "swap_max_kb", "swap_avg_kb",
        "mapped_bytes", "mremap_count", "mremap_grow_bytes", "mremap_shrink_bytes",
    ]  # fmt: skip
    procs = json.loads(run(db, "processes", *since, "--json").stdout)
    assert list(procs[0]) == [
        "pid", "start_ticks", "start_time", "comm", "unit", "cgroup", "first_seen", "last_seen",
        "exit_time", "exit_code", "exit_signal", "oom_killed", "live",
    ]  # fmt: skip
    alerts = json.loads(run(db, "alerts", "--json").stdout)
    assert list(alerts[0]) == [
        "rule", "pid", "start_ticks", "since", "kind", "comm", "unit", "state", "fired_at",
        "resolved_at", "notified_state", "notified_at", "value", "rate", "summary",
    ]  # fmt: skip
    top = json.loads(run(db, "top", "--json").stdout)
    assert list(top) == ["summary", "processes"]
    assert list(top["summary"]) == [
        "ts", "interval_s", "mem_total_kb", "mem_available_kb", "swap_used_kb", "swap_total_kb",
        "processes", "mmaps_per_s", "mmap_bytes_per_s", "brk_bytes_per_s",
    ]  # fmt: skip
    assert list(top["processes"][0]) == [
        "pid", "start_ticks", "start_time", "comm", "unit",
        "rss_kb", "anon_kb", "vm_kb", "mmap_count", "mmap_bytes", "munmap_count", "munmap_bytes",
        "swap_kb", "hwm_kb", "brk_count", "brk_bytes", "pss_kb", "uss_kb",
        "mapped_bytes", "mremap_count", "mremap_grow_bytes", "mremap_shrink_bytes",
        "growth_kb_per_h", "mmaps_per_s", "mmap_bytes_per_s", "brk_bytes_per_s", "mean_mmap_bytes",
    ]  # fmt: skip
