"""The registry of federated methods by name (``prelort methods`` lists it).

Each method module registers its methods when it is imported; ``methods()`` imports every module
of ``prelort.aggregation`` once, so a new module is found without being listed anywhere.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping, Sequence

import torch

from prelort.adapters.state import AdapterState
from prelort.aggregation.base import ClientUpdate
from prelort.aggregation.method import AggregationContext, Method
from prelort.errors import ConfigError

# How `prelort methods` presents them, in this order, from the measurements in README and
# docs/RESULTS.md. A method names its group.
GROUPS: dict[str, str] = {
    "recommended": "recommended, the default (ahead of or tied with prelort-ordered-u, the default "
    "before it, at every tier on headline writing, R8, BBC label writing and BBC News, 3 seeds; "
    "docs/RESULTS.md sections 28, 29)",
    "paper": "the paper's rule",
    "baseline": "baselines",
    "peer": "nearest peers (rank-wise aggregation rules of 2025-2026)",
    "reference": "references",
    "ablation": "ablations",
    "candidate": "candidates (each measured ahead of the recommended one on one task so far; "
    "docs/RESULTS.md section 12)",
    "experimental": "experimental (measured no better than the recommended one)",
    "trial": "trials (running; not yet measured against the recommended one)",
}

_REGISTERED: dict[str, Method] = {}
_LOADED = False


def register(*methods: Method) -> None:
    """Add methods to the registry (a method module calls this last).

    Raises:
        ValueError: a name registered twice, or a group not in ``GROUPS``.
    """
    for method in methods:
        if method.name in _REGISTERED and _REGISTERED[method.name] != method:
            raise ValueError(f"method {method.name!r} is registered twice")
        if method.group not in GROUPS:
            raise ValueError(f"method {method.name!r}: unknown group {method.group!r}")
        _REGISTERED[method.name] = method


def methods() -> dict[str, Method]:
    """Every registered method by name, grouped in ``GROUPS`` order."""
    global _LOADED
    if not _LOADED:
        package = importlib.import_module("prelort.aggregation")
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"prelort.aggregation.{info.name}")
        _LOADED = True
    order = list(GROUPS)
    ranked = sorted(_REGISTERED.values(), key=lambda m: order.index(m.group))
    return {m.name: m for m in ranked}


def get_method(name: str) -> Method:
    """Look a method up by name.

    Raises:
        ConfigError: an unknown name; the message lists the valid ones.
    """
    known = methods()
    try:
        return known[name]
    except KeyError:
        raise ConfigError(
            f"method: unknown method {name!r}; choose one of {', '.join(known)}"
        ) from None


def aggregate(
    method: str,
    global_state: Mapping[str, torch.Tensor],
    updates: Sequence[ClientUpdate],
    context: AggregationContext,
) -> AdapterState:
    """Aggregate with the named method's rule."""
    return get_method(method).rule(context)(global_state, updates)
