"""Zero-padding aggregation: pad every adapter to R with zeros, then average over all clients.

This is HetLoRA's aggregation rule without its sparsity weights and self-pruning. Components held
by few clients are diluted by the zeros of all the others, and components that no client of the
round holds are reset to zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from prelort.adapters.state import AdapterState
from prelort.aggregation.base import (
    AggregateFn,
    ClientUpdate,
    average_dense,
    check_updates,
    example_weights,
    prefix_sums,
)
from prelort.aggregation.method import AggregationContext, FromSums, Method, Sensitivity
from prelort.aggregation.privacy import average_sensitivity
from prelort.aggregation.registry import register
from prelort.aggregation.secure import zeropad_from_sums


def aggregate_zeropad(
    global_state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]
) -> AdapterState:
    """Example-weighted average of the zero-padded client adapters (and of the dense head).

    Raises:
        AdapterError: no updates, or an update that does not fit the global adapter.
    """
    check_updates(global_state, updates)
    return zero_padded_average(global_state, updates, example_weights(updates))


def zero_padded_average(
    global_state: Mapping[str, torch.Tensor],
    updates: Sequence[ClientUpdate],
    weights: torch.Tensor,
) -> AdapterState:
    """``sum_k w_k pad(A_k)`` and ``sum_k w_k pad(B_k)`` per module; heads over their holders."""
    out = average_dense(global_state, updates, weights)
    sums, _ = prefix_sums(global_state, updates, weights)  # padding zeros add nothing to a sum
    out.update(sums)
    return out


@dataclass(frozen=True)
class ZeroPad(Method):
    """Zero-padding: a weighted average, so it runs under secure aggregation and DP."""

    def rule(self, context: AggregationContext) -> AggregateFn:
        return aggregate_zeropad

    def secure_rule(self) -> FromSums:
        return zeropad_from_sums

    def sensitivity(self) -> Sensitivity:
        return average_sensitivity


register(
    ZeroPad("zeropad", "zero-pad to R, example-weighted average over all clients", group="baseline")
)
