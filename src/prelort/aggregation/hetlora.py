"""HetLoRA (Cho et al., 2024): zero-padding with sparsity-weighted aggregation and self-pruning.

Aggregation: every client adapter is zero-padded to R and averaged with weights proportional to
the Frobenius norm of its full update, ``w_k ∝ ||s B_k A_k||_F`` summed over modules, so clients
whose adapters carry more signal count more (example counts are not used, as in the paper).

Distribution is by truncation: a rank-r client receives the rank-r prefix.

Local rank self-pruning lives in the method's hooks (``prelort.aggregation.methods.HetLoRA``):
each client adds ``gamma * ||s B_tail A_tail||_F`` for its last ``ceil(r / 4)`` components to its
loss, and after the round, if that tail norm is below ``threshold`` times the whole adapter's norm, the client
drops those components for the rest of the run (never below the smallest ladder rank).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from prelort.adapters.norms import update_norm
from prelort.adapters.state import AdapterState
from prelort.aggregation.base import ClientUpdate, check_updates
from prelort.aggregation.zeropad import zero_padded_average

HETLORA_GAMMA = 1e-3  # weight of the tail-norm regulariser
HETLORA_THRESHOLD = 0.05  # prune the tail when its norm is below this fraction of the adapter's


def aggregate_hetlora(
    global_state: Mapping[str, torch.Tensor],
    updates: Sequence[ClientUpdate],
    scale: float,
) -> AdapterState:
    """Zero-padded average with weights proportional to each update's norm.

    Falls back to equal weights when every update is zero (nothing trained yet).

    Raises:
        AdapterError: no updates, or an update that does not fit the global adapter.
    """
    check_updates(global_state, updates)
    norms = torch.tensor([update_norm(u.state, scale) for u in updates], dtype=torch.float64)
    weights = norms / norms.sum() if norms.sum() > 0 else torch.full_like(norms, 1 / len(norms))
    return zero_padded_average(global_state, updates, weights)


def tail_size(rank: int) -> int:
    """How many trailing components HetLoRA regularises and may prune at ``rank``."""
    return max(1, -(-rank // 4))


__all__ = [
    "HETLORA_GAMMA",
    "HETLORA_THRESHOLD",
    "aggregate_hetlora",
    "tail_size",
]
