"""HetLoRA (Cho et al., 2024): zero-padding with sparsity-weighted aggregation and self-pruning.

Aggregation: every client adapter is zero-padded to R and averaged with weights proportional to
the Frobenius norm of its full update, ``w_k ∝ ||s B_k A_k||_F`` summed over modules, so clients
whose adapters carry more signal count more (example counts are not used, as in the paper).

Distribution is by truncation: a rank-r client receives the rank-r prefix.

Local rank self-pruning lives in the method's hooks (``HetLoRA`` and ``TailPenalty`` below):
each client adds ``gamma * ||s B_tail A_tail||_F`` for its last ``ceil(r / 4)`` components to its
loss, and after the round, if that tail norm is below ``threshold`` times the whole adapter's norm, the client
drops those components for the rest of the run (never below the smallest ladder rank).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch

from prelort.adapters.norms import update_norm
from prelort.adapters.state import AdapterState
from prelort.aggregation.base import AggregateFn, ClientUpdate, check_updates
from prelort.aggregation.method import AggregationContext, Method
from prelort.aggregation.registry import register
from prelort.aggregation.zeropad import zero_padded_average
from prelort.training.objective import LocalObjective, tail_norms

if TYPE_CHECKING:
    from prelort.adapters.inject import NestedLoRAModel

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


@dataclass(frozen=True)
class TailPenalty(LocalObjective):
    """The task loss plus ``gamma * ||s B_tail A_tail||_F`` of the last ``tail`` components; the
    client reports that tail's share of its update's norm."""

    gamma: float = HETLORA_GAMMA
    tail: int = 1

    def penalty(self, adapted: NestedLoRAModel, rank: int) -> torch.Tensor:
        return self.gamma * tail_norms(adapted, rank, self.tail)[0]

    def tail_ratio(self, adapted: NestedLoRAModel, rank: int) -> float:
        with torch.no_grad():
            tail, whole = tail_norms(adapted, rank, self.tail)
        return float(tail / whole) if whole > 0 else 0.0


@dataclass(frozen=True)
class HetLoRA(Method):
    """Clients regularise their tail and drop it for good once it carries little of the update.

    Norm weights depend on each update, not only on its examples, so the rule is neither a
    weighted sum of shares (no secure aggregation) nor bounded by an example weight (no DP).
    """

    def rule(self, context: AggregationContext) -> AggregateFn:
        return partial(aggregate_hetlora, scale=context.scale)

    def local_objective(
        self,
        rank: int,
        client_ranks: Sequence[int],
        ladder: Sequence[int],
        assigned: int | None = None,
    ) -> LocalObjective:
        return TailPenalty(tail=tail_size(rank))

    def allowed_ranks(self, ladder: Sequence[int], ranks: Sequence[int]) -> set[int] | None:
        return None  # pruned ranks fall between the rungs

    def next_rank(
        self, rank: int, tail_ratio: float, ladder: Sequence[int], assigned: int | None = None
    ) -> int:
        if tail_ratio < HETLORA_THRESHOLD:
            return max(min(ladder), rank - tail_size(rank))
        return rank


register(
    HetLoRA(
        "hetlora", "HetLoRA: zero-pad, norm-weighted average, tail self-pruning", group="baseline"
    )
)
