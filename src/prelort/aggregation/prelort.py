"""PreLort's segment-wise aggregation.

The rank axis is cut into segments at the ranks in use. Each segment of A's rows and B's columns
is the example-weighted average over the clients whose rank covers it, and only those: a rank-2
client says nothing about components 2..R, so it must not pull them towards zero as zero-padding
does. A segment no participating client covers keeps its previous global value.

Per rank index this is the average over the clients holding that index, the rule of FjORD's
nested (ordered-dropout) averaging and of RBLA; the segments only group indices with equal
contributor sets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from prelort.adapters.state import LORA_A, LORA_B, AdapterState, lora_modules
from prelort.aggregation.base import ClientUpdate, average_dense, check_updates, weighted_sum
from prelort.aggregation.segments import segment_bounds


def aggregate_segmentwise(
    global_state: Mapping[str, torch.Tensor],
    updates: Sequence[ClientUpdate],
    ladder: Sequence[int] = (),
) -> AdapterState:
    """Average each rank segment over its holders; keep segments nobody holds.

    Args:
        global_state: the rank-R global adapter, A (R, in) and B (out, R) per module.
        updates: the round's client updates, each a rank-r_k prefix.
        ladder: extra cut points (the ranks in use); the updates' ranks are always cuts.

    Returns:
        The new rank-R global adapter.

    Raises:
        AdapterError: no updates, or an update that does not fit the global adapter.
    """
    max_rank = check_updates(global_state, updates)
    out = average_dense(global_state, updates)
    bounds = segment_bounds([*ladder, *(u.rank for u in updates)], max_rank)
    counts = torch.tensor([u.num_examples for u in updates], dtype=torch.float64)
    for module in lora_modules(global_state):
        key_a, key_b = module + LORA_A, module + LORA_B
        new_a = global_state[key_a].detach().clone().float()  # (R, in)
        new_b = global_state[key_b].detach().clone().float()  # (out, R)
        for lo, hi in bounds:
            holders = [k for k, u in enumerate(updates) if u.rank >= hi]
            if not holders:
                continue  # nobody trained this segment this round: keep its value
            weights = counts[holders] / counts[holders].sum()
            new_a[lo:hi] = weighted_sum([updates[k].state[key_a][lo:hi] for k in holders], weights)
            new_b[:, lo:hi] = weighted_sum(
                [updates[k].state[key_b][:, lo:hi] for k in holders], weights
            )
        out[key_a], out[key_b] = new_a, new_b
    return out
