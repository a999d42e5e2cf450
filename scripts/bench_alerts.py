"""Alert latency: from the start of a real 4 MB/s leak to the webhook receiving the FIRING message,
set against the rule's window + for (the earliest a robust slope test can be sure).

Runs the real daemon (/proc only, so the figure is the rule path, not BPF) and a real json:// receiver.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.e2e_workloads import LEAKER  # noqa: E402
from tests.helpers import start_daemon, stop_daemon, wait_for, write_config  # noqa: E402
from tests.receivers import WebhookReceiver  # noqa: E402


def _one(window: float, for_s: float, interval: float) -> float:
    with tempfile.TemporaryDirectory() as tmp, WebhookReceiver() as hook:
        extra = (
            f'[notify]\nurls = ["{hook.url()}"]\n'
            f'[[rules]]\nname = "bench-growth"\nkind = "growth"\nmin_rate = "1MB/min"\n'
            f'window = "{window:g}s"\nfor = "{for_s:g}s"\nmatch = {{ comm = "leaker" }}\n'
        )
        cfg = write_config(Path(tmp), bpf=False, interval=interval, extra=extra)
        d = start_daemon(cfg)
        leak = subprocess.Popen(
            [sys.executable, "-c", LEAKER, "leaker", str(window * 3)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: "memwatchd started" in (Path(tmp) / "daemon.log").read_text(), 60)
            time.sleep(2 * interval)
            assert leak.stdin and leak.stdout
            leak.stdin.write("go\n")
            leak.stdin.flush()
            leak.stdout.readline()
            t0 = time.monotonic()
            wait_for(lambda: any("FIRING" in b["title"] for b in hook.bodies), window * 3, every=0.05)
            return time.monotonic() - t0
        finally:
            leak.kill()
            leak.wait()
            stop_daemon(d)


def run(quick: bool) -> list[dict]:
    cases = [(10.0, 2.0, 0.5)] if quick else [(10.0, 2.0, 0.5), (60.0, 10.0, 3.0)]
    rows = []
    for window, for_s, interval in cases:
        lat = _one(window, for_s, interval)
        rows.append(
            {
                "benchmark": "alert latency",
                "config": f"leak start -> webhook (window {window:g}s, for {for_s:g}s, "
                f"interval {interval:g}s)",
                "value": round(lat, 2),
                "unit": "s",
                "target": f"<= window+for+2 intervals = {window + for_s + 2 * interval:g}",
            }
        )
    return rows


if __name__ == "__main__":
    print(run("--full" not in sys.argv))
