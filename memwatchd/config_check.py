"""Values that parse but cannot work, refused at load (start, `--check` and reload alike).

config.parse_config is pure: it checks what a value looks like. This module looks at the world: whether
`[procfs] root` is a /proc-like directory, and whether Apprise can use every notification URL (asked of
Apprise itself, in the same kind of child process that delivers, so the daemon never imports it). Every
problem is a ConfigError "FILE: KEY: problem".
"""

from __future__ import annotations

import logging
import os
import stat

from memwatchd.config import Config, ConfigError, notify_urls

log = logging.getLogger("memwatchd")


def procfs_root_problem(root: str) -> str | None:
    """Why `root` cannot be read like /proc (a directory holding a readable meminfo file), or None."""
    try:
        st = os.stat(root)
    except OSError as e:
        return f"{root}: {e.strerror or e}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{root} is not a directory"
    try:
        st = os.stat(os.path.join(root, "meminfo"))
    except OSError:
        return f"{root} is not a /proc-like directory (no meminfo)"
    if not stat.S_ISREG(st.st_mode):
        return f"{root} is not a /proc-like directory (meminfo is not a file)"
    return None


def url_sources(cfg: Config) -> list[tuple[str, str]]:
    """(key, url) for every notification URL the configuration names, keyed as errors name them."""
    out = [("notify.urls", u) for u in cfg.notify.urls]
    file_key = "notify.urls_file" if cfg.notify.urls_file else "MEMWATCHD_URLS_FILE"
    out += [(file_key, u) for u in notify_urls(cfg)[len(cfg.notify.urls) :]]
    for i, rule in enumerate(cfg.rules):
        out += [(f"rules[{i}].notify", u) for u in rule.notify or ()]
    return out


def check_usable(cfg: Config, *, check_urls: bool = True) -> None:
    """ConfigError for the first value that parses but cannot work."""
    problem = procfs_root_problem(cfg.procfs.root)
    if problem is not None:
        raise ConfigError(f"{cfg.source}: procfs.root: {problem}")
    sources = url_sources(cfg)  # also reads urls_file: a FIFO or a huge file there is refused here
    if not check_urls or not sources:
        return
    from memwatchd.notify.deliverer import check_each_child

    each = check_each_child([u for _, u in sources])
    if each is None:  # no apprise here, or it hung: delivery will say why; monitoring must still start
        log.warning("could not check the notification URLs with Apprise; they are used unchecked")
        return
    for (key, _), problem in zip(sources, each, strict=True):
        if problem is not None:
            raise ConfigError(f"{cfg.source}: {key}: {problem}")
