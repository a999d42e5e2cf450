"""Configuration: TOML, validated once at load (start and reload).

Every problem is a ConfigError whose message is "FILE: KEY: problem"; unknown keys are errors.
The defaults here are the single source of truth; etc/memwatchd.toml documents them and a test keeps
the two in step.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memwatchd.alerts.kinds import KIND_NAMES, kind_of
from memwatchd.safefile import MAX_CONFIG_BYTES, UnsafeFile, read_small
from memwatchd.secrets import mask_url
from memwatchd.units import parse_duration, parse_rate, parse_size

DEFAULT_CONFIG_PATH = "/etc/memwatchd/memwatchd.toml"
MAX_RULES = 100  # every rule is matched against every process every interval
MAX_NESTING = 32  # tables and arrays inside each other; memwatchd's own keys need 4
# 32 or more dotted key parts in a row (a.b.c...): tomllib takes quadratic time on such keys, so they are
# refused before parsing. Possessive quantifiers keep this search linear.
_DOTTED_CHAIN = re.compile(
    r"(?<![\w\"'-])(?:[\w-]++|\"[^\"\n]*+\"|'[^'\n]*+')"
    rf"(?:[ \t]*+\.[ \t]*+(?:[\w-]++|\"[^\"\n]*+\"|'[^'\n]*+')){{{MAX_NESTING}}}"
)
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


class ConfigError(Exception):
    """Invalid configuration; str() is 'file: key: problem'."""


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    interval_s: float = 3.0
    log_level: str = "info"
    hostname: str = ""  # empty: os.uname().nodename
    allocator: str = "auto"  # "auto" | "jemalloc" | "system" (daemon/allocator.py)


@dataclass(frozen=True, slots=True)
class BpfConfig:
    enabled: bool = True
    max_pids: int = 65536  # entries in the per-process stats map
    ringbuf_kb: int = 256


@dataclass(frozen=True, slots=True)
class ProcfsConfig:
    root: str = "/proc"
    smaps: bool = False  # PSS/USS from smaps_rollup (costs more)
    full_rescan_s: float = 60.0  # status/cgroup of unchanged processes are re-read at least this often
    source: str = "auto"  # "auto" | "bpf" (the kernel's task iterator, collectors/taskscan.py) | "proc"


@dataclass(frozen=True, slots=True)
class StorageConfig:
    path: str = "/var/lib/memwatchd/memwatchd.db"
    retention_s: float = 30 * 86400.0  # longest tier (hourly rollups)
    raw_retention_s: float = 2 * 86400.0
    minute_retention_s: float = 14 * 86400.0


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    urls: tuple[str, ...] = ()
    urls_file: str = ""  # file with one Apprise URL per line (secrets kept out of the main config)
    repeat_interval_s: float = 4 * 3600.0
    group_wait_s: float = 30.0  # after a message, alerts due within this are sent together
    timeout_s: float = 10.0
    max_retries: int = 8
    alertmanager: tuple[str, ...] = ()  # Alertmanager base URLs (v2 API), several for an HA pair
    alertmanager_repeat_s: float = 60.0  # firing alerts re-posted this often (< resolve_timeout)


@dataclass(frozen=True, slots=True)
class GroupsConfig:
    enabled: bool = True  # per-cgroup / per-unit series and the host breakdown each interval
    cgroup_root: str = "/sys/fs/cgroup"  # where cgroupfs is mounted (v1: its memory/ controller inside)


@dataclass(frozen=True, slots=True)
class PrometheusConfig:
    listen: str = ""  # "127.0.0.1:9464" turns the endpoint on
    top_k: int = 20
    max_series: int = 2000
    top_cgroups: int = 50  # memory cgroups exported by name (largest charge); the rest as cgroup="other"


@dataclass(frozen=True, slots=True)
class TriageConfig:
    """[triage]: leak triage, a bounded sampled allocation trace of one process (memwatchd/triage)."""

    enabled: bool = True  # trace a process when a growth or leak alert fires on it
    duration_s: float = 30.0
    sample_every: int = 65536  # bytes: an allocation of s bytes is sampled with probability min(1, s/this)
    max_concurrent: int = 1  # traces at once (each runs in a child holding ~130 MB while it compiles)
    max_stacks: int = 20  # stacks kept per result


@dataclass(frozen=True, slots=True)
class Match:
    comm: str | None = None  # glob
    unit: str | None = None  # glob
    cgroup: str | None = None  # glob on the memory cgroup path (scope "cgroup" only)

    def matches(self, comm: str, unit: str | None) -> bool:
        if self.comm is not None and not fnmatch.fnmatchcase(comm, self.comm):
            return False
        return self.unit is None or fnmatch.fnmatchcase(unit or "", self.unit)

    def matches_group(self, cgroup: str | None, unit: str | None) -> bool:
        """A group (scope "cgroup") matches when every given glob matches its cgroup path and unit."""
        if self.cgroup is not None and not fnmatch.fnmatchcase(cgroup or "", self.cgroup):
            return False
        return self.unit is None or fnmatch.fnmatchcase(unit or "", self.unit)


RULE_KINDS = KIND_NAMES  # one class per kind in memwatchd/alerts/kinds/
RULE_METRICS = ("rss", "anon", "swap", "mapped")
RULE_SCOPES = ("process", "cgroup", "host")
# What each scope watches and which kinds apply there ("process" is today's per-process behaviour).
SCOPE_METRICS = {
    "process": RULE_METRICS,
    "cgroup": (
        "memory",
        "rss",
        "anon",
        "swap",
    ),  # memory = the cgroup's charge; the rest: its processes' sums
    "host": ("shmem", "slab_unreclaimable", "page_tables", "unaccounted", "available"),
}
# each kind declares the scopes it can judge (RuleKind.scopes)
SCOPE_KINDS = {scope: tuple(k for k in KIND_NAMES if scope in kind_of(k).scopes) for scope in RULE_SCOPES}


@dataclass(frozen=True, slots=True)
class RuleConfig:
    name: str
    kind: str
    metric: str = "rss"
    min_rate: float = 0.0  # bytes/s
    window_s: float = 600.0
    for_s: float = 0.0
    threshold: int = 0  # bytes
    match: Match = field(default_factory=Match)
    notify: tuple[str, ...] | None = None  # None: [notify] urls
    scope: str = "process"  # "process" | "cgroup" | "host"
    alertmanager: tuple[str, ...] | None = None  # None: [notify] alertmanager
    severity: str | None = None  # the `severity` label of the rule's Alertmanager alerts


@dataclass(frozen=True, slots=True)
class Config:
    source: str = "<defaults>"
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    bpf: BpfConfig = field(default_factory=BpfConfig)
    procfs: ProcfsConfig = field(default_factory=ProcfsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    prometheus: PrometheusConfig = field(default_factory=PrometheusConfig)
    triage: TriageConfig = field(default_factory=TriageConfig)
    groups: GroupsConfig = field(default_factory=GroupsConfig)
    rules: tuple[RuleConfig, ...] = ()


class _Section:
    """Reads one TOML table, tracking keys so unknown ones can be reported."""

    def __init__(self, file: str, prefix: str, table: Any) -> None:
        self.file, self.prefix = file, prefix
        if not isinstance(table, dict):
            raise ConfigError(f"{file}: {prefix}: expected a table")
        self.table = table
        self.seen: set[str] = set()

    def err(self, key: str, problem: str) -> ConfigError:
        return ConfigError(
            f"{self.file}: {self.prefix}.{key}: {problem}"
            if self.prefix
            else f"{self.file}: {key}: {problem}"
        )

    def get(self, key: str, default: Any, conv: Any) -> Any:
        self.seen.add(key)
        if key not in self.table:
            return default
        try:
            return conv(self.table[key])
        except (ValueError, TypeError) as e:
            raise self.err(key, str(e)) from None

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.seen)
        if unknown:
            raise self.err(unknown[0], "unknown key")


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


def _number(lo: float, hi: float) -> Any:
    def conv(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"expected a number, got {v!r}")
        if not lo <= v <= hi:
            raise ValueError(f"must be between {lo:g} and {hi:g}, got {v!r}")
        return float(v)

    return conv


def _int(lo: int, hi: int) -> Any:
    def conv(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected an integer, got {v!r}")
        if not lo <= v <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {v!r}")
        return v

    return conv


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {v!r}")
    if "\x00" in v:
        raise ValueError("NUL byte in string")
    return v


def _choice(*choices: str) -> Any:
    def conv(v: Any) -> str:
        s = _str(v)
        if s not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {v!r}")
        return s

    return conv


def _duration(min_s: float = 0.0) -> Any:
    def conv(v: Any) -> float:
        s = parse_duration(v)
        if s < min_s:
            raise ValueError(f"must be at least {min_s:g}s, got {v!r}")
        return s

    return conv


def _size(v: Any) -> int:
    return parse_size(v)


def _rate(v: Any) -> float:
    return parse_rate(_str(v))


def _urls(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(u, str) and u.strip() for u in v):
        raise ValueError("expected a list of Apprise URL strings")
    for u in v:
        if "://" not in u:
            raise ValueError(f"not an Apprise URL (scheme://...): {mask_url(u)!r}")
    return tuple(u.strip() for u in v)


def _am_urls(v: Any) -> tuple[str, ...]:
    """Alertmanager base URLs: http(s)://HOST:PORT[/prefix], with a host and an explicit port."""
    if not isinstance(v, list) or not all(isinstance(u, str) and u.strip() for u in v):
        raise ValueError("expected a list of Alertmanager URLs like 'http://alertmanager:9093'")
    out = []
    for raw in v:
        u = raw.strip()
        try:
            p = urllib.parse.urlsplit(u)
            port = p.port
        except ValueError:
            raise ValueError(f"not a valid URL: {mask_url(u)!r}") from None
        if p.scheme not in ("http", "https"):
            raise ValueError(f"expected an http:// or https:// URL, got {mask_url(u)!r}")
        if not p.hostname or port is None:
            raise ValueError(f"expected a host and a port (http://host:9093), got {mask_url(u)!r}")
        if p.query or p.fragment:
            raise ValueError(f"expected no query or fragment, got {mask_url(u)!r}")
        out.append(u.rstrip("/"))
    return tuple(out)


def _severity(v: Any) -> str:
    s = _str(v).strip()
    if not s or len(s) > 64 or not s.isprintable():
        raise ValueError(f"expected a short label value like 'warning' or 'critical', got {_cut(v)}")
    return s


def _listen(v: Any) -> str:
    """'HOST:PORT': HOST an IPv4 address, a bracketed IPv6 address or a host name; PORT 1-65535."""
    s = _str(v).strip()
    if not s:
        return ""
    bad = ValueError(f"expected HOST:PORT like '127.0.0.1:9464' or '[::1]:9464', got {_cut(v)}")
    host, sep, port = s.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise bad
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise bad from None
        return s
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad from None
        raise ValueError(f"an IPv6 address needs brackets ('[::1]:9464'), got {_cut(v)}")
    if host.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise bad from None
        return s
    if len(host) > 253 or not _HOSTNAME.fullmatch(host):
        raise bad
    return s


def _cut(v: Any) -> str:
    """repr of a value for an error message, cut so that a huge value cannot make a huge message."""
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def _rule(file: str, index: int, table: Any) -> RuleConfig:
    sec = _Section(file, f"rules[{index}]", table)
    name = sec.get("name", None, _str)
    if not name:
        raise sec.err("name", "required")
    kind = sec.get("kind", None, _choice(*RULE_KINDS))
    if kind is None:
        raise sec.err("kind", f"required (one of {', '.join(RULE_KINDS)})")
    scope = sec.get("scope", "process", _choice(*RULE_SCOPES))
    if kind not in SCOPE_KINDS[scope]:
        raise sec.err("kind", f"scope {scope!r} takes kind {' or '.join(SCOPE_KINDS[scope])}, got {kind!r}")
    if scope == "host" and "metric" not in sec.table:
        raise sec.err("metric", f"required for scope 'host' (one of {', '.join(SCOPE_METRICS['host'])})")
    default_metric = {"process": kind_of(kind).default_metric, "cgroup": "memory", "host": ""}[scope]
    metric = sec.get("metric", default_metric, _choice(*SCOPE_METRICS[scope]))
    min_rate = sec.get("min_rate", 0.0, _rate)
    window = sec.get("window", 600.0, _duration(1.0))
    for_s = sec.get("for", 0.0, _duration())
    threshold = sec.get("threshold", 0, _size)
    notify = sec.get("notify", None, _urls)
    alertmanager = sec.get("alertmanager", None, _am_urls)
    severity = sec.get("severity", None, _severity)
    match_tbl = sec.get("match", None, lambda v: v)
    sec.finish()
    match = Match()
    if match_tbl is not None:
        if scope == "host":
            raise sec.err("match", "scope 'host' watches the whole host: no match")
        ms = _Section(file, f"rules[{index}].match", match_tbl)
        match = Match(
            comm=ms.get("comm", None, _str) if scope == "process" else None,
            unit=ms.get("unit", None, _str),
            cgroup=ms.get("cgroup", None, _str) if scope == "cgroup" else None,
        )
        ms.finish()
    rule = RuleConfig(
        name=name,
        kind=kind,
        metric=metric,
        min_rate=min_rate,
        window_s=window,
        for_s=for_s,
        threshold=threshold,
        match=match,
        notify=notify,
        scope=scope,
        alertmanager=alertmanager,
        severity=severity,
    )
    problem = kind_of(kind).validate(rule)
    if problem is not None:
        raise sec.err(*problem)
    return rule


def _triage(t: _Section) -> TriageConfig:
    def sample_size(v: Any) -> int:
        n = parse_size(v)
        if not 1 <= n <= 1 << 30:
            raise ValueError(f"must be between 1B and 1GB, got {v!r}")
        return n

    cfg = TriageConfig(
        enabled=t.get("enabled", True, _bool),
        duration_s=t.get("duration", 30.0, _duration(1.0)),
        sample_every=t.get("sample_every", 65536, sample_size),
        max_concurrent=t.get("max_concurrent", 1, _int(1, 16)),
        max_stacks=t.get("max_stacks", 20, _int(1, 1000)),
    )
    t.finish()
    if cfg.duration_s > 3600:
        raise t.err("duration", "must be at most 1h (a trace slows the process down while it runs)")
    return cfg


def parse_config(data: dict[str, Any], file: str) -> Config:
    """Validate a parsed TOML document. Relative paths are taken relative to the config file's folder."""
    top = _Section(file, "", data)
    base = Path(file).resolve().parent if file != "<defaults>" else Path.cwd()

    def path(v: Any) -> str:
        s = _str(v)
        if not s:
            raise ValueError("empty path")
        return str(base / s) if not os.path.isabs(s) else s

    d = _Section(file, "daemon", top.get("daemon", {}, lambda v: v))
    daemon = DaemonConfig(
        interval_s=d.get("interval", 3.0, _number(0.1, 3600)),
        log_level=d.get("log_level", "info", _choice("debug", "info", "warning", "error")),
        hostname=d.get("hostname", "", _str),
        allocator=d.get("allocator", "auto", _choice("auto", "jemalloc", "system")),
    )
    d.finish()

    b = _Section(file, "bpf", top.get("bpf", {}, lambda v: v))
    bpf = BpfConfig(
        enabled=b.get("enabled", True, _bool),
        max_pids=b.get("max_pids", 65536, _int(1024, 4194304)),
        ringbuf_kb=b.get("ringbuf_kb", 256, _int(4, 65536)),
    )
    b.finish()
    if bpf.ringbuf_kb & (bpf.ringbuf_kb - 1) or bpf.ringbuf_kb * 1024 < 4096:
        raise b.err("ringbuf_kb", "must be a power of two (and at least 4)")

    p = _Section(file, "procfs", top.get("procfs", {}, lambda v: v))
    procfs = ProcfsConfig(
        root=p.get("root", "/proc", path),
        smaps=p.get("smaps", False, _bool),
        full_rescan_s=p.get("full_rescan", 60.0, _duration(0.0)),
        source=p.get("source", "auto", _choice("auto", "bpf", "proc")),
    )
    p.finish()

    s = _Section(file, "storage", top.get("storage", {}, lambda v: v))
    storage = StorageConfig(
        path=s.get("path", "/var/lib/memwatchd/memwatchd.db", path),
        retention_s=s.get("retention", 30 * 86400.0, _duration(60.0)),
        raw_retention_s=s.get("raw_retention", 2 * 86400.0, _duration(60.0)),
        minute_retention_s=s.get("minute_retention", 14 * 86400.0, _duration(60.0)),
    )
    s.finish()
    if storage.raw_retention_s > storage.minute_retention_s:
        raise s.err("raw_retention", "must not be longer than minute_retention")
    if storage.minute_retention_s > storage.retention_s:
        raise s.err("minute_retention", "must not be longer than retention")

    n = _Section(file, "notify", top.get("notify", {}, lambda v: v))
    notify = NotifyConfig(
        urls=n.get("urls", (), _urls),
        urls_file=n.get("urls_file", "", lambda v: path(v) if v else ""),
        repeat_interval_s=n.get("repeat_interval", 4 * 3600.0, _duration(0.0)),
        group_wait_s=n.get("group_wait", 30.0, _duration(0.0)),
        timeout_s=n.get("timeout", 10.0, _duration(0.1)),
        max_retries=n.get("max_retries", 8, _int(0, 1000)),
        alertmanager=n.get("alertmanager", (), _am_urls),
        alertmanager_repeat_s=n.get("alertmanager_repeat", 60.0, _duration(1.0)),
    )
    n.finish()

    pr = _Section(file, "prometheus", top.get("prometheus", {}, lambda v: v))
    prometheus = PrometheusConfig(
        listen=pr.get("listen", "", _listen),
        top_k=pr.get("top_k", 20, _int(0, 1000)),
        max_series=pr.get("max_series", 2000, _int(10, 1000000)),
        top_cgroups=pr.get("top_cgroups", 50, _int(0, 10000)),
    )
    pr.finish()

    g = _Section(file, "groups", top.get("groups", {}, lambda v: v))
    groups = GroupsConfig(
        enabled=g.get("enabled", True, _bool),
        cgroup_root=g.get("cgroup_root", "/sys/fs/cgroup", path),
    )
    g.finish()
    triage = _triage(_Section(file, "triage", top.get("triage", {}, lambda v: v)))

    raw_rules = top.get("rules", [], lambda v: v)
    if not isinstance(raw_rules, list):
        raise top.err("rules", "expected [[rules]] tables")
    if len(raw_rules) > MAX_RULES:
        raise top.err("rules", f"at most {MAX_RULES} rules, got {len(raw_rules)}")
    rules = tuple(_rule(file, i, r) for i, r in enumerate(raw_rules))
    names = [r.name for r in rules]
    for i, nm in enumerate(names):
        if nm in names[:i]:
            raise ConfigError(f"{file}: rules[{i}].name: duplicate rule name {nm!r}")
    top.finish()
    return Config(
        source=file,
        daemon=daemon,
        bpf=bpf,
        procfs=procfs,
        storage=storage,
        notify=notify,
        prometheus=prometheus,
        triage=triage,
        groups=groups,
        rules=rules,
    )


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; ConfigError on any problem (including unreadable file).

    Time and memory are bounded whatever the path names: a FIFO, a device or a directory is refused
    without reading, at most 1 MB is read, and nesting deeper than MAX_NESTING is refused.
    """
    file = str(path)
    return parse_config(_read_toml(file), file)


def _read_toml(file: str) -> dict[str, Any]:
    try:
        raw = read_small(file, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ConfigError(f"{file}: cannot read: no such file") from None
    except PermissionError:
        raise ConfigError(f"{file}: cannot read: permission denied") from None
    except UnsafeFile as e:
        raise ConfigError(f"{file}: cannot read: {e}") from None
    except OSError as e:
        raise ConfigError(f"{file}: cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: invalid TOML: not UTF-8") from None
    too_deep = ConfigError(f"{file}: invalid TOML: nested deeper than {MAX_NESTING} levels")
    if _DOTTED_CHAIN.search(text):
        raise too_deep
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{file}: invalid TOML: {e}") from None
    except RecursionError:  # arrays or inline tables nested ~1000 deep
        raise too_deep from None
    if _depth(data) > MAX_NESTING:
        raise too_deep
    return data


def _depth(doc: Any) -> int:
    """How deeply tables and arrays nest in a parsed document (iterative: no recursion limit)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(v, dict):
            stack.extend((c, d + 1) for c in v.values() if isinstance(c, dict | list))
        elif isinstance(v, list):
            stack.extend((c, d + 1) for c in v if isinstance(c, dict | list))
    return deepest


def notify_urls(cfg: Config) -> tuple[str, ...]:
    """The default notification URLs: [notify] urls plus those in urls_file (one per line, # comments)."""
    urls = list(cfg.notify.urls)
    # the systemd unit passes a credential (LoadCredential=apprise-urls) through MEMWATCHD_URLS_FILE
    urls_file = cfg.notify.urls_file or os.environ.get("MEMWATCHD_URLS_FILE", "")
    if urls_file:
        key = "notify.urls_file" if cfg.notify.urls_file else "MEMWATCHD_URLS_FILE"
        try:
            text = read_small(urls_file).decode("utf-8", "replace")
        except UnsafeFile as e:
            raise ConfigError(f"{cfg.source}: {key}: cannot read {urls_file}: {e}") from None
        except OSError as e:
            raise ConfigError(f"{cfg.source}: {key}: cannot read {urls_file}: {e.strerror}") from None
        for ln in text.splitlines():
            u = ln.strip()
            if u and not u.startswith("#"):
                if "://" not in u:
                    raise ConfigError(f"{cfg.source}: notify.urls_file: not an Apprise URL: {mask_url(u)!r}")
                urls.append(u)
    return tuple(urls)
