"""Workload programs (as python -c source) shared by the end-to-end tests and scripts/bench_alerts.py."""

import textwrap

SET_COMM = textwrap.dedent(
    """
    import ctypes, sys
    ctypes.CDLL(None).prctl(15, ctypes.c_char_p(sys.argv[1].encode()), 0, 0, 0)   # PR_SET_NAME
    """
)

LEAKER = SET_COMM + textwrap.dedent(
    """
    import time
    keep = []
    sys.stdin.readline()                          # wait until the test says go
    print("leaking", flush=True)
    end = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end:                 # 4 MB/s in 0.5 MB steps, every page touched
        keep.append(b"\\x01" * (512 * 1024))
        time.sleep(0.125)
    print("stopped", flush=True)
    sys.stdin.readline()
    """
)

VICTIM = SET_COMM + textwrap.dedent(
    """
    import time
    keep = []
    sys.stdin.readline()
    while True:                                   # grow past the cgroup limit: the OOM killer ends it
        keep.append(b"\\x01" * (2 * 1024 * 1024))
        time.sleep(0.05)
    """
)
