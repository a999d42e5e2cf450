"""The sd_notify protocol on a real AF_UNIX datagram socket: ServiceNotifier alone, then the real daemon."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from memwatchd.daemon.service import ServiceNotifier, watchdog_interval_s
from tests import hooked_daemon

REPO = Path(__file__).resolve().parent.parent


class NotifyReceiver:
    """Plays systemd's side: a bound SOCK_DGRAM socket that records every datagram with its arrival time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.messages: list[tuple[float, str]] = []

    def close(self) -> None:
        self.sock.close()

    def drain(self, timeout: float) -> None:
        """Receive whatever arrives within timeout seconds."""
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return
            self.messages.append((time.monotonic(), data.decode("utf-8")))

    def wait_for(self, pred: Callable[[str], bool], timeout: float, after: int = 0) -> int:
        """Index of the first message from index `after` on that satisfies pred; fails after timeout."""
        end = time.monotonic() + timeout
        while True:
            for i in range(after, len(self.messages)):
                if pred(self.messages[i][1]):
                    return i
            left = end - time.monotonic()
            if left <= 0:
                got = [m for _, m in self.messages[after:]][-10:]
                raise AssertionError(f"no matching notification within {timeout}s; last ones: {got}")
            self.drain(min(left, 0.2))

    def texts(self) -> list[str]:
        return [m for _, m in self.messages]


def fields(message: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in message.split("\n") if "=" in line)


@pytest.fixture
def receiver() -> Iterator[NotifyReceiver]:
    # sun_path holds at most 107 bytes: pytest's tmp_path can be longer, so use a short directory.
    d = tempfile.mkdtemp(prefix="mwn-", dir="/tmp")
    r = NotifyReceiver(os.path.join(d, "notify"))
    yield r
    r.close()
    os.unlink(r.path)
    os.rmdir(d)


# --- ServiceNotifier on its own ---------------------------------------------------------------------


def test_noop_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = ServiceNotifier()
    assert not n.enabled
    n.ready("x")
    n.status("x")
    n.watchdog()
    n.reloading()
    n.stopping()


def test_messages(receiver: NotifyReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.path)
    n = ServiceNotifier()
    assert n.enabled
    n.ready("312 processes\nbpf: off")
    n.status("scan took 12 ms")
    n.watchdog()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.ready("reloaded")
    n.stopping()
    receiver.drain(0.3)
    msgs = receiver.texts()
    assert msgs[0] == "READY=1\nSTATUS=312 processes bpf: off"  # one STATUS line, newline flattened
    assert msgs[1] == "STATUS=scan took 12 ms"
    assert msgs[2] == "WATCHDOG=1"
    reload = fields(msgs[3])
    assert reload["RELOADING"] == "1"
    assert before <= int(reload["MONOTONIC_USEC"]) <= after
    assert fields(msgs[4]) == {"READY": "1", "STATUS": "reloaded"}
    assert fields(msgs[5])["STOPPING"] == "1"
    assert len(msgs) == 6


def test_status_is_utf8(receiver: NotifyReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    # sdnotify encodes latin-1 on its own; systemd reads UTF-8.
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.path)
    ServiceNotifier().status("größte: 日本語 ⏎")
    receiver.sock.settimeout(2)
    assert receiver.sock.recv(4096) == "STATUS=größte: 日本語 ⏎".encode()


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"memwatchd-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        ServiceNotifier().watchdog()
        s.settimeout(2)
        assert s.recv(100) == b"WATCHDOG=1"
    finally:
        s.close()


def test_vanished_socket_warns_once(
    receiver: NotifyReceiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.path)
    n = ServiceNotifier()
    receiver.close()
    with caplog.at_level(logging.WARNING, logger="memwatchd.daemon.service"):
        for _ in range(5):
            n.watchdog()
    assert not n.enabled
    assert len([r for r in caplog.records if "notification socket" in r.getMessage()]) == 1


def test_missing_socket_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nope"))
    n = ServiceNotifier()
    assert not n.enabled
    n.ready("x")  # no exception


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "2000000"}, 1.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval_s(env) == expected


def test_watchdog_interval_property(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "500000")
    assert ServiceNotifier().watchdog_interval_s == 0.25


# --- The real daemon (needs memwatchd/daemon.py) ---------------------------------------------------------


def _daemon_bin() -> Path:
    for cand in (REPO / ".venv" / "bin" / "memwatchd", Path(sys.executable).parent / "memwatchd"):
        if cand.exists():
            return cand
    raise AssertionError("memwatchd entry point not installed (run scripts/setup)")


def _config(tmp: Path, storage: Path | None = None) -> Path:
    cfg = tmp / "memwatchd.toml"
    cfg.write_text(
        "[daemon]\ninterval = 0.2\n"
        "[bpf]\nenabled = false\n"
        f'[storage]\npath = "{storage or tmp / "db.sqlite"}"\n'
    )
    return cfg


def _start(
    cfg: Path, receiver: NotifyReceiver, tmp: Path, stall_after: int | None = None
) -> subprocess.Popen[bytes]:
    inherited = ("WATCHDOG_PID", "JOURNAL_STREAM", "INVOCATION_ID")
    env = {k: v for k, v in os.environ.items() if k not in inherited}
    env.update(NOTIFY_SOCKET=receiver.path, WATCHDOG_USEC="2000000")
    argv = [str(_daemon_bin()), "--config", str(cfg)]
    if stall_after is not None:
        argv = hooked_daemon.command(cfg, stall_after=stall_after)
    with open(tmp / "daemon.log", "wb") as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=log, cwd=hooked_daemon.ROOT)


def _log(tmp: Path) -> str:
    p = tmp / "daemon.log"
    return p.read_text(errors="replace")[-4000:] if p.exists() else ""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def test_daemon_lifecycle(receiver: NotifyReceiver, tmp_path: Path) -> None:
    """READY=1, STATUS= lines, periodic WATCHDOG=1, RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 and exit 0
    on SIGTERM."""
    proc = _start(_config(tmp_path), receiver, tmp_path)
    try:
        ready = receiver.wait_for(lambda m: "READY=1" in m.split("\n"), 60)
        assert "STATUS" in fields(receiver.messages[ready][1]), "READY=1 comes with a STATUS= line"
        # WATCHDOG_USEC=2 s: a ping about every second while cycles complete.
        t0 = time.monotonic()
        receiver.drain(3.5)
        pings = [t for t, m in receiver.messages[ready:] if m == "WATCHDOG=1" and t >= t0]
        assert len(pings) >= 2, f"no periodic WATCHDOG=1: {receiver.texts()[-10:]}\n{_log(tmp_path)}"
        gaps = [round(b - a, 2) for a, b in zip(pings, pings[1:], strict=False)]
        assert max(gaps) < 2.0, f"pings must come faster than WATCHDOG_USEC: gaps {gaps}"
        assert any(m.startswith("STATUS=") for m in receiver.texts()[ready + 1 :]), "STATUS= each snapshot"

        mark = len(receiver.messages)
        proc.send_signal(signal.SIGHUP)
        reloading = receiver.wait_for(lambda m: "RELOADING=1" in m.split("\n"), 10, after=mark)
        assert "MONOTONIC_USEC" in fields(receiver.messages[reloading][1])
        receiver.wait_for(lambda m: "READY=1" in m.split("\n"), 10, after=reloading + 1)
        assert proc.poll() is None, _log(tmp_path)

        mark = len(receiver.messages)
        proc.send_signal(signal.SIGTERM)
        receiver.wait_for(lambda m: "STOPPING=1" in m.split("\n"), 10, after=mark)
        assert proc.wait(15) == 0, _log(tmp_path)
    finally:
        _stop(proc)


def test_daemon_stall_stops_watchdog(receiver: NotifyReceiver, tmp_path: Path) -> None:
    """A scan that stops making progress stops the WATCHDOG=1 pings (systemd then restarts the service)."""
    # 10 cycles of 0.2 s: about two pings before the stall.
    proc = _start(_config(tmp_path), receiver, tmp_path, stall_after=10)
    try:
        ready = receiver.wait_for(lambda m: "READY=1" in m.split("\n"), 60)
        receiver.wait_for(lambda m: m == "WATCHDOG=1", 10, after=ready)
        # After the stall no ping for much longer than the 1 s ping period, while the process lives on.
        deadline = time.monotonic() + 20
        while True:
            receiver.drain(0.5)
            pings = [t for t, m in receiver.messages if m == "WATCHDOG=1"]
            quiet = time.monotonic() - pings[-1]
            if quiet >= 5.0:
                break
            assert time.monotonic() < deadline, f"WATCHDOG=1 kept coming after the stall\n{_log(tmp_path)}"
        assert proc.poll() is None, f"the daemon should hang (stall), not exit\n{_log(tmp_path)}"
    finally:
        _stop(proc)


def test_daemon_invalid_config_exit_2_with_status(receiver: NotifyReceiver, tmp_path: Path) -> None:
    cfg = tmp_path / "memwatchd.toml"
    cfg.write_text("[daemon]\nintervall = 3\n")
    proc = _start(cfg, receiver, tmp_path)
    try:
        assert proc.wait(30) == 2, _log(tmp_path)
        i = receiver.wait_for(lambda m: m.startswith("STATUS="), 5)
        assert "intervall" in receiver.messages[i][1]
        assert "Traceback" not in _log(tmp_path)
    finally:
        _stop(proc)


def test_daemon_unwritable_db_fails_with_status(receiver: NotifyReceiver, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    proc = _start(_config(tmp_path, storage=blocker / "db.sqlite"), receiver, tmp_path)
    try:
        assert proc.wait(30) != 0, _log(tmp_path)
        receiver.wait_for(lambda m: m.startswith("STATUS="), 5)
        assert not any("READY=1" in m.split("\n") for m in receiver.texts())
        assert "Traceback" not in _log(tmp_path)
    finally:
        _stop(proc)
