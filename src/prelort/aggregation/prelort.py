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
from prelort.aggregation.base import (
    ClientUpdate,
    average_dense,
    check_updates,
    example_weights,
    prefix_sums,
)


def aggregate_segmentwise(
    global_state: Mapping[str, torch.Tensor],
    updates: Sequence[ClientUpdate],
    ladder: Sequence[int] = (),
) -> AdapterState:
    """Average each rank segment over its holders; keep segments nobody holds.

    Computed per rank index in one pass over the uploads: the example-weighted sums of the
    zero-padded prefixes divided, index by index, by the examples of the clients holding that
    index. Indices with the same holders form a segment, so this is the segment-wise average.

    Args:
        global_state: the rank-R global adapter, A (R, in) and B (out, R) per module.
        updates: the round's client updates, each a rank-r_k prefix.
        ladder: the ranks in use; they cut the segments of the diagnostics but cannot change
            the average (a cut between indices with the same holders splits nothing).

    Returns:
        The new rank-R global adapter.

    Raises:
        AdapterError: no updates, or an update that does not fit the global adapter.
    """
    check_updates(global_state, updates)
    out = average_dense(global_state, updates)
    sums, held = prefix_sums(global_state, updates, example_weights(updates))
    for module in lora_modules(global_state):
        key_a, key_b = module + LORA_A, module + LORA_B
        out[key_a], out[key_b] = divided_by_holders(
            global_state[key_a], global_state[key_b], sums[key_a], sums[key_b], held
        )
    return out


def divided_by_holders(
    global_a: torch.Tensor,
    global_b: torch.Tensor,
    sum_a: torch.Tensor,
    sum_b: torch.Tensor,
    held: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per rank index, the weighted sum over its holders divided by their weight; kept where none.

    Args:
        global_a, global_b: the module's global A (R, in) and B (out, R).
        sum_a, sum_b: the holders' weighted sums, zero-padded to R (same shapes).
        held: (R,) the total weight of the holders of each index.

    Returns:
        The new A and B (float32).
    """
    held = held.to(sum_a.device)  # the weights come from the CPU; the sums may be on a GPU
    covered = held > 0  # (R,) indices some update holds
    inverse = torch.where(covered, 1 / held.clamp_min(1e-300), 0.0)  # (R,)
    new_a = (sum_a * inverse[:, None].to(sum_a.dtype)).float()  # (R, in)
    new_b = (sum_b * inverse[None, :].to(sum_b.dtype)).float()  # (out, R)
    if not covered.all():  # nobody trained these indices this round: keep their value
        new_a[~covered] = global_a[~covered].float()
        new_b[:, ~covered] = global_b[:, ~covered].float()
    return new_a, new_b
