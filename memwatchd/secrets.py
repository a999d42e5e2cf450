"""Secrets out of sight: one way to mask Apprise URLs and secret-looking text, for logs, errors and the CLI.

Apprise URLs carry tokens in the user, password, path and query, and many services put a token where the host
would be (tgram://BOTTOKEN/CHAT, discord://ID/TOKEN). So a URL is shown as scheme and host only when the host
is a real hostname (dotted DNS name or IP address, [IPv6], localhost; optional :port), and as scheme://***
otherwise. Used by config errors, the daemon's log filter, the delivery child and `memwatchctl notify-test`.
"""

from __future__ import annotations

import re

MASK = "***"

# A host we may show: localhost, a dotted name or IPv4 address, or [IPv6]; with an optional :port.
_SHOWABLE_HOST = re.compile(r"(localhost|[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+|\[[0-9a-fA-F:.]+\])(:\d{1,5})?")
# scheme://anything-up-to-whitespace-or-quote: every URL in a log message, Apprise or not.
_URL_IN_TEXT = re.compile(r"""\b([a-zA-Z][a-zA-Z0-9+.-]{1,31})://([^\s'"<>]+)""")
# key=value / key: value for secret-looking keys, also as --key=value and --key value on command lines.
_SECRET_KEYS = r"(?:passw(?:or)?d|pwd|secret|token|api[_-]?key|access[_-]?key|authorization|credentials?)"
_KV = re.compile(rf"(?i)(\b[\w.-]*{_SECRET_KEYS}[\w.-]*\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&]+)")
_OPT = re.compile(rf"(?i)(--?[\w-]*{_SECRET_KEYS}[\w-]*\s+)(?!-)(\S+)")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")


def showable_host(url: str) -> str | None:
    """The host[:port] of a URL when it may be shown, else None (no scheme, or a token in the host place)."""
    _scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    host = authority.rsplit("@", 1)[-1]
    return host if _SHOWABLE_HOST.fullmatch(host) else None


def mask_url(url: str) -> str:
    """scheme://host/*** (scheme://host when nothing follows the host); scheme://*** when the host is no
    hostname; *** when it is not a URL at all."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return MASK
    host = showable_host(url)
    if host is None:
        return f"{scheme}://{MASK}"
    return f"{scheme}://{host}/{MASK}" if any(c in rest for c in "/?#@") else f"{scheme}://{host}"


def mask_secrets(text: str) -> str:
    """Mask every URL in a free text, and Bearer/Basic credentials and key=value secrets."""
    text = _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)
    text = _KV.sub(lambda m: m.group(1) + MASK, text)
    return _OPT.sub(lambda m: m.group(1) + MASK, text)
