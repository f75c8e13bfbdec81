"""raFLoRA's rank-partitioned aggregation (Wu, Hu, Min and Wang, arXiv 2602.13486, 2026).

With SVD-based allocation (FlexLoRA), the server averages the clients' full updates with
rank-agnostic weights ``p_k``; a component only high-rank clients train is then divided by
everyone's weight, and over rounds the global update's energy collapses into the smallest shared
rank ("rank collapse"). raFLoRA cuts each client's update into rank partitions (the components
between consecutive ranks of the round) and averages each partition over the clients that
contribute to it, weights renormalised among them:

    dW = sum_i sum_{k: r_k > i} (n_k / sum_{j: r_j > i} n_j) * s * b_{k,i} a_{k,i}^T

then re-factorises ``dW`` by a truncated SVD to rank R as FlexLoRA does, so a client's rank-r
prefix is the best rank-r approximation (the SVD allocation). No public code was found; the rule
is written from the paper's abstract and method summary. The weights are PreLort's per-index
holder weights, applied to rank-one products instead of to A and B separately.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from prelort.adapters.state import LORA_A, LORA_B, AdapterState, lora_modules
from prelort.aggregation.base import AggregateFn, ClientUpdate, average_dense, check_updates
from prelort.aggregation.flexlora import refactorised
from prelort.aggregation.method import AggregationContext, Method
from prelort.aggregation.registry import register


def holder_weights(updates: Sequence[ClientUpdate]) -> list[torch.Tensor]:
    """Per update, the weight of each of its components: ``n_k / sum_{j holds i} n_j``.

    Returns:
        One float64 tensor of shape (r_k,) per update; each index's weights sum to one.
    """
    max_rank = max(u.rank for u in updates)
    held = torch.zeros(max_rank, dtype=torch.float64)  # examples of the holders of each index
    for u in updates:
        held[: u.rank] += float(u.num_examples)
    return [float(u.num_examples) / held[: u.rank] for u in updates]


def aggregate_components(
    global_state: Mapping[str, torch.Tensor],
    updates: Sequence[ClientUpdate],
    weights: Sequence[torch.Tensor],
    scale: float,
) -> AdapterState:
    """``sum_k sum_i weights[k][i] s b_{k,i} a_{k,i}^T`` per module, re-factorised to rank R.

    Args:
        global_state: the rank-R global adapter (gives R, keys and shapes).
        updates: the round's client updates.
        weights: per update, the weight of each component, shape (r_k,).
        scale: the LoRA scale s.

    Raises:
        AdapterError: no updates, or an update that does not fit the global adapter.
    """
    max_rank = check_updates(global_state, updates)
    out = average_dense(global_state, updates)
    for module in lora_modules(global_state):
        b_cat, a_cat = weighted_stack(updates, module, weights, scale)
        out[module + LORA_A], out[module + LORA_B] = refactorised(
            global_state[module + LORA_A], b_cat, a_cat, max_rank, scale
        )
    return out


def weighted_stack(
    updates: Sequence[ClientUpdate], module: str, weights: Sequence[torch.Tensor], scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Bcat, Acat)`` with ``Bcat @ Acat = sum_k sum_i weights[k][i] s b_{k,i} a_{k,i}^T``.

    Returns:
        Bcat (out, sum r_k) and Acat (sum r_k, in), float64.
    """
    b_cat = torch.cat(
        [
            scale * u.state[module + LORA_B].double() * w[None, :]  # (out, r_k)
            for u, w in zip(updates, weights, strict=True)
        ],
        dim=1,
    )
    a_cat = torch.cat([u.state[module + LORA_A].double() for u in updates])  # (sum r_k, in)
    return b_cat, a_cat


def aggregate_raflora(
    global_state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate], scale: float
) -> AdapterState:
    """Each rank partition of the updates averaged over its contributors, then SVD to rank R."""
    return aggregate_components(global_state, updates, holder_weights(updates), scale)


@dataclass(frozen=True)
class RaFLoRA(Method):
    """An SVD of the partition-weighted products: neither secure aggregation nor DP."""

    def rule(self, context: AggregationContext) -> AggregateFn:
        return partial(aggregate_raflora, scale=context.scale)


register(
    RaFLoRA(
        "raflora",
        "raFLoRA: each rank partition's products averaged over its contributors, truncated "
        "SVD back to each rank (against FlexLoRA's rank collapse)",
        group="peer",
    )
)
