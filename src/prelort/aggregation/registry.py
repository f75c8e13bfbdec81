"""The registry of federated methods by name (``prelort methods`` lists it).

Each entry pairs a rule (``build`` makes it for a run) with the method's hooks (``methods.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

import torch

from prelort.adapters.state import AdapterState
from prelort.aggregation.base import AggregateFn, ClientUpdate
from prelort.aggregation.flexlora import aggregate_flexlora
from prelort.aggregation.flora import aggregate_flora
from prelort.aggregation.hetlora import aggregate_hetlora
from prelort.aggregation.methods import (
    AggregationContext,
    FLoRA,
    HetLoRA,
    Method,
    NoAdapter,
    PrefixSteps,
    TierBalanced,
)
from prelort.aggregation.nested_svd import aggregate_nested_svd
from prelort.aggregation.ordered import aggregate_segmentwise_ordered, svd_ordered
from prelort.aggregation.prelort import aggregate_segmentwise
from prelort.aggregation.privacy import segment_sensitivity
from prelort.aggregation.secure import segmentwise_from_sums
from prelort.aggregation.zeropad import aggregate_zeropad
from prelort.errors import ConfigError


def _all_min(ranks: Sequence[int]) -> list[int]:
    return [min(ranks)] * len(ranks)


def _all_max(ranks: Sequence[int]) -> list[int]:
    return [max(ranks)] * len(ranks)


def _segmentwise(ctx: AggregationContext) -> AggregateFn:
    return partial(aggregate_segmentwise, ladder=ctx.ladder)


def _segmentwise_ordered(ctx: AggregationContext, split: str = "balanced") -> AggregateFn:
    return partial(aggregate_segmentwise_ordered, ladder=ctx.ladder, split=split)


def _ordered_from_sums(
    global_state: Mapping[str, torch.Tensor],
    total: Mapping[str, torch.Tensor],
    resolution: float,
    split: str = "balanced",
) -> AdapterState:
    # a change of basis after the division: what secure aggregation reveals is unchanged
    return svd_ordered(segmentwise_from_sums(global_state, total, resolution), split)


def _nested_svd(ctx: AggregationContext) -> AggregateFn:
    return partial(aggregate_nested_svd, scale=ctx.scale, ladder=ctx.ladder)


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


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "prelort",
            "all",
            "segment-wise aggregation + prefix-nested training (PreLort)",
            _segmentwise,
            sensitivity=segment_sensitivity,
            from_sums=segmentwise_from_sums,
        ),
        Method(
            "zeropad", "off", "zero-pad to R, example-weighted average over all clients", _zeropad
        ),
        HetLoRA(
            "hetlora",
            "off",
            "HetLoRA: zero-pad, norm-weighted average, tail self-pruning",
            _hetlora,
            sensitivity=None,
            from_sums=None,
        ),
        Method(
            "flexlora",
            "off",
            "FlexLoRA: average full updates, truncated SVD back to each rank",
            _flexlora,
            sensitivity=None,
            from_sums=None,
        ),
        FLoRA(
            "flora",
            "off",
            "FLoRA: stack adapters, merge into the base each round, fresh adapters",
            _flora,
            sensitivity=None,
            from_sums=None,
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
            sensitivity=segment_sensitivity,
            from_sums=segmentwise_from_sums,
        ),
        Method(
            "prelort-train",
            "all",
            "ablation: prefix-nested training, zero-pad aggregation",
            _zeropad,
        ),
        TierBalanced(
            "prelort-balanced",
            "all",
            "PreLort + tier-balanced nested training: truncation t's loss weighted by 1 / (clients "
            "of rank >= t)",
            _segmentwise,
            sensitivity=segment_sensitivity,
            from_sums=segmentwise_from_sums,
        ),
        PrefixSteps(
            "prelort-prefix",
            "all",
            "PreLort + prefix-scaled steps: each rank component's AdamW step scaled by the share of "
            "the step's truncations that contain it",
            _segmentwise,
            sensitivity=segment_sensitivity,
            from_sums=segmentwise_from_sums,
        ),
        Method(
            "prelort-ordered",
            "all",
            "PreLort + SVD order: segment-wise average, then each module's product re-factorised "
            "in singular-value order (same product; every prefix its best rank-r approximation)",
            _segmentwise_ordered,
            sensitivity=segment_sensitivity,
            from_sums=_ordered_from_sums,
        ),
        Method(
            "prelort-ordered-a",
            "all",
            "PreLort + SVD order, LoRA's factor convention: as prelort-ordered, but A's rows keep "
            "their RMS norm and B carries the singular values",
            partial(_segmentwise_ordered, split="fixed-a"),
            sensitivity=segment_sensitivity,
            from_sums=partial(_ordered_from_sums, split="fixed-a"),
        ),
        Method(
            "prelort-svd",
            "all",
            "PreLort + nested product averaging: prefix r approximates the average of the "
            "clients' rank-r products (segment-by-segment SVD of the residual)",
            _nested_svd,
            sensitivity=None,
            from_sums=None,
        ),
        NoAdapter(
            "no-adapter",
            "off",
            "reference: frozen base, only the classifier head learns (zero-shot for a causal LM)",
            _zeropad,
        ),
    )
}


# How `prelort methods` presents them, from the measurements in README and docs/RESULTS.md.
GROUPS: dict[str, tuple[str, ...]] = {
    "recommended (best measured: every tier of the default run, 3 seeds)": ("prelort-ordered-a",),
    "the paper's rule": ("prelort",),
    "baselines": ("zeropad", "hetlora", "flexlora", "flora"),
    "references": ("fedit-min", "fedit-max", "no-adapter"),
    "ablations": ("prelort-agg", "prelort-train"),
    "experimental (measured no better than the recommended one)": (
        "prelort-ordered",
        "prelort-prefix",
        "prelort-balanced",
        "prelort-svd",
    ),
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
