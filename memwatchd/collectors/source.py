"""Which collector scans the processes: the kernel's task iterator (taskscan.py) or /proc (procfs.py).

[procfs] source = "auto" | "bpf" | "proc". The iterator reports kernel pids and only the processes that
changed, so it is used when BPF loaded with it, [procfs] root is the live /proc (its files still give
unit, cgroup and PSS) and the daemon runs in the initial PID namespace (NSpid has one entry: elsewhere
the kernel's pids are not /proc's). "auto" falls back to /proc with the reason; "bpf" refuses to start.
"""

from __future__ import annotations

from typing import Protocol

from memwatchd.collectors.bpf import BpfCollector
from memwatchd.collectors.procfs import ProcfsCollector, _is_live_procfs
from memwatchd.collectors.taskscan import TaskScanCollector
from memwatchd.config import ProcfsConfig
from memwatchd.models import ProcScan


class ProcScanner(Protocol):
    """What the daemon needs of a process collector."""

    def scan(self, now_mono: float) -> ProcScan: ...

    @property
    def live_pids(self) -> set[int]: ...

    def set_smaps(self, on: bool) -> None: ...

    def shrink(self) -> None: ...

    def close(self) -> None: ...


class ScanSourceError(Exception):
    """[procfs] source = "bpf" and the task iterator cannot be used here; str() is one line."""


def in_initial_pid_namespace(status_path: str = "/proc/self/status") -> bool:
    """True when this process's NSpid line has a single pid (no nested PID namespace)."""
    try:
        with open(status_path, "rb") as f:
            for line in f:
                if line.startswith(b"NSpid:"):
                    return len(line.split()) == 2
    except OSError:
        return False
    return True  # kernels before 4.1 have no NSpid line (and no task iterator either)


def iterator_problem(cfg: ProcfsConfig, bpf: BpfCollector | None, bpf_state: str) -> str | None:
    """Why the task iterator cannot scan here, or None when it can."""
    if bpf is None:
        return f"BPF is not loaded ({bpf_state})"
    if bpf.task_iter is None:
        return f"the BPF task iterator did not load ({bpf.iter_error})"
    if not _is_live_procfs(cfg.root):
        return f"[procfs] root {cfg.root} is not this process's live /proc"
    if not in_initial_pid_namespace():
        return "the daemon is not in the initial PID namespace"
    return None


def open_scanner(
    cfg: ProcfsConfig, bpf: BpfCollector | None, bpf_state: str
) -> tuple[ProcScanner, str, str | None]:
    """(collector, "bpf" or "proc", why not the iterator or None); ScanSourceError for an unusable "bpf"."""
    problem = None
    if cfg.source != "proc":
        problem = iterator_problem(cfg, bpf, bpf_state)
        if problem is None:
            assert bpf is not None and bpf.task_iter is not None
            scanner = TaskScanCollector(bpf.task_iter, cfg.root, cfg.smaps, cfg.full_rescan_s)
            if not scanner.uncalibrated:
                return scanner, "bpf", None
            scanner.close()
            cpus = ", ".join(map(str, scanner.uncalibrated))
            problem = f"per-CPU offsets of CPU {cpus} unknown (rss would miss their part)"
        if cfg.source == "bpf":
            raise ScanSourceError(f'[procfs] source = "bpf" but {problem}')
    else:
        problem = '[procfs] source = "proc"'
    return ProcfsCollector(root=cfg.root, smaps=cfg.smaps, full_rescan_s=cfg.full_rescan_s), "proc", problem
