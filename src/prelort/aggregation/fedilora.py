"""FediLoRA's dimension-wise aggregation (Yang et al., IJCAI 2026, arXiv 2509.06984; code
``gotobcn8/FediLoRA``, read for the rule, nothing copied).

Each rank level (the rows of A and columns of B between two consecutive ranks of the round) is
the example-weighted average over the round's clients that hold it, with the weights
renormalised per level. That is PreLort's segment-wise rule with one difference: a level that no
client of the round holds is zero-padded, i.e. reset to zero, where PreLort keeps its last value.
With every index covered by some client of the round (full participation, or a sampled client
of rank R) the two rules give the same adapter; under partial participation FediLoRA forgets
what absent high-rank clients trained. Clients train plain LoRA (no nested truncations).

FediLoRA's second part, layer-wise model editing for clients with missing modalities, has no
counterpart in a text-only federation and is not implemented.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from prelort.adapters.state import AdapterState, is_lora_key
from prelort.aggregation.base import AggregateFn, ClientUpdate
from prelort.aggregation.method import AggregationContext, FromSums, Method, Sensitivity
from prelort.aggregation.prelort import aggregate_segmentwise
from prelort.aggregation.privacy import segment_sensitivity
from prelort.aggregation.registry import register
from prelort.aggregation.secure import segmentwise_from_sums


def aggregate_fedilora(
    global_state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]
) -> AdapterState:
    """Per rank index, the example-weighted average over the updates holding it; zero if none.

    PreLort's segment-wise rule from a global adapter whose factors are zero: what it keeps for
    an index nobody holds is then FediLoRA's zero padding.

    Args:
        global_state: the rank-R global adapter, A (R, in) and B (out, R) per module.
        updates: the round's client updates, each a rank-r_k prefix.

    Returns:
        The new rank-R global adapter (heads averaged over their holders).

    Raises:
        AdapterError: no updates, or an update that does not fit the global adapter.
    """
    return aggregate_segmentwise(zeroed_factors(global_state), updates)


def fedilora_from_sums(
    global_state: Mapping[str, torch.Tensor],
    total: Mapping[str, torch.Tensor],
    resolution: float = 0.0,
) -> AdapterState:
    """FediLoRA's rule from the summed secure shares: PreLort's division, unheld levels zero."""
    return segmentwise_from_sums(zeroed_factors(global_state), total, resolution)


def zeroed_factors(state: Mapping[str, torch.Tensor]) -> AdapterState:
    """``state`` with every LoRA factor zero (heads unchanged)."""
    return {k: torch.zeros_like(v) if is_lora_key(k) else v for k, v in state.items()}


@dataclass(frozen=True)
class FediLoRA(Method):
    """Dimension-wise averages: weighted sums per level, so secure aggregation and DP apply."""

    def rule(self, context: AggregationContext) -> AggregateFn:
        return aggregate_fedilora

    def secure_rule(self) -> FromSums:
        return fedilora_from_sums

    def sensitivity(self) -> Sensitivity:
        return segment_sensitivity


register(
    FediLoRA(
        "fedilora",
        "FediLoRA: each rank level averaged over its holders (weights renormalised per level); "
        "levels nobody of the round holds reset to zero",
        group="peer",
    )
)
