"""One URL masking for config errors, logs, the delivery child and the CLI (memwatchd/secrets.py)."""

from __future__ import annotations

import pytest

from memwatchd import config, secrets
from memwatchd.cli import notify_test
from memwatchd.daemon import logsetup
from memwatchd.notify import child, deliverer

URLS = [
    ("mailto://user:s3cret@mail.example.com?to=a@b.c", "mailto://mail.example.com/***"),
    ("tgram://123456:TOKEN/987", "tgram://***"),
    ("discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js", "discord://***"),
    ("json://127.0.0.1:8080/", "json://127.0.0.1:8080/***"),
    ("json://[::1]:9/hook?token=x", "json://[::1]:9/***"),
    ("https://example.com", "https://example.com"),
    ("not a url", "***"),
]


@pytest.mark.parametrize(("url", "masked"), URLS)
def test_mask_url(url: str, masked: str) -> None:
    assert secrets.mask_url(url) == masked


@pytest.mark.parametrize(("url", "masked"), [u for u in URLS if "://" in u[0]])
def test_a_url_in_a_log_line_is_masked_the_same_way(url: str, masked: str) -> None:
    assert secrets.mask_secrets(f"delivery to {url} failed") == f"delivery to {masked} failed"


def test_every_user_takes_the_one_implementation() -> None:
    assert config.mask_url is secrets.mask_url
    assert child.mask_url is secrets.mask_url and deliverer.mask_url is secrets.mask_url
    assert notify_test.mask_url is secrets.mask_url
    assert logsetup.mask_secrets is secrets.mask_secrets
