"""Leak triage, the parts that need no BPF: probe placement, sampling weights, aggregation by stack, ELF
symbols and target choice on real processes and files, config validation, the store round trip, the
follow-up text and the control socket's refusals."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from memwatchd.config import ConfigError, parse_config
from memwatchd.models import AlertRecord
from memwatchd.store import triage as store_triage
from memwatchd.store.schema import MIGRATIONS
from memwatchd.triage.control import ControlServer, call
from memwatchd.triage.elf import read_elf_path
from memwatchd.triage.message import followup
from memwatchd.triage.report import Sample, TriageResult, by_stack, top_functions, weight
from memwatchd.triage.symbolize import Frame, Symbolizer
from memwatchd.triage.target import choose, probe_offset, read_maps
from tests.helpers import wait_for

LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"


@pytest.mark.parametrize(
    ("code", "offset"),
    [
        (bytes.fromhex("4885ff0f84bf000000"), 3),  # glibc free: test %rdi,%rdi; je -> the je
        (bytes.fromhex("41545553"), 0),  # push %r12: emulated where it is
        (bytes.fromhex("f30f1efa55"), 4),  # endbr64; push %rbp
        (bytes.fromhex("4881ff00100000770a"), 7),  # jemalloc: cmp $0x1000,%rdi; ja
        (bytes.fromhex("4889f855"), 0),  # mov %rdi,%rax changes a register: stay at the entry
        (bytes.fromhex("803d0102030400740a"), 7),  # cmpb $0,disp(%rip); je
        (b"", 0),
    ],
)
def test_entry_only_probes_move_past_flag_only_instructions_to_an_emulated_one(
    code: bytes, offset: int
) -> None:
    assert probe_offset(code) == offset


def test_sampling_weights_are_unbiased() -> None:
    assert weight(1 << 20, 65536) == (float(1 << 20), 1.0)  # above the rate: always sampled, itself
    assert weight(100, 65536) == (65536.0, 655.36)
    assert weight(0, 65536) == (0.0, 0.0)
    # Simulate the kernel's decision (probability min(1, s/R)) over many allocations: the estimate holds
    rng = random.Random(7)
    rate, sizes = 65536, [rng.randint(16, 8192) for _ in range(200_000)]
    est = sum(weight(s, rate)[0] for s in sizes if rng.random() < min(1.0, s / rate))
    assert abs(est - sum(sizes)) <= 0.1 * sum(sizes)


def _f(fn: str, off: int = 0x10, module: str = "prog", addr: int = 0x1000) -> Frame:
    return Frame(addr, fn, off, module)


def test_by_stack_groups_by_function_and_offset_sorts_and_caps() -> None:
    leak = (_f("leak_here", addr=0x1000), _f("main", addr=0x2000))
    leak_other_addr = (_f("leak_here", addr=0x9000), _f("main", addr=0x9100))  # same site, another load
    small = (_f("config_load"),)
    samples = [Sample(100, leak)] * 10 + [Sample(200, leak_other_addr)] * 5 + [Sample(512 * 1024, small)]
    stacks, total = by_stack(samples, 65536, max_stacks=1)
    assert len(stacks) == 1 and stacks[0].frames[0].function == "leak_here"
    assert stacks[0].sampled_count == 15 and stacks[0].estimated_bytes == 15 * 65536
    assert total.estimated_bytes == 15 * 65536 + 512 * 1024 and total.sampled_count == 16


def _result(**kw: Any) -> TriageResult:
    stacks, total = by_stack([Sample(64, (_f("leak_here"), _f("main")))] * 3, 65536, 20)
    base: dict[str, Any] = {
        "pid": 42,
        "start_ticks": 99,
        "comm": "leaky",
        "started_at": 1_700_000_000.0,
        "ended_at": 1_700_000_030.0,
        "sample_every": 65536,
        "status": "complete",
        "allocator": "glibc",
        "mode": "uprobes",
        "estimated_bytes": total.estimated_bytes,
        "estimated_count": total.estimated_count,
        "sampled_bytes": total.sampled_bytes,
        "sampled_count": total.sampled_count,
        "stacks": tuple(stacks),
        "limits": ("a limit",),
        "reason": "alert leak-growth",
    }
    base.update(kw)
    return TriageResult(**base)


def test_result_round_trips_through_json_and_the_store(tmp_path: Path) -> None:
    r = _result()
    assert TriageResult.from_dict(json.loads(r.to_json())) == r
    db = sqlite3.connect(tmp_path / "t.db")
    for script in MIGRATIONS:
        db.executescript(script)
    db.execute(store_triage.INSERT, store_triage.insert_params(r))
    db.execute(
        store_triage.INSERT, store_triage.insert_params(_result(ended_at=1_700_000_060.0, comm="newer"))
    )
    latest = store_triage.latest(db, 42)
    assert latest is not None and latest["comm"] == "newer" and latest["id"] == 2
    first = store_triage.by_id(db, 1)
    assert first is not None and TriageResult.from_dict(first) == r
    assert store_triage.latest(db, 43) is None


def test_followup_names_the_top_functions_and_points_at_the_command() -> None:
    alert = AlertRecord(
        rule="leak-growth", kind="growth", pid=42, start_ticks=99, comm="leaky", unit=None, state="firing",
        since=1_700_000_000.0, fired_at=1_700_000_010.0, summary="rss +2.0M/s over 10s",
    )  # fmt: skip
    m = followup(_result(), alert, "host-a", ("json://x/",), 7)
    assert m.title == "[memwatchd] WHERE leak-growth: leaky (pid 42) allocates in leak_here on host-a"
    assert "leak_here+0x10 (prog)" in m.body and "memwatchctl triage --pid 42   (result #7)" in m.body
    assert "Limit:    a limit" in m.body and m.records == ()  # changes no alert state
    assert top_functions(_result()) == ["leak_here"]
    failed = followup(_result(status="failed", error="process 42 is gone", stacks=()), alert, "h", (), 8)
    assert "allocates in triage failed" in failed.title and "Failed:   process 42 is gone" in failed.body


@pytest.mark.parametrize(
    ("toml", "problem"),
    [
        ({"duration": "soon"}, "triage.duration: expected a duration"),
        ({"duration": "2h"}, "triage.duration: must be at most 1h"),
        ({"sample_every": "2GB"}, "triage.sample_every: must be between 1B and 1GB"),
        ({"max_concurrent": 0}, "triage.max_concurrent: must be between 1 and 16"),
        ({"max_stacks": "ten"}, "triage.max_stacks: expected an integer"),
        ({"enabled": "yes"}, "triage.enabled: expected true or false"),
        ({"sampling": 1}, "triage.sampling: unknown key"),
    ],
)
def test_bad_triage_config_names_file_and_key(toml: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"triage": toml}, "/etc/m.toml")
    assert str(e.value).startswith("/etc/m.toml: ") and problem in str(e.value)


def test_triage_config_defaults() -> None:
    t = parse_config({}, "x.toml").triage
    assert (t.enabled, t.duration_s, t.sample_every, t.max_concurrent, t.max_stacks) == (
        True,
        30.0,
        65536,
        1,
        20,
    )
    assert parse_config({"triage": {"sample_every": "512KB"}}, "x.toml").triage.sample_every == 512 * 1024


def test_target_of_a_real_glibc_process_and_symbols_of_libc() -> None:
    if not os.path.exists(LIBC):
        pytest.skip("no glibc at the Debian path")
    p = subprocess.Popen(["sleep", "30"])
    try:

        def loaded() -> bool:  # exec done and the loader mapped libc (before exec python's libc shows)
            return os.readlink(f"/proc/{p.pid}/exe").endswith("sleep") and any(
                m.path == LIBC and "x" in m.perms for m in read_maps(p.pid)
            )

        wait_for(loaded, 10, 0.02, "the loader to map libc")
        t = choose(p.pid)
        assert t.mode == "uprobes" and t.allocator == "glibc"
        names = {pr.symbol: pr for pr in t.probes}
        assert {"malloc", "free", "calloc", "realloc", "mmap", "munmap"} <= names.keys()
        assert names["malloc"].path == f"/proc/{p.pid}/root{LIBC}"
        lo, hi = t.allocator_range
        assert any(m.start >= lo and m.end <= hi and m.path == LIBC for m in read_maps(p.pid))
        image = read_elf_path(LIBC)
        addr = image.defines("malloc")
        assert addr is not None and image.symbol_at(addr + 5) == ("malloc", 5)
        sym = Symbolizer.open(p.pid, read_maps(p.pid))
        try:
            m = next(m for m in read_maps(p.pid) if m.path == LIBC and "x" in m.perms)
            file_off = image.offset_of_vaddr(addr)
            assert file_off is not None
            f = sym.frame(m.start + file_off - m.offset + 5)
            assert (f.function, f.offset, f.module) == ("malloc", 5, "libc.so.6")
        finally:
            sym.close()
    finally:
        p.kill()
        p.wait()


def test_control_socket_refuses_bad_requests_in_one_line(tmp_path: Path) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async def handler(req: dict[str, Any]) -> dict[str, Any]:
            return {"ok": False, "error": f"handled {req.get('op')}"}

        server = ControlServer(str(tmp_path / "m.db.sock"), handler)
        await server.start(group_of=str(tmp_path))
        mode = os.stat(server.path).st_mode & 0o777
        loop = asyncio.get_running_loop()
        try:
            replies = [
                await loop.run_in_executor(None, call, server.path, {"op": "triage"}, 5.0),
                await loop.run_in_executor(None, _raw, server.path, b"not json\n"),
            ]
        finally:
            await server.close()
        assert mode == 0o660 and not os.path.exists(server.path)
        return replies

    assert asyncio.run(scenario()) == [
        {"ok": False, "error": "handled triage"},
        {"ok": False, "error": "bad request"},
    ]


def _raw(path: str, data: bytes) -> dict[str, Any]:
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(data)
        reply: dict[str, Any] = json.loads(s.makefile().readline())
        return reply


def _wait_exec(p: subprocess.Popen[bytes], exe: str, lib: str) -> None:
    def ready() -> bool:
        try:
            return os.readlink(f"/proc/{p.pid}/exe").endswith(exe) and any(
                lib in m.path and "x" in m.perms for m in read_maps(p.pid)
            )
        except OSError:
            return False

    wait_for(ready, 30, 0.05, f"{exe} to map {lib}")


def test_a_process_in_another_mount_namespace_is_read_through_its_root() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare")
    p = subprocess.Popen(["unshare", "--mount", "sleep", "30"])
    try:
        _wait_exec(p, "sleep", "libc.so")
        t = choose(p.pid)
        assert t.mode == "uprobes" and any("another mount namespace" in lim for lim in t.limits), t.limits
        assert all(pr.path.startswith(f"/proc/{p.pid}/root/") for pr in t.probes)
    finally:
        p.kill()
        p.wait()


def test_a_jvm_is_traced_at_its_syscalls_and_says_why(tmp_path: Path) -> None:
    if shutil.which("java") is None:
        pytest.skip("no java here (default-jre-headless)")
    src = tmp_path / "Sleep.java"
    src.write_text(
        "class Sleep { public static void main(String[] a) throws Exception { Thread.sleep(60000); } }"
    )
    p = subprocess.Popen(["java", "-Xmx32m", str(src)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_exec(p, "java", "libjvm.so")
        t = choose(p.pid)
        assert (t.mode, t.allocator, t.probes) == ("syscalls", "jvm", ())
        assert any("Java (HotSpot)" in lim for lim in t.limits)
    finally:
        p.kill()
        p.wait()
