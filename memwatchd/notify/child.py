"""`python -m memwatchd.notify.child`: send one message through Apprise, in a short-lived child process.

The daemon never imports apprise (it costs ~30 MB); it starts this module per delivery attempt.
Input on stdin (never argv, which every user can read in /proc):
    {"title": str, "body": str, "urls": [str, ...], "timeout_s": float}
Output on stdout: {"results": [{"ok": bool, "error": str}, ...]}, one per URL, in order.
Exit status: 0 when every URL succeeded, 1 when some failed, 2 on bad input.
With --check, input {"urls": [...]} and output {"problems": [str, ...], "each": [str | null, ...]}: the
problems of the unusable URLs, and per URL its problem or null (URLs masked).
Errors never quote a URL's secrets: Apprise's log lines are scrubbed of every part of the URL but its host.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from memwatchd.secrets import mask_url, showable_host


class _Collect(logging.Handler):
    """Keeps Apprise's warnings and errors so the parent can be told why a URL failed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(record.getMessage())
        except Exception:  # a malformed log call must not fail the delivery
            self.lines.append(str(record.msg))


def secrets_of(url: str) -> list[str]:
    """Every part of an Apprise URL that may be a secret: user, password, path segments, query values."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return [url]
    parts: list[str] = []
    try:
        u = urlsplit(url)
        parts += [u.username or "", u.password or ""]
        parts += u.path.split("/")
        parts += [kv.partition("=")[2] for kv in u.query.split("&")]
        host = u.hostname or ""
    except ValueError:
        return [rest]
    # the host is public only where mask_url shows it; many services put a token in the host position
    if showable_host(url) is None:
        netloc = rest.split("/", 1)[0].split("?", 1)[0]
        parts += [netloc, *re.split(r"[:@]", netloc)]
        host = ""
    out = set()
    for p in parts:
        for form in (p, unquote(p)):
            if len(form) >= 3 and form.lower() != host.lower():
                out.add(form)
    return sorted(out, key=len, reverse=True)


def scrub(text: str, urls: Sequence[str]) -> str:
    """Remove URL secrets (and whole URLs) from a text meant for logs."""
    for url in urls:
        text = text.replace(url, mask_url(url))
        for s in secrets_of(url):
            text = text.replace(s, "***")
    return re.sub(r"\s+", " ", text).strip()[:300]


def _add(apobj: Any, url: str, timeout_s: float | None) -> Any | None:
    n = len(apobj)
    if not apobj.add(url) or len(apobj) == n:
        return None
    server = apobj[n]
    if timeout_s:
        for attr in ("socket_connect_timeout", "socket_read_timeout"):
            if hasattr(server, attr):
                setattr(server, attr, float(timeout_s))
    return server


def send(title: str, body: str, urls: Sequence[str], timeout_s: float | None) -> list[tuple[bool, str]]:
    """Notify every URL separately; (ok, scrubbed error) per URL."""
    import apprise  # here, not at import time: only this child pays for it

    handler = _Collect()
    alog = logging.getLogger("apprise")
    alog.addHandler(handler)
    alog.setLevel(logging.WARNING)
    alog.propagate = False
    results: list[tuple[bool, str]] = []
    for url in urls:
        handler.lines.clear()
        apobj = apprise.Apprise()
        server = _add(apobj, url, timeout_s)
        if server is None:
            results.append((False, f"not a usable Apprise URL: {mask_url(url)}"))
            continue
        try:
            ok = bool(server.notify(body=body, title=title, body_format=apprise.NotifyFormat.TEXT))
        except Exception as e:  # a plugin bug must not hide the other URLs' results
            ok, handler.lines = False, [*handler.lines, f"{type(e).__name__}: {e}"]
        err = "" if ok else scrub("; ".join(handler.lines[-3:]) or "failed", [url])
        results.append((ok, err))
    return results


def check_urls(urls: Sequence[str]) -> list[str]:
    """Problems with Apprise URLs (unknown scheme, missing parts), masked; imports apprise."""
    return [p for p in check_each(urls) if p is not None]


def _known_schemes() -> set[str] | None:
    try:
        from apprise import manager_plugins

        factory: Any = manager_plugins.NotificationManager  # apprise ships no type hints for it
        manager = factory()
        return {str(x).lower() for x in manager.schemas()}
    except Exception:  # another Apprise version: fall back to "not usable" without the reason
        return None


def check_each(urls: Sequence[str]) -> list[str | None]:
    """Per URL: None when Apprise can use it, else why not (masked); imports apprise."""
    import apprise

    logging.getLogger("apprise").setLevel(logging.CRITICAL)
    known = _known_schemes()
    out: list[str | None] = []
    for url in urls:
        if _add(apprise.Apprise(), url, None) is not None:
            out.append(None)
            continue
        scheme = url.partition("://")[0].strip().lower()
        if known is not None and scheme not in known:
            out.append(f"Apprise does not know the scheme {scheme[:20]!r}: {mask_url(url)}")
        else:
            out.append(f"not a usable Apprise URL (missing or invalid parts): {mask_url(url)}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        doc = json.loads(sys.stdin.buffer.read().decode("utf-8"))
        urls = [str(u) for u in doc["urls"]]
        if args == ["--check"]:
            each = check_each(urls)
            print(json.dumps({"problems": [p for p in each if p is not None], "each": each}))
            return 0
        title, body = str(doc["title"]), str(doc["body"])
        timeout_s = float(doc.get("timeout_s") or 0) or None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        print(json.dumps({"error": f"bad input: {type(e).__name__}"}))
        return 2
    results = send(title, body, urls, timeout_s)
    print(json.dumps({"results": [{"ok": ok, "error": err} for ok, err in results]}))
    return 0 if all(ok for ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
