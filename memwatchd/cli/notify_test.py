"""`memwatchctl notify-test`: send a test message through the configured Apprise URLs.

It uses the daemon's own delivery path (a `python -m memwatchd.notify.child` child), so a URL that works here
works for the daemon. Register with `cli.add_command(notify_test)`.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import click

from memwatchd.config import DEFAULT_CONFIG_PATH, ConfigError, load_config, notify_urls
from memwatchd.notify.deliverer import send_sync
from memwatchd.secrets import mask_url


class _ConfigProblem(click.ClickException):
    exit_code = 2


class _Timeout(click.ParamType[float, object]):
    """Seconds per URL: a finite number from 0.1 to 3600 (nan, inf and 1e9 are refused, not passed on)."""

    name = "SECONDS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            v = float(value)
        except (TypeError, ValueError):
            v = math.nan
        if not 0.1 <= v <= 3600:  # also refuses nan
            self.fail(f"expected seconds from 0.1 to 3600, got {str(value)[:40]!r}", param, ctx)
        return v


def _config_path(given: str | None) -> str:
    """This command's --config, else memwatchctl's own --config when given, else $MEMWATCHD_CONFIG, else the
    default: `memwatchctl --config FILE notify-test` tests FILE's URLs."""
    if given is not None:
        return given
    parent = click.get_current_context().parent
    if (
        parent is not None
        and parent.params.get("config_path")
        and parent.get_parameter_source("config_path") is click.core.ParameterSource.COMMANDLINE
    ):
        return str(parent.params["config_path"])
    return os.environ.get("MEMWATCHD_CONFIG") or DEFAULT_CONFIG_PATH


@click.command("notify-test")
@click.option(
    "--config",
    "-c",
    "config_path",
    default=None,
    help="Daemon configuration file to read the notification URLs from (default: memwatchctl's --config,"
    f" else $MEMWATCHD_CONFIG, else {DEFAULT_CONFIG_PATH}).",
)
@click.option("--url", "urls", multiple=True, help="Send to this Apprise URL instead (repeatable).")
@click.option(
    "--rule", "rule_name", default=None, help="Send to the URLs of this rule instead of [notify] urls."
)
@click.option(
    "--timeout",
    "timeout_s",
    type=_Timeout(),
    default=None,
    help="Seconds per URL, 0.1 to 3600 (default: [notify] timeout).",
)
def notify_test(
    config_path: str | None, urls: tuple[str, ...], rule_name: str | None, timeout_s: float | None
) -> None:
    """Send a test message through the configured notification URLs and report each one.

    Each URL is tried once, through the same delivery path the daemon uses; the output has one line per
    URL ("ok" or "failed" with the reason), with tokens masked. Exit 1 when any URL failed.

    \b
    Examples:
      memwatchctl notify-test                              # [notify] urls of the default config
      memwatchctl --config ./memwatchd.toml notify-test    # those of another configuration
      memwatchctl notify-test --rule oom-kill              # the URLs that rule would use
      memwatchctl notify-test --url 'json://127.0.0.1:8080/'
    """
    host = os.uname().nodename
    config_path = _config_path(config_path)
    if not urls:
        try:
            cfg = load_config(config_path)
            urls = notify_urls(cfg)
        except ConfigError as e:
            raise _ConfigProblem(str(e)) from None
        host = cfg.daemon.hostname or host
        timeout_s = timeout_s if timeout_s is not None else cfg.notify.timeout_s
        if rule_name is not None:
            rule = next((r for r in cfg.rules if r.name == rule_name), None)
            if rule is None:
                raise click.ClickException(f"no rule named {rule_name!r} in {config_path}")
            urls = rule.notify if rule.notify is not None else urls
    if not urls:
        raise click.ClickException(
            "no notification URLs configured ([notify] urls, urls_file, or the rule's notify)"
        )
    title = f"[memwatchd] test notification from {host}"
    body = (
        f"This is a test message from memwatchd on {host}, sent by memwatchctl notify-test at"
        f" {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.\nAlerts will arrive here."
    )
    results = send_sync(title, body, urls, timeout_s or 10.0)
    for url, (ok, err) in zip(urls, results, strict=True):
        click.echo(f"ok      {mask_url(url)}" if ok else f"failed  {mask_url(url)}: {err}")
    failed = sum(1 for ok, _ in results if not ok)
    if failed:
        raise click.ClickException(f"{failed} of {len(urls)} notification URL(s) failed")
