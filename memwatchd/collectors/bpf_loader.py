"""Compile and attach a BPF program with bcc in a short-lived child; hand the kernel objects over as fds.

    python -m memwatchd.collectors.bpf_loader SOCKET_FD < request.json

Why a child: bcc maps libbcc with LLVM and clang, ~12 MB anonymous and ~50 MB file-backed RSS before it
compiles anything, and the compile leaves more heap behind. The daemon needs none of it once the probes run:
a map is read through its fd, and an attachment (perf event or raw-tracepoint link) stays in the kernel as
long as any process holds its fd. So this process sends the fds over the unix socket SOCKET_FD and exits
without detaching (os._exit skips bcc's atexit cleanup); the caller (collectors/bpf.py) owns them from then.

Request (JSON on stdin):
  {"source": path of the .c file, "cflags": [...], "tracepoints": [[category, event], ...] that must exist,
   "maps": [names of the maps to hand over],
   "btf": {DEFINE: "struct.member..." or "enum:NAME"} (optional: resolved from the running kernel's BTF,
          collectors/btf.py, and added as -DDEFINE=value; all or none),
   "iters": [names of bpf_iter__* functions to load and link as BPF iterators] (optional; a failure here
          is reported in iter_error, the rest is still handed over),
   "btf_iter": {DEFINE: ...} (optional, as btf: the fields only the iterators read; when they do not
          resolve, the iterators are left out and iter_error says why)}
Reply (one SOCK_SEQPACKET message): JSON with the fds attached, in this order: the maps, then the attachments.
  {"maps": [names], "links": [[kind, name], ...], "btf_error": why the BTF defines were left out, or null,
   "iter_error": why an iterator could not be linked, or null}
  (an iterator's link has kind "iter": BPF_ITER_CREATE on it gives an fd whose read() runs the program)
  (sizes and types: ask the kernel, BPF_OBJ_GET_INFO_BY_FD)
or, without fds, {"error": one-line reason} (and exit status 1).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from typing import Any

# bcc keeps attachments in these dicts of name -> fd; memwatchd's programs use only these kinds.
_HANDED_OVER = ("raw_tracepoint_fds", "tracepoint_fds")
_NOT_SUPPORTED = (
    "kprobe_fds",
    "uprobe_fds",
    "kfunc_entry_fds",
    "kfunc_exit_fds",
    "lsm_fds",
    "open_perf_events",
)


class LoadError(Exception):
    """The program cannot be loaded here; str() is one line for BpfUnavailable."""


def load(request: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
    """Compile and attach per the request; returns the reply message and the fds to send with it."""
    try:
        import bcc  # only this child process ever imports bcc
    except ImportError as e:
        raise LoadError(f"bcc Python module not found (install python3-bpfcc): {e}") from None
    for category, event in request["tracepoints"]:
        if not bcc.BPF.tracepoint_exists(category, event):
            raise LoadError(f"tracepoint {category}:{event} does not exist on this kernel")
    cflags = list(request["cflags"])
    btf_error = None
    if request.get("btf"):
        from memwatchd.collectors import btf  # parsing vmlinux BTF is this child's job

        try:
            cflags += [f"-D{k}={v}" for k, v in btf.resolve(request["btf"]).items()]
        except btf.BtfError as e:
            btf_error = str(e)
    iter_error = None
    if request.get("btf_iter") and btf_error is None:
        from memwatchd.collectors import btf

        try:
            cflags += [f"-D{k}={v}" for k, v in btf.resolve(request["btf_iter"]).items()]
        except btf.BtfError as e:
            iter_error = f"kernel BTF lacks a field the task iterator reads: {e}"
    bpf = _compile(bcc, request["source"], cflags)
    for attr in _NOT_SUPPORTED:
        if getattr(bpf, attr, None):
            raise LoadError(f"cannot hand over the attachments in bcc's {attr} (tracepoints only)")

    fds: list[int] = []
    for name in request["maps"]:
        try:
            fds.append(bpf[name.encode()].map_fd)
        except KeyError:
            raise LoadError(f"the program has no map named {name}") from None
    links: list[list[str]] = []
    for name in request.get("iters", ()) if iter_error is None and btf_error is None else ():
        try:
            fds.append(_link_iter(bcc, bpf, name))
        except LoadError as e:
            iter_error = str(e)
        else:
            links.append(["iter", name])
    for attr in _HANDED_OVER:
        for name, fd in getattr(bpf, attr).items():
            links.append([attr.removesuffix("_fds"), name.decode() if isinstance(name, bytes) else str(name)])
            fds.append(fd)
    reply = {"maps": request["maps"], "links": links, "btf_error": btf_error, "iter_error": iter_error}
    return reply, fds


_BPF_TRACE_ITER = 28  # enum bpf_attach_type


def _link_iter(bcc: Any, bpf: Any, name: str) -> int:
    """Load NAME as a BPF_PROG_TYPE_TRACING iterator program and create its link (BPF_LINK_CREATE)."""
    import ctypes

    if not name.startswith("bpf_iter__"):
        raise LoadError(f"{name}: an iterator program's name starts with bpf_iter__")
    try:
        fn = bpf.load_func(name.encode(), bcc.BPF.TRACING)
    except Exception as e:  # bcc raises bare Exception; absent when the BTF offsets were missing
        raise LoadError(f"cannot load the iterator {name}: {_first_line(e)}") from None
    bcc.lib.bpf_link_create.restype = ctypes.c_int
    link = int(bcc.lib.bpf_link_create(fn.fd, 0, _BPF_TRACE_ITER, None))
    if link < 0:
        err = -link if link < -1 else ctypes.get_errno()  # libbpf returns -errno, or -1 and sets errno
        raise LoadError(f"cannot link the iterator {name}: {os.strerror(err) if err else 'failed'}")
    return link


def _compile(bcc: Any, path: str, cflags: list[str]) -> Any:
    """bcc.BPF(src_file=...) with the compiler's stderr captured, so a failure becomes one readable line."""
    with tempfile.TemporaryFile(mode="w+") as err:
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            return bcc.BPF(src_file=path.encode(), cflags=cflags)
        except Exception as e:  # bcc raises bare Exception for compile and attach failures
            os.dup2(saved, 2)
            err.seek(0)
            raise LoadError(f"{_first_line(e)}: {_compile_error_summary(err.read())}") from None
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _compile_error_summary(stderr_text: str) -> str:
    for line in stderr_text.splitlines():
        if "error:" in line:
            return line.strip()
    lines = [ln.strip() for ln in stderr_text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no compiler output"


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def main(argv: list[str]) -> int:
    """Run one request; the exit status is 0 only when the fds were sent."""
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m memwatchd.collectors.bpf_loader SOCKET_FD < request.json", file=sys.stderr)
        return 2
    sock = socket.socket(fileno=int(argv[1]))
    try:
        reply, fds = load(json.load(sys.stdin))
    except LoadError as e:
        sock.send(json.dumps({"error": str(e)}).encode())
        return 1
    except Exception as e:  # any failure must reach the daemon as one line, not a traceback
        sock.send(json.dumps({"error": f"BPF loader failed: {type(e).__name__}: {_first_line(e)}"}).encode())
        return 1
    socket.send_fds(sock, [json.dumps(reply).encode()], fds)
    return 0


if __name__ == "__main__":
    status = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    # _exit: no atexit handlers, so bcc's cleanup() does not detach what the daemon now holds
    os._exit(status)
