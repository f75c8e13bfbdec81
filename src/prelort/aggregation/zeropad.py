"""Zero-padding aggregation: pad every adapter to R with zeros, then average over all clients.

This is HetLoRA's aggregation rule without its sparsity weights and self-pruning. Components held
by few clients are diluted by the zeros of all the others, and components that no client of the
round holds are reset to zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from prelort.adapters.state import AdapterState, pad_to_rank
from prelort.aggregation.base import ClientUpdate, check_updates, example_weights, weighted_sum


def aggregate_zeropad(
    global_state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]
) -> AdapterState:
    """Example-weighted average of the zero-padded client adapters (and of the dense head).

    Raises:
        AdapterError: no updates, or an update that does not fit the global adapter.
    """
    max_rank = check_updates(global_state, updates)
    padded = [pad_to_rank(u.state, max_rank) for u in updates]
    weights = example_weights(updates)
    return {key: weighted_sum([p[key] for p in padded], weights) for key in global_state}
