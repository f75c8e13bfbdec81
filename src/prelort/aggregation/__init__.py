"""Aggregation rules, one module each, found by name in ``METHODS``.

A method pairs an aggregation rule with the local training mode it is defined with: PreLort is
segment-wise aggregation *and* prefix-nested training; zero-padding trains plain LoRA.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from prelort.adapters.state import AdapterState
from prelort.aggregation.base import AggregateFn, ClientUpdate
from prelort.aggregation.prelort import aggregate_segmentwise
from prelort.aggregation.zeropad import aggregate_zeropad
from prelort.errors import ConfigError


@dataclass(frozen=True)
class Method:
    """A federated method: how the server aggregates and how clients train.

    Attributes:
        name: the name used on the command line.
        nested: the default prefix-nested training mode ("all", "sample" or "off").
        description: one line for ``prelort methods`` and the docs.
        build: makes the aggregation rule for a run whose ranks in use are the given ladder.
    """

    name: str
    nested: str
    description: str
    build: Callable[[tuple[int, ...]], AggregateFn]

    def aggregator(self, ladder: Sequence[int]) -> AggregateFn:
        """The aggregation function for a run whose ranks in use are ``ladder``."""
        return self.build(tuple(ladder))


def _segmentwise(ladder: tuple[int, ...]) -> AggregateFn:
    return partial(aggregate_segmentwise, ladder=ladder)


def _zeropad(ladder: tuple[int, ...]) -> AggregateFn:
    return aggregate_zeropad


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "prelort",
            "all",
            "segment-wise aggregation + prefix-nested training (PreLort)",
            _segmentwise,
        ),
        Method("zeropad", "off", "zero-pad to R, average over all clients", _zeropad),
        Method(
            "prelort-agg", "off", "ablation: segment-wise aggregation, plain LoRA", _segmentwise
        ),
        Method(
            "prelort-train",
            "all",
            "ablation: prefix-nested training, zero-pad aggregation",
            _zeropad,
        ),
    )
}


def get_method(name: str) -> Method:
    """Look a method up by name.

    Raises:
        ConfigError: an unknown name; the message lists the valid ones.
    """
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(
            f"method: unknown method {name!r}; choose one of {', '.join(METHODS)}"
        ) from None


def aggregate(
    method: str,
    global_state: Mapping[str, torch.Tensor],
    updates: Sequence[ClientUpdate],
    ladder: Sequence[int] = (),
) -> AdapterState:
    """Aggregate with the named method's rule."""
    return get_method(method).aggregator(ladder)(global_state, updates)


__all__ = [
    "METHODS",
    "AggregateFn",
    "ClientUpdate",
    "Method",
    "aggregate",
    "aggregate_segmentwise",
    "aggregate_zeropad",
    "get_method",
]
