"""HetLoRA (Cho et al., 2024): zero-padding with sparsity-weighted aggregation and self-pruning.

Aggregation: every client adapter is zero-padded to R and averaged with weights proportional to
the Frobenius norm of its full update, ``w_k ∝ ||s B_k A_k||_F`` summed over modules, so clients
whose adapters carry more signal count more (example counts are not used, as in the paper).

Distribution is by truncation: a rank-r client receives the rank-r prefix.

Local rank self-pruning lives in training (``prelort.training.local``): each client adds
``gamma * ||s B_tail A_tail||_F`` for its last ``ceil(r / 4)`` components to its loss, and after
the round, if that tail norm is below ``threshold`` times the whole adapter's norm, the client
drops those components for the rest of the run (never below the smallest ladder rank).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from prelort.adapters.state import LORA_A, LORA_B, AdapterState, lora_modules, pad_to_rank
from prelort.aggregation.base import ClientUpdate, check_updates, weighted_sum

HETLORA_GAMMA = 1e-3  # weight of the tail-norm regulariser
HETLORA_THRESHOLD = 0.05  # prune the tail when its norm is below this fraction of the adapter's


def product_gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(B^T B) * (A A^T)`` elementwise, (r, r): its sum is ``||B A||_F^2`` without forming B A.

    A sub-block ``[i:j, i:j]`` sums to the squared norm of components i..j alone.
    """
    return (b.T @ b) * (a @ a.T)  # (r, out) @ (out, r) * (r, in) @ (in, r)


def update_norm(state: Mapping[str, torch.Tensor], scale: float) -> float:
    """``sqrt(sum_modules ||s B A||_F^2)``, computed from the small r x r Gram matrices."""
    total = 0.0
    for module in lora_modules(state):
        a, b = state[module + LORA_A].double(), state[module + LORA_B].double()
        total += float(product_gram(a, b).sum()) * scale**2
    return max(total, 0.0) ** 0.5


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
    max_rank = check_updates(global_state, updates)
    norms = torch.tensor([update_norm(u.state, scale) for u in updates], dtype=torch.float64)
    weights = norms / norms.sum() if norms.sum() > 0 else torch.full_like(norms, 1 / len(norms))
    padded = [pad_to_rank(u.state, max_rank) for u in updates]
    return {key: weighted_sum([p[key] for p in padded], weights) for key in global_state}


def tail_size(rank: int) -> int:
    """How many trailing components HetLoRA regularises and may prune at ``rank``."""
    return max(1, -(-rank // 4))


__all__ = [
    "HETLORA_GAMMA",
    "HETLORA_THRESHOLD",
    "aggregate_hetlora",
    "product_gram",
    "tail_size",
    "update_norm",
]
