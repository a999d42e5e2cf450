"""One bounded, sampled allocation trace of one process, run in a short-lived child process.

    python -m memwatchd.triage.tracer < request.json > result.json

Why a child: bcc maps LLVM and clang (~130 MB RSS after a compile); the daemon must not (its budget is
40 MB), and whatever the trace leaves behind goes away with the child. Uprobes attached through perf
events also go away with it, even after a SIGKILL: nothing stays attached once the child is gone.

Request (JSON): {"pid", "start_ticks" (null: whatever runs as pid), "duration_s", "sample_every" (bytes),
"max_stacks", "max_allocs", "stack_entries", "reason", "alert_rule", "alert_since"}.
Result: TriageResult.to_dict() as JSON on stdout (status "failed" with `error` when it could not run); exit
status 0 whenever a result was printed.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.resources
import json
import os
import select
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from memwatchd.triage.report import (
    STATUS_COMPLETE,
    STATUS_EXITED,
    STATUS_FAILED,
    Sample,
    TriageResult,
    by_stack,
)
from memwatchd.triage.symbolize import Symbolizer
from memwatchd.triage.target import Target, TargetError, choose, read_maps

# BPF function per entry point: (entry program, return program or None)
_ENTRY_PROGRAMS: dict[str, tuple[str, str | None]] = {
    "malloc": ("tr_malloc", "tr_alloc_return"),
    "valloc": ("tr_malloc", "tr_alloc_return"),
    "pvalloc": ("tr_malloc", "tr_alloc_return"),
    "mallocx": ("tr_malloc", "tr_alloc_return"),
    "calloc": ("tr_calloc", "tr_alloc_return"),
    "realloc": ("tr_realloc", "tr_alloc_return"),
    "rallocx": ("tr_realloc", "tr_alloc_return"),
    "aligned_alloc": ("tr_aligned", "tr_alloc_return"),
    "memalign": ("tr_aligned", "tr_alloc_return"),
    "posix_memalign": ("tr_posix_memalign", "tr_memalign_return"),
    "free": ("tr_free", None),
    "sdallocx": ("tr_free", None),
    "dallocx": ("tr_free", None),
    "mmap": ("tr_mmap", "tr_alloc_return"),
    "munmap": ("tr_munmap", None),
}
_KIND_BRK = 3
_CTR_CALLS, _CTR_SAMPLED, _CTR_FREED, _CTR_MAP_FULL, _CTR_NO_STACK, _CTR_FREES, _CTR_INTERNAL = range(7)
_UPROBE_PMU = "/sys/bus/event_source/devices/uprobe/type"
_EXIT_POLL_S = 0.25
_WINDOW_OPEN, _WINDOW_ENDED = 1, 2  # triage.h enum tr_window
_GRACE_MIN_S, _GRACE_MAX_S = 0.2, 1.0


class TraceError(Exception):
    """The trace cannot run; str() is one line for the result's `error`."""


@dataclass(frozen=True, slots=True)
class Request:
    pid: int
    start_ticks: int | None
    duration_s: float
    sample_every: int
    max_stacks: int = 20
    max_allocs: int = 65536
    stack_entries: int = 4096
    reason: str = "request"
    alert_rule: str = ""
    alert_since: float = 0.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Request:
        st = d.get("start_ticks")
        return cls(
            pid=int(d["pid"]),
            start_ticks=None if st is None else int(st),
            duration_s=float(d["duration_s"]),
            sample_every=int(d["sample_every"]),
            max_stacks=int(d.get("max_stacks", 20)),
            max_allocs=int(d.get("max_allocs", 65536)),
            stack_entries=int(d.get("stack_entries", 4096)),
            reason=str(d.get("reason", "request")),
            alert_rule=str(d.get("alert_rule", "")),
            alert_since=float(d.get("alert_since", 0.0)),
        )


def start_ticks_of(pid: int, proc: str = "/proc") -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), None when the process is gone."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    try:
        return int(data[data.rindex(b")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def comm_of(pid: int, proc: str = "/proc") -> str:
    try:
        with open(f"{proc}/{pid}/comm", "rb") as f:
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def uprobes_unavailable() -> str | None:
    """Why uprobes cannot be used here (checked before the slow compile), or None."""
    if not os.path.exists(_UPROBE_PMU):
        return "uprobes unavailable: the kernel has no uprobe perf events (CONFIG_UPROBE_EVENTS)"
    build = f"/lib/modules/{os.uname().release}/build"
    if not os.path.exists(build):
        return f"uprobes unavailable: no kernel headers at {build} for bcc (run scripts/setup)"
    return None


def trace(req: Request, proc: str = "/proc") -> TriageResult:
    """Run one trace; always returns a result (status failed with the reason when it could not run)."""
    now = time.time()
    comm = comm_of(req.pid, proc)

    def failed(why: str, limits: tuple[str, ...] = (), allocator: str = "", mode: str = "") -> TriageResult:
        return TriageResult(
            pid=req.pid,
            start_ticks=req.start_ticks or 0,
            comm=comm,
            started_at=now,
            ended_at=time.time(),
            sample_every=req.sample_every,
            status=STATUS_FAILED,
            allocator=allocator,
            mode=mode,
            limits=limits,
            error=why,
            reason=req.reason,
            alert_rule=req.alert_rule,
            alert_since=req.alert_since,
        )

    ticks = start_ticks_of(req.pid, proc)
    if ticks is None or (req.start_ticks is not None and ticks != req.start_ticks):
        return failed(f"process {req.pid} is gone (it exited before the trace began)")
    why = uprobes_unavailable()
    if why is not None:
        return failed(why)
    try:
        target = choose(req.pid, proc)
        maps = read_maps(req.pid, proc)
    except TargetError as e:
        return failed(str(e))
    try:
        pidfd = os.pidfd_open(req.pid)
    except OSError:
        return failed(f"process {req.pid} is gone (it exited before the trace began)")
    req = Request(**{**_asdict(req), "start_ticks": ticks})
    symbolizer = Symbolizer.open(req.pid, maps, proc)
    try:
        if start_ticks_of(req.pid, proc) != ticks:  # the pid was reused between the checks
            return failed(f"process {req.pid} is gone (it exited before the trace began)")
        try:
            return _run(req, target, symbolizer, pidfd, comm, proc)
        except TraceError as e:
            return failed(str(e), target.limits, target.allocator, target.mode)
    finally:
        symbolizer.close()
        os.close(pidfd)


def _asdict(req: Request) -> dict[str, Any]:
    return {f: getattr(req, f) for f in req.__dataclass_fields__}


def _cflags(req: Request, target: Target, include: str) -> list[str]:
    lo, hi = target.allocator_range
    flags = [
        f"-I{include}",
        f"-DTARGET_PID={req.pid}",
        f"-DSAMPLE_BYTES={req.sample_every}ULL",
        f"-DMAX_ALLOCS={req.max_allocs}",
        f"-DSTACK_ENTRIES={req.stack_entries}",
    ]
    if hi > lo:
        flags += [f"-DALLOC_LO={lo:#x}ULL", f"-DALLOC_HI={hi:#x}ULL"]
    if target.mode == "syscalls":
        flags.append("-DTR_SYSCALLS")
    return flags


def _compile(req: Request, target: Target) -> Any:
    try:
        import bcc  # noqa: PLC0415 - only this child process ever imports bcc
    except ImportError as e:
        raise TraceError(
            f"uprobes unavailable: bcc Python module not found (install python3-bpfcc): {e}"
        ) from None
    src = importlib.resources.files("memwatchd.bpf").joinpath("triage.bpf.c")
    with importlib.resources.as_file(src) as path, tempfile.TemporaryFile(mode="w+") as err:
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            return bcc, bcc.BPF(src_file=str(path).encode(), cflags=_cflags(req, target, str(path.parent)))
        except Exception as e:  # noqa: BLE001 - bcc raises bare Exception for compile failures
            os.dup2(saved, 2)
            err.seek(0)
            detail = next((ln.strip() for ln in err.read().splitlines() if "error:" in ln), "")
            raise TraceError(f"cannot load the triage probes: {_first_line(e)} {detail}".strip()) from None
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _attach(b: Any, req: Request, target: Target) -> None:
    for p in target.probes:
        entry, ret = _ENTRY_PROGRAMS[p.symbol]
        try:
            b.attach_uprobe(
                name=p.path.encode(),
                sym=p.symbol.encode(),
                fn_name=entry.encode(),
                pid=req.pid,
                sym_off=p.offset,
            )
            if ret is not None:
                b.attach_uretprobe(
                    name=p.path.encode(), sym=p.symbol.encode(), fn_name=ret.encode(), pid=req.pid
                )
        except Exception as e:  # noqa: BLE001 - bcc raises bare Exception when an attach fails
            raise TraceError(
                f"uprobes unavailable: cannot attach to {p.symbol} in {p.path}: {_first_line(e)}"
            ) from None


def _end_window(b: Any, req: Request, target: Target, alive: bool) -> None:
    """Stop sampling, then keep matching frees for a short grace before detaching the rest.

    An allocation made just before the end and freed just after it is not a leak: without the grace every
    busy alloc/free path would show its in-flight blocks as outstanding.
    """
    if alive and target.mode == "uprobes":
        _set_window(b, _WINDOW_ENDED)
        time.sleep(min(_GRACE_MAX_S, max(_GRACE_MIN_S, req.duration_s * 0.05)))
    _detach(b)


def _set_window(b: Any, state: int) -> None:
    b[b"window_state"][ctypes.c_int(0)] = ctypes.c_uint32(state)


def _detach(b: Any) -> None:
    for ev in list(b.uprobe_fds):
        with contextlib.suppress(Exception):
            b.detach_uprobe_event(ev)
    for tp in list(b.tracepoint_fds):
        with contextlib.suppress(Exception):
            b.detach_tracepoint(tp)


def _wait(pidfd: int, duration_s: float, ticks: int, pid: int, proc: str) -> bool:
    """Sleep through the window; False when the process exited first."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    deadline = time.monotonic() + duration_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        if poller.poll(min(left, _EXIT_POLL_S) * 1000) or start_ticks_of(pid, proc) != ticks:
            return False


def _counter(b: Any, idx: int) -> int:
    return int(sum(b[b"counters"][ctypes.c_int(idx)]))


def _run(req: Request, target: Target, sym: Symbolizer, pidfd: int, comm: str, proc: str) -> TriageResult:
    bcc, b = _compile(req, target)
    try:
        if target.mode == "uprobes":
            _attach(b, req, target)
        _set_window(b, _WINDOW_OPEN)  # every probe is in place: sampling starts now
        started = time.time()
        # progress for whoever watches stderr (tests, benchmarks): the window has begun
        sys.stderr.write(f"memwatchd-triage: attached to pid {req.pid} ({target.mode}, {target.allocator})\n")
        sys.stderr.flush()
        alive = _wait(pidfd, req.duration_s, req.start_ticks or 0, req.pid, proc)
        ended = time.time()
        _end_window(b, req, target, alive)
        if alive:  # libraries loaded during the window (dlopen) symbolize too
            with contextlib.suppress(TargetError):
                sym = Symbolizer.open(req.pid, read_maps(req.pid, proc), proc)
        samples = _samples(b, target, sym)
        counters = [_counter(b, i) for i in range(7)]
    finally:
        with contextlib.suppress(Exception):
            b.cleanup()
    stacks, total = by_stack(samples, req.sample_every, req.max_stacks)
    limits = list(target.limits)
    if counters[_CTR_MAP_FULL]:
        limits.append(
            f"{counters[_CTR_MAP_FULL]} sampled allocations dropped (map full at {req.max_allocs}):"
            " estimates are low"
        )
    if not alive:
        limits.append(
            f"the process exited {ended - started:.1f}s into the trace: showing what was outstanding when it"
            " exited (the kernel freed it all)"
        )
    return TriageResult(
        pid=req.pid,
        start_ticks=req.start_ticks or 0,
        comm=comm,
        started_at=started,
        ended_at=ended,
        sample_every=req.sample_every,
        status=STATUS_COMPLETE if alive else STATUS_EXITED,
        allocator=target.allocator,
        mode=target.mode,
        sampled_bytes=total.sampled_bytes,
        sampled_count=total.sampled_count,
        estimated_bytes=total.estimated_bytes,
        estimated_count=total.estimated_count,
        calls=counters[_CTR_CALLS],
        frees=counters[_CTR_FREES],
        map_full=counters[_CTR_MAP_FULL],
        stacks=tuple(stacks),
        limits=tuple(limits),
        reason=req.reason,
        alert_rule=req.alert_rule,
        alert_since=req.alert_since,
        extra={
            "sampled_total": counters[_CTR_SAMPLED],
            "frees_matched": counters[_CTR_FREED],
            "no_stack": counters[_CTR_NO_STACK],
            "allocator_mmaps": counters[_CTR_INTERNAL],
        },
    )


def _samples(b: Any, target: Target, sym: Symbolizer) -> list[Sample]:
    walked: dict[int, list[int]] = {}
    stacks_map = b[b"stacks"]

    def walk(stack_id: int) -> list[int]:
        if stack_id < 0:
            return []
        if stack_id not in walked:
            try:
                walked[stack_id] = [int(a) for a in stacks_map.walk(stack_id)]
            except KeyError:
                walked[stack_id] = []
        return walked[stack_id]

    final_brk = 0
    if target.mode == "syscalls":
        with contextlib.suppress(KeyError):
            final_brk = int(b[b"brk_state"][ctypes.c_int(1)].value)
    frames_cache: dict[tuple[int, int], tuple[Any, ...]] = {}
    out: list[Sample] = []
    for k, v in b[b"allocs"].items():
        addr, size = int(k.value), int(v.size)
        if v.kind == _KIND_BRK and final_brk:
            if addr >= final_brk:
                continue  # given back by a later brk shrink
            size = min(size, final_brk - addr)
        key = (int(v.caller), int(v.stack_id))
        frames = frames_cache.get(key)
        if frames is None:
            frames = frames_cache[key] = tuple(
                sym.stack(int(v.caller), walk(int(v.stack_id)), skip_first=target.mode == "uprobes")
            )
        out.append(Sample(size, frames))
    return out


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def main() -> int:
    """Read a request on stdin, print the result on stdout."""
    try:
        req = Request.from_dict(json.load(sys.stdin))
    except (ValueError, KeyError, TypeError) as e:
        print(json.dumps({"status": STATUS_FAILED, "error": f"bad triage request: {e}"}))
        return 2
    try:
        result = trace(req)
    except Exception as e:  # noqa: BLE001 - any failure must reach the daemon as one line, not a traceback
        result = TriageResult(
            pid=req.pid,
            start_ticks=req.start_ticks or 0,
            comm="",
            started_at=time.time(),
            ended_at=time.time(),
            sample_every=req.sample_every,
            status=STATUS_FAILED,
            error=f"triage failed: {type(e).__name__}: {_first_line(e)}",
            reason=req.reason,
            alert_rule=req.alert_rule,
            alert_since=req.alert_since,
        )
    sys.stdout.write(result.to_json() + "\n")
    return 0


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    os._exit(status)  # skip bcc's atexit work: everything was detached and closed already
