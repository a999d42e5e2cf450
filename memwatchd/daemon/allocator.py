"""Which memory allocator the daemon runs on ([daemon] allocator): jemalloc when it is installed.

Why (measured; README "Memory at 10,000 processes and under churn"): CPython's small-object allocator keeps
each 1 MiB arena mapped while one object in it lives, and serves each size class from partly used pools
wherever they are. After a burst of short-lived processes the objects allocated since (the next records of
the processes that stay) keep the burst's arenas in use: 14 -> 29 arenas and +19 MB of anonymous memory
after 20,000 short-lived processes, never handed back. glibc's malloc for everything (PYTHONMALLOC=malloc,
malloc_trim after bursts) kept +23 MB. jemalloc with one arena keeps far less after the same churn, and
less at 10,000 processes too. Freed pages are handed back at once (dirty_decay_ms:0) and threads keep no
cache of their own (tcache:false): at 10,000 idle processes 37-38 MB instead of 40 MB for +0.15 µs of CPU
per process per cycle against a decay of one second with thread caches (scripts/bench_memory_10k.py;
README "Memory at 10,000 processes and under churn").

How: before any work the process executes itself once more with LD_PRELOAD naming jemalloc,
PYTHONMALLOC=malloc (Python's objects from malloc too) and MALLOC_CONF. An exec keeps the PID: systemd's
tracking of the main process and its notify socket see nothing. In the new image the three variables are
put back as they were (restore), so the processes the daemon starts (the BPF compiler, the notifier) run as
they would have. MEMWATCHD_JEMALLOC names the library when it is not where the dynamic linker looks.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import sys
from collections.abc import Mapping, MutableMapping

MALLOC_CONF = "narenas:1,tcache:false,dirty_decay_ms:0,muzzy_decay_ms:0"
SAVED = "MEMWATCHD_ALLOCATOR_SAVED"  # the variables as they were (JSON), set only across the exec
_VARS = ("LD_PRELOAD", "PYTHONMALLOC", "MALLOC_CONF")
MISSING = "libjemalloc2 not found"


class AllocatorError(Exception):
    """The allocator asked for cannot be had; str() is one line for the operator."""


def find_jemalloc(environ: Mapping[str, str]) -> str | None:
    """The jemalloc library to preload: MEMWATCHD_JEMALLOC when set (a path), else the dynamic linker's."""
    override = environ.get("MEMWATCHD_JEMALLOC")
    if override is not None:
        return override if os.path.isfile(override) else None
    return ctypes.util.find_library("jemalloc")


def plan(choice: str, environ: Mapping[str, str], lib: str | None) -> dict[str, str] | None:
    """The environment to execute the daemon again with, or None to stay on the allocator running now."""
    if choice == "system" or SAVED in environ:  # told so, or the exec happened: never twice
        return None
    if lib is None:
        if choice == "jemalloc":
            raise AllocatorError(
                '[daemon] allocator = "jemalloc" but libjemalloc2 was not found'
                ' (Debian: apt install libjemalloc2; or allocator = "auto")'
            )
        return None
    env = dict(environ)
    env[SAVED] = json.dumps({k: environ.get(k) for k in _VARS})
    preload = environ.get("LD_PRELOAD")
    env["LD_PRELOAD"] = f"{lib} {preload}" if preload else lib
    env["PYTHONMALLOC"] = "malloc"
    env["MALLOC_CONF"] = MALLOC_CONF
    return env


def restore(environ: MutableMapping[str, str]) -> bool:
    """In the executed-again daemon: the variables back as they were; False when there was no such exec."""
    saved = environ.pop(SAVED, None)
    if saved is None:
        return False
    try:
        old = json.loads(saved)
    except ValueError:
        old = {}
    for k in _VARS:
        v = old.get(k) if isinstance(old, dict) else None
        if isinstance(v, str):
            environ[k] = v
        else:
            environ.pop(k, None)
    return True


def _mapped() -> bool:
    try:
        with open("/proc/self/maps") as f:
            return "/libjemalloc" in f.read()
    except OSError:
        return False


def choose(choice: str) -> str:
    """Execute the daemon again on jemalloc when that is the choice and it is not running yet (no return
    then); otherwise the allocator running now, with the reason when it is not the one asked for.
    AllocatorError when jemalloc is required and missing."""
    if restore(os.environ):
        return "jemalloc" if _mapped() else "system (jemalloc did not load)"
    lib = find_jemalloc(os.environ)
    env = plan(choice, os.environ, lib)
    if env is None:
        return f"system ({MISSING})" if choice == "auto" and lib is None else "system"
    argv = [sys.executable, *sys.orig_argv[1:]]
    try:
        os.execve(sys.executable, argv, env)
    except OSError as e:
        return f"system (cannot execute {sys.executable}: {e.strerror})"
