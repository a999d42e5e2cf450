"""Python memory patterns for the detection benchmark and the rule tests (run as a script).

    python py_patterns.py steady NAME SECONDS CHUNK_KB PERIOD_S    bytes objects kept (a true leak)
    python py_patterns.py sawtooth NAME SECONDS PERIOD_S MB        a cache filled over PERIOD_S, then cleared

Prints "grow <unix-seconds>" when the pattern starts and "hold" after SECONDS, then idles (memory kept)
until killed. NAME becomes the process name (PR_SET_NAME).
"""

from __future__ import annotations

import ctypes
import sys
import time


def _set_name(name: str) -> None:
    ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name.encode()), 0, 0, 0)  # PR_SET_NAME


def _hold() -> None:
    print("hold", flush=True)
    while True:
        time.sleep(3600)


def steady(seconds: float, chunk_kb: int, period_s: float) -> None:
    keep: list[bytes] = []
    start = time.monotonic()
    print(f"grow {time.time():.3f}", flush=True)
    i = 0
    while time.monotonic() < start + seconds:
        keep.append(bytes([i % 251 + 1]) * (chunk_kb * 1024))  # every page written
        i += 1
        time.sleep(max(0.0, start + i * period_s - time.monotonic()))
    _hold()


def sawtooth(seconds: float, period_s: float, mb: float) -> None:
    cache: list[bytes] = []
    start = time.monotonic()
    ticks = max(1, int(period_s * 10))
    chunk = int(mb * 1024 * 1024 / ticks)
    print(f"grow {time.time():.3f}", flush=True)
    i = 0
    while time.monotonic() < start + seconds:
        cache.append(bytes([i % 251 + 1]) * chunk)
        i += 1
        if i % ticks == 0:
            cache.clear()
        time.sleep(max(0.0, start + i * 0.1 - time.monotonic()))
    cache.clear()
    _hold()


def main(argv: list[str]) -> int:
    mode, name, seconds = argv[1], argv[2], float(argv[3])
    _set_name(name)
    if mode == "steady":
        steady(seconds, int(argv[4]), float(argv[5]))
    elif mode == "sawtooth":
        sawtooth(seconds, float(argv[4]), float(argv[5]))
    else:
        print(f"unknown mode {mode!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
