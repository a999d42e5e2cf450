"""RELIABILITY.md 12: wall-clock steps of +1 h and -1 h under libfaketime (monotonic clock left alone)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.common import FAKETIME_LIB, Daemons, config, log_text, query, snapshot_ids, stop
from tests.helpers import ctl_json, wait_for
from tests.receivers import WebhookReceiver

GROWER = """
import ctypes, sys, time
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
keep = [bytearray(30 << 20)]                 # 30 MB at once: above the threshold rule
print("up", flush=True)
while True:                                  # then 0.5 MB/s
    keep.append(b"\\x01" * (128 << 10))
    time.sleep(0.25)
"""


@pytest.mark.skipif(not os.path.exists(FAKETIME_LIB), reason="libfaketime not installed")
def test_wall_clock_steps_do_not_skew_rates_purge_data_or_repeat_alerts(
    tmp_path: Path, daemons: Daemons
) -> None:
    interval = 0.3
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    env = {
        "LD_PRELOAD": FAKETIME_LIB,
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    with WebhookReceiver() as hook:
        extra = (
            f'[notify]\nurls = ["{hook.url()}"]\nrepeat_interval = "1h"\n'
            '[[rules]]\nname = "big"\nkind = "threshold"\nthreshold = "20MB"\nmatch = { comm = "clockhog" }\n'
        )
        # the shortest retention there is: a +1 h step would make every row look an hour older
        storage = 'raw_retention = "1m"\nminute_retention = "1m"\nretention = "1m"\n'
        db = tmp_path / "db" / "memwatchd.db"
        log = tmp_path / "daemon.log"
        cfg = config(tmp_path, interval=interval, extra=extra, storage_extra=storage)
        hog = subprocess.Popen([sys.executable, "-c", GROWER, "clockhog"], stdout=subprocess.PIPE, text=True)
        p = daemons.start(cfg, log, env=env, prune_every_s=0.5)  # retention runs right after each step
        counts: list[int] = []
        try:
            assert hog.stdout and hog.stdout.readline().strip() == "up"
            wait_for(lambda: [b for b in hook.bodies if "FIRING" in b["title"]], 30, what="first FIRING")

            def watch(seconds: float) -> None:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    counts.append(len(snapshot_ids(db)))
                    time.sleep(0.1)

            watch(2)
            for step in ("+3600", "-3600", "+0"):
                offset.write_text(step + "\n")
                watch(4)
            assert p.poll() is None, log_text(log)[-2000:]
            # no mass purge: the count of stored snapshots never went down
            drops = [(a, b) for a, b in zip(counts, counts[1:], strict=False) if b < a]
            assert not drops, f"snapshots were purged after a clock step: {drops[:5]}"
            wall = [r[0] for r in query(db, "SELECT ts_ms FROM snapshots ORDER BY id")]
            assert (
                max(wall) - min(wall) > 3000 * 1000
                and min(b - a for a, b in zip(wall, wall[1:], strict=False)) < -3000 * 1000
            ), "the daemon did not see the steps (is libfaketime active?)"
            # intervals come from the monotonic clock: never negative, never an hour
            dts = [r[0] for r in query(db, "SELECT dt_ms FROM snapshots WHERE dt_ms IS NOT NULL")]
            assert dts and min(dts) > 0 and max(dts) < 4 * interval * 1000, (min(dts), max(dts))
            cur = [r[0] for r in query(db, "SELECT dt_ms FROM current WHERE dt_ms IS NOT NULL")]
            assert all(0 < d < 4 * interval * 1000 for d in cur), cur
            top = ctl_json(db, "top", "--window", "10s")
            grower = next(r for r in top["processes"] if r["comm"] == "clockhog")
            g = grower["growth_kb_per_h"]
            true_rate = 512 * 3600  # kB per hour
            assert g is None or 0 <= g <= 1.5 * true_rate, f"growth {g} kB/h, true {true_rate}"
            time.sleep(1)
            titles = [b["title"] for b in hook.bodies]
            assert len([t for t in titles if "FIRING" in t]) == 1, titles  # no repeat, no re-fire
            assert not [t for t in titles if "STILL" in t or "RESOLVED" in t], titles
        finally:
            hog.kill()
            hog.wait()
            rc, _ = stop(p)
        assert rc == 0
        assert "Traceback" not in log_text(log)
