"""Configuration validation: every bad value names the file and the key; shipped config matches the code."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from memwatchd.config import ConfigError, load_config, mask_url, parse_config
from memwatchd.units import format_size, parse_duration, parse_rate, parse_size

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "etc" / "memwatchd.toml"


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[daemon]\nintervl = 3\n", "daemon.intervl: unknown key"),
        ("[daemon]\ninterval = 'fast'\n", "daemon.interval: expected a number"),
        ("[daemon]\ninterval = 0\n", "daemon.interval: must be between"),
        ("[bpf]\nenabled = 'yes'\n", "bpf.enabled: expected true or false"),
        ("[procfs]\nsource = 'kernel'\n", "procfs.source: expected one of auto, bpf, proc"),
        ("[procfs]\nsource = 1\n", "procfs.source: expected a string"),
        ("[storage]\nretention = '3 fortnights'\n", "storage.retention:"),
        (
            "[storage]\nraw_retention = '30d'\nminute_retention = '1d'\n",
            "storage.raw_retention: must not be longer",
        ),
        ("[[rules]]\nname = 'x'\nkind = 'growth'\n", "rules[0].min_rate: required"),
        (
            "[[rules]]\nname = 'x'\nkind = 'threshold'\nthreshold = 'big'\n",
            "rules[0].threshold: expected a size",
        ),
        ("[[rules]]\nname = 'x'\nkind = 'nope'\n", "rules[0].kind: expected one of"),
        ("[[rules]]\nname = 'x'\nkind = 'oom'\nwhen = 1\n", "rules[0].when: unknown key"),
        ("[[rules]]\nname = 'x'\nkind = 'oom'\nmatch = { pid = 1 }\n", "rules[0].match.pid: unknown key"),
        (
            "[[rules]]\nname = 'x'\nkind = 'oom'\n[[rules]]\nname = 'x'\nkind = 'oom'\n",
            "rules[1].name: duplicate",
        ),
        ("[notify]\nurls = ['not a url']\n", "notify.urls: not an Apprise URL"),
        ("[prometheus]\nlisten = 'localhost'\n", "prometheus.listen: expected HOST:PORT"),
        ("surprise = 1\n", "surprise: unknown key"),
        ("[daemon\n", "invalid TOML"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, toml: str, expected: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value).startswith(f"{f}: ")
    assert expected in str(e.value)


def test_daemon_exits_2_on_bad_config_without_traceback(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[storage]\nretention = 'forever'\n")
    r = subprocess.run(
        [sys.executable, "-m", "memwatchd.daemon.app", "--config", str(f)], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert f"{f}: storage.retention:" in r.stderr
    assert "Traceback" not in r.stderr


def test_check_flag_validates_shipped_config() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "memwatchd.daemon.app", "--config", str(SHIPPED), "--check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "memwatchd.daemon.app", "--config", str(tmp_path / "none.toml")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "cannot read: no such file" in r.stderr


def test_shipped_config_documents_the_code_defaults() -> None:
    """etc/memwatchd.toml shows every default; this fails when the two drift apart."""
    shipped = load_config(SHIPPED)
    defaults = parse_config({}, str(SHIPPED))
    for section in ("daemon", "bpf", "procfs", "storage", "notify", "prometheus", "groups"):
        assert getattr(shipped, section) == getattr(defaults, section), section
    text = SHIPPED.read_text()
    for section in ("daemon", "bpf", "procfs", "storage", "notify", "prometheus", "groups"):
        sec = getattr(defaults, section)
        assert f"[{section}]" in text
        for f in dataclasses.fields(sec):
            key = f.name.removesuffix("_s") if f.name.endswith("_s") and f.name != "interval_s" else f.name
            key = "interval" if f.name == "interval_s" else key
            key = "full_rescan" if f.name == "full_rescan_s" else key
            assert f"\n{key} = " in text, f"[{section}] {key} is not documented in etc/memwatchd.toml"
    assert {r.kind for r in shipped.rules} == {"growth", "leak", "threshold", "oom"}


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[storage]\npath = 'data/m.db'\n")
    assert load_config(f).storage.path == str(tmp_path / "data" / "m.db")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("2h", 7200), ("7d", 604800), ("1h30m", 5400), (5, 5), ("1.5h", 5400)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "h", "3x", "-1s", "1h junk", True, float("nan")])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)  # type: ignore[arg-type]


def test_sizes_and_rates() -> None:
    assert parse_size("512MB") == 512 * 1024**2
    assert parse_size("2GB") == 2 * 1024**3
    assert parse_size("4k") == 4096
    assert parse_rate("10MB/h") == pytest.approx(10 * 1024**2 / 3600)
    assert parse_rate("5MB/min") == pytest.approx(5 * 1024**2 / 60)
    assert parse_rate("1MB/10s") == pytest.approx(1024**2 / 10)
    for bad in ("10MB", "10XB/h", "10MB/0s"):
        with pytest.raises(ValueError):
            parse_rate(bad)
    assert format_size(1536 * 1024) == "1.5M"
    assert format_size(None) == "-"


def test_mask_url_hides_credentials_and_tokens() -> None:
    assert mask_url("mailto://user:s3cret@mail.example.com?to=a@b.c") == "mailto://mail.example.com/***"
    assert "TOKEN" not in mask_url("tgram://123456:TOKEN/987")
    assert mask_url("json://127.0.0.1:8080/") == "json://127.0.0.1:8080/***"
