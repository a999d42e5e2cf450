"""Rule kinds: one class per kind, one module per class (growth, leak, threshold, oom).

`kind_of(name)` returns the kind for a rule's `kind =` value; `KIND_NAMES` lists them for config validation.
A new kind is a new module here defining a RuleKind subclass with a `name`: it is found by scanning this
package, so nothing else needs to list it.
"""

from __future__ import annotations

import importlib
import pkgutil

from memwatchd.alerts.kinds.base import Judgement, RuleKind


def _discover() -> dict[str, RuleKind]:
    for m in pkgutil.iter_modules(__path__):
        if m.name != "base":
            importlib.import_module(f"{__name__}.{m.name}")
    found: dict[str, RuleKind] = {}
    todo: list[type[RuleKind]] = [RuleKind]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            todo.append(sub)
            name = sub.__dict__.get("name")
            if isinstance(name, str):
                if name in found:
                    raise RuntimeError(f"two rule kinds named {name!r}")
                found[name] = sub()
    return found


KINDS: dict[str, RuleKind] = _discover()
# the order users read in messages ("one of growth, leak, threshold, oom"); new kinds come after
KIND_NAMES: tuple[str, ...] = tuple(
    sorted(KINDS, key=lambda n: (("growth", "leak", "threshold", "oom") + (n,)).index(n))
)


def kind_of(name: str) -> RuleKind:
    """The RuleKind for a config `kind` value (ValueError for an unknown one)."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown rule kind {name!r}") from None


__all__ = ["KINDS", "KIND_NAMES", "Judgement", "RuleKind", "kind_of"]
