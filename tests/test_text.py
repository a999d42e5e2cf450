"""memwatchd.text: how process-chosen text is kept (lossless) and shown (escaped). Exhaustive where cheap."""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys

import pytest

from memwatchd.text import from_arg, from_kernel, shown, to_kernel


def test_every_byte_pair_round_trips_and_stays_distinct() -> None:
    seen: dict[str, bytes] = {}
    alphabet = [bytes([b]) for b in range(256)]
    for a, b in itertools.product(alphabet, repeat=2):
        data = b"n" + a + b
        kept = from_kernel(data)
        assert to_kernel(kept) == data
        assert seen.setdefault(kept, data) == data, (kept, data, seen[kept])  # injective


@pytest.mark.parametrize(
    ("data", "kept", "show"),
    [
        (b"nginx", "nginx", "nginx"),
        (b"bad\xff\xfe", "bad\\xff\\xfe", "bad\\xff\\xfe"),
        (b"bad\\xff", "bad\\\\xff", "bad\\\\xff"),  # a real name spelling \xff: shown with a doubled \
        (b"esc\x1b[31mred", "esc\x1b[31mred", "esc\\x1b[31mred"),
        (b"two\nlines", "two\nlines", "two\\x0alines"),
        (b"cr\rtab\t", "cr\rtab\t", "cr\\x0dtab\\x09"),
        (b"del\x7f", "del\x7f", "del\\x7f"),
        ("c1\u0085".encode(), "c1\u0085", "c1\\u0085"),  # not \x85: that is how byte 0x85 shows
        ("bidi\u202eevil".encode(), "bidi\u202eevil", "bidi\\u202eevil"),
        ("iso\u2066x\u2069".encode(), "iso\u2066x\u2069", "iso\\u2066x\\u2069"),
        ("ls\u2028ps\u2029".encode(), "ls\u2028ps\u2029", "ls\\u2028ps\\u2029"),
        ("zw\u200bj\u200d".encode(), "zw\u200bj\u200d", "zw\\u200bj\\u200d"),
        ("日本語 größe".encode(), "日本語 größe", "日本語 größe"),
        (b"", "", ""),
    ],
)
def test_kept_and_shown_forms(data: bytes, kept: str, show: str) -> None:
    assert from_kernel(data) == kept
    assert to_kernel(kept) == data
    assert shown(kept) == show
    assert shown(show) == show  # idempotent: showing twice changes nothing


def test_shown_output_is_always_safe() -> None:
    for cp in itertools.chain(range(0x0, 0x250), range(0x2000, 0x2070), range(0xFEF0, 0x10000)):
        s = shown("a" + chr(cp) + "b")
        assert s.isprintable(), (hex(cp), s)


def test_shown_is_injective_on_kept_text() -> None:
    datas = [b"x" + bytes([b]) for b in range(256)] + [b"x" + chr(c).encode() for c in range(0x80, 0x800)]
    forms = [shown(from_kernel(d)) for d in datas]
    assert len(set(forms)) == len(forms)


def test_from_arg_takes_argv_bytes() -> None:
    # Python decodes argv with surrogateescape: byte 0xff arrives as U+DCFF
    assert from_arg("bad\udcff") == "bad\\xff"
    assert from_arg("bad\\xff") == "bad\\\\xff"
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from memwatchd.text import from_arg; print(from_arg(sys.argv[1]))",
            b"zq\xff\xfe",
        ],
        capture_output=True,
        check=True,
    ).stdout
    assert out == b"zq\\xff\\xfe\n"


def test_log_lines_show_process_text_escaped(capfd: pytest.CaptureFixture[str]) -> None:
    """The real handler setup_logging installs: an ESC, a bidi override or a newline in a message is escaped;
    the message's own line breaks keep their visible marker."""
    from memwatchd.daemon.logsetup import setup_logging

    setup_logging("info")
    try:
        logging.getLogger("memwatchd.test").warning(
            "pid %d (%s) and (%s)", 7, "zq\x1b[31mRED", "zq\u202eevil\nFAKE: injected"
        )
    finally:
        for h in [h for h in logging.getLogger().handlers if getattr(h, "_memwatchd", False)]:
            logging.getLogger().removeHandler(h)
    err = capfd.readouterr().err
    assert err.count("\n") == 1
    assert "pid 7 (zq\\x1b[31mRED) and (zq\\u202eevil" in err
    assert "\x1b" not in err and "\u202e" not in err


def test_process_names_are_decoded_once_and_shared() -> None:
    from memwatchd import text

    a, b = (text.from_kernel(bytes(bytearray(b"worker\\x"))) for _ in range(2))  # two distinct byte strings
    assert a == "worker\\\\x" and a is b  # one str for every process of that name
    long = b"/system.slice/a-very-long-unit.service"
    assert text.from_kernel(long) is not text.from_kernel(long)  # cgroup paths are not kept
    for i in range(3 * text._MAX_NAMES):  # noqa: SLF001 - the bound is the point
        text.from_kernel(f"p{i}".encode())
    assert len(text._names) <= text._MAX_NAMES  # noqa: SLF001
