"""Federated methods, one aggregation module each, found by name in ``METHODS``.

A method pairs an aggregation rule with how its clients train: PreLort is segment-wise aggregation
*and* prefix-nested training; HetLoRA adds a tail regulariser and self-pruning; the FedIT
baselines put every client at one rank; FLoRA merges each round into the base.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from prelort.adapters.state import AdapterState
from prelort.aggregation.base import AggregateFn, ClientUpdate
from prelort.aggregation.flexlora import aggregate_flexlora
from prelort.aggregation.flora import aggregate_flora
from prelort.aggregation.hetlora import aggregate_hetlora
from prelort.aggregation.prelort import aggregate_segmentwise
from prelort.aggregation.zeropad import aggregate_zeropad
from prelort.errors import ConfigError


@dataclass(frozen=True)
class AggregationContext:
    """What a rule may need beyond the updates: the ranks in use, the LoRA scale, the fresh adapter."""

    ladder: tuple[int, ...]
    scale: float
    fresh_state: Mapping[str, torch.Tensor] | None = None


def _segmentwise(ctx: AggregationContext) -> AggregateFn:
    return partial(aggregate_segmentwise, ladder=ctx.ladder)


def _zeropad(ctx: AggregationContext) -> AggregateFn:
    return aggregate_zeropad


def _hetlora(ctx: AggregationContext) -> AggregateFn:
    return partial(aggregate_hetlora, scale=ctx.scale)


def _flexlora(ctx: AggregationContext) -> AggregateFn:
    return partial(aggregate_flexlora, scale=ctx.scale)


def _flora(ctx: AggregationContext) -> AggregateFn:
    if ctx.fresh_state is None:
        raise ValueError("flora needs the fresh adapter state")
    return partial(aggregate_flora, scale=ctx.scale, fresh_state=ctx.fresh_state)


def _same_ranks(ranks: Sequence[int]) -> list[int]:
    return list(ranks)


def _all_min(ranks: Sequence[int]) -> list[int]:
    return [min(ranks)] * len(ranks)


def _all_max(ranks: Sequence[int]) -> list[int]:
    return [max(ranks)] * len(ranks)


@dataclass(frozen=True)
class Method:
    """A federated method.

    Attributes:
        name: the name used on the command line.
        nested: the default prefix-nested training mode ("all", "sample" or "off").
        description: one line for ``prelort methods`` and the docs.
        build: makes the aggregation rule for a run.
        client_ranks: maps the assigned client ranks to the ranks the method trains at.
        self_prune: clients regularise and may prune their tail components (HetLoRA).
        merges: the server merges each round into the base and clients restart (FLoRA).
        head: the default classifier head, "per-tier" or "shared" (measured: docs/RESULTS.md).
        trains_adapter: False for the no-adapter reference (only the head learns).
        balance_tiers: weight each truncation's loss by 1 / (clients that train it), so every tier
            counts equally over the federation (``prelort-balanced``).
    """

    name: str
    nested: str
    description: str
    build: Callable[[AggregationContext], AggregateFn]
    client_ranks: Callable[[Sequence[int]], list[int]] = _same_ranks
    self_prune: bool = False
    merges: bool = False
    head: str = "shared"
    trains_adapter: bool = True
    balance_tiers: bool = False

    def aggregator(self, context: AggregationContext) -> AggregateFn:
        return self.build(context)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "prelort",
            "all",
            "segment-wise aggregation + prefix-nested training (PreLort)",
            _segmentwise,
        ),
        Method(
            "zeropad", "off", "zero-pad to R, example-weighted average over all clients", _zeropad
        ),
        Method(
            "hetlora",
            "off",
            "HetLoRA: zero-pad, norm-weighted average, tail self-pruning",
            _hetlora,
            self_prune=True,
        ),
        Method(
            "flexlora",
            "off",
            "FlexLoRA: average full updates, truncated SVD back to each rank",
            _flexlora,
        ),
        Method(
            "flora",
            "off",
            "FLoRA: stack adapters, merge into the base each round, fresh adapters",
            _flora,
            merges=True,
        ),
        Method(
            "fedit-min",
            "off",
            "homogeneous FedIT: every client at the smallest rank",
            _zeropad,
            client_ranks=_all_min,
        ),
        Method(
            "fedit-max",
            "off",
            "homogeneous FedIT: every client at the largest rank (oracle)",
            _zeropad,
            client_ranks=_all_max,
        ),
        Method(
            "prelort-agg",
            "off",
            "ablation: segment-wise aggregation, plain LoRA training",
            _segmentwise,
        ),
        Method(
            "prelort-train",
            "all",
            "ablation: prefix-nested training, zero-pad aggregation",
            _zeropad,
        ),
        Method(
            "prelort-balanced",
            "all",
            "PreLort + tier-balanced nested training: truncation t's loss weighted by 1 / (clients "
            "of rank >= t)",
            _segmentwise,
            balance_tiers=True,
        ),
        Method(
            "no-adapter",
            "off",
            "reference: frozen base, only the classifier head learns (zero-shot for a causal LM)",
            _zeropad,
            trains_adapter=False,
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
    context: AggregationContext,
) -> AdapterState:
    """Aggregate with the named method's rule."""
    return get_method(method).aggregator(context)(global_state, updates)


__all__ = [
    "METHODS",
    "AggregateFn",
    "AggregationContext",
    "ClientUpdate",
    "Method",
    "aggregate",
    "aggregate_flexlora",
    "aggregate_flora",
    "aggregate_hetlora",
    "aggregate_segmentwise",
    "aggregate_zeropad",
    "get_method",
]
