"""Window training: a low-rank client trains a window of the nested adapter above a frozen prefix.

Under prefix-nested training the components above rank r learn only from the clients of rank
above r: on headline writing (docs/RESULTS.md section 25) the top segment of a 2 / 4 / 8 federation
learns from two clients of six, and the top tier falls further behind FedIT at rank 8 the longer
the runs go. Here a client of rank b still trains b components a round, but not always the first
b: round after round its window moves up the rank axis, ``[0, b)``, ``[b, 2b)``, ... up to R and
back, and the components below the window are sent to it as a frozen prefix. So every component
learns from every client in turn, and a truncation at rank ``e`` is trained as a whole (the
window's components in the context of the prefix it extends), as prefix-nested training trains it.

The aggregate is PreLort's per-index average over the clients that trained each index (the window,
not the frozen prefix), re-factorised in singular-value order as ``prelort-ordered-u`` does, so the
window a client trains next is the weakest directions of the current adapter.

What a window costs: a client whose window ends at ``e`` receives, holds and sends the rank-``e``
prefix (the frozen part travels both ways, and its step is computed, then undone), so its
traffic and adapter memory in that round are those of a rank-``e`` client; what it trains is
``b`` components.

Measured (docs/RESULTS.md section 26): switched on at round 48 of a 2 / 4 / 8 headline federation,
its rank 8 is 0.032 nats per token behind ``prelort-ordered-u``'s at round 60 (3 seeds), so further
behind FedIT at rank 8, not closer: spreading the same trainable budget evenly over the rank axis
costs the prefix more than it gives the top segment. Kept as an experimental method, for the
record and for federations whose budgets differ.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch

from prelort.adapters.state import AdapterState
from prelort.aggregation.base import AggregateFn, ClientUpdate
from prelort.aggregation.method import AggregationContext, FromSums, Method, Sensitivity
from prelort.aggregation.ordered import Ordered, svd_ordered
from prelort.aggregation.prelort import aggregate_segmentwise
from prelort.aggregation.registry import register
from prelort.errors import AdapterError
from prelort.training.objective import PLAIN, LocalObjective

if TYPE_CHECKING:
    from prelort.adapters.inject import NestedLoRAModel


def window_ends(assigned: int, max_rank: int) -> list[int]:
    """The ends of a rank-``assigned`` client's windows in the order it trains them: ``b, 2b, ...``
    up to R (a budget that does not divide R leaves the last ``R mod b`` components to others)."""
    return list(range(assigned, max_rank + 1, assigned))


def window_starts(updates: Sequence[ClientUpdate], assigned: Sequence[int]) -> list[int]:
    """Each update's first trained index: its rank minus its client's assigned rank; with no
    assigned ranks (``prelort aggregate`` merging finished adapters) every update is a prefix.

    Raises:
        AdapterError: an update from a client with no assigned rank, or of a rank its windows
            never end at.
    """
    if not assigned:
        return [0] * len(updates)
    starts = []
    for u in updates:
        if not 0 <= u.client_id < len(assigned):
            raise AdapterError(f"client {u.client_id}: no assigned rank, so no window")
        budget = assigned[u.client_id]
        if u.rank < budget or u.rank % budget:
            raise AdapterError(
                f"client {u.client_id}: rank {u.rank} is not the end of a window of its "
                f"assigned rank {budget}"
            )
        starts.append(u.rank - budget)
    return starts


def aggregate_windows(
    global_state: Mapping[str, torch.Tensor],
    updates: Sequence[ClientUpdate],
    assigned: Sequence[int],
    split: str = "unit-a",
) -> AdapterState:
    """Average each rank index over the clients whose window held it, keep the indices nobody
    trained, then re-factorise in singular-value order (``svd_ordered``).

    Args:
        global_state: the rank-R global adapter.
        updates: the round's updates, each the rank-``e`` prefix of a window ending at ``e``.
        assigned: every client's assigned rank, by client id (the window's width).
        split: ``svd_ordered``'s factor convention.

    Raises:
        AdapterError: no updates, an update that does not fit, or one that is no window.
    """
    starts = window_starts(updates, assigned)  # aggregate_segmentwise checks the updates' fit
    return svd_ordered(aggregate_segmentwise(global_state, updates, starts=starts), split)


@dataclass(frozen=True)
class FrozenPrefixObjective(LocalObjective):
    """Train only the components at and above ``start``: the truncations above it, and after each
    optimizer step the prefix put back (AdamW's weight decay would move it otherwise)."""

    start: int = 0

    def truncation_ladder(self, ladder: Sequence[int]) -> Sequence[int]:
        return [r for r in ladder if r > self.start]

    @contextmanager
    def stepping(self, adapted: NestedLoRAModel, ranks: Sequence[int], rank: int) -> Iterator[None]:
        layers = list(adapted.layers.values())
        kept = [
            (
                layer.lora_a[: self.start].detach().clone(),
                layer.lora_b[:, : self.start].detach().clone(),
            )
            for layer in layers
        ]
        yield
        with torch.no_grad():
            for layer, (a0, b0) in zip(layers, kept, strict=True):
                layer.lora_a[: self.start].copy_(a0)  # (start, in)
                layer.lora_b[:, : self.start].copy_(b0)  # (out, start)


@dataclass(frozen=True)
class Windows(Ordered):
    """Clients train moving windows of their assigned width; aggregation by index over the
    window's holders, then SVD order. The windows' holders are not prefixes, so neither secure
    aggregation's prefix shares nor PreLort's DP sensitivity apply."""

    def rule(self, context: AggregationContext) -> AggregateFn:
        return partial(aggregate_windows, assigned=context.client_ranks, split=self.split)

    def secure_rule(self) -> FromSums:
        return Method.secure_rule(self)

    def sensitivity(self) -> Sensitivity:
        return Method.sensitivity(self)

    def allowed_ranks(self, ladder: Sequence[int], ranks: Sequence[int]) -> set[int] | None:
        return {end for budget in set(ranks) for end in window_ends(budget, max(ladder))}

    def next_rank(
        self, rank: int, tail_ratio: float, ladder: Sequence[int], assigned: int | None = None
    ) -> int:
        if assigned is None:
            return rank
        ends = window_ends(assigned, max(ladder))
        return ends[(ends.index(rank) + 1) % len(ends)] if rank in ends else assigned

    def local_objective(
        self,
        rank: int,
        client_ranks: Sequence[int],
        ladder: Sequence[int],
        assigned: int | None = None,
    ) -> LocalObjective:
        if assigned is None or rank <= assigned:
            return PLAIN
        return FrozenPrefixObjective(start=rank - assigned)


register(
    Windows(
        "prelort-window",
        "prelort-ordered-u whose clients train a window of their rank's width that moves up the "
        "rank axis round by round above a frozen prefix, so the top components learn from every "
        "client; measured behind prelort-ordered-u at ranks 4 and 8 on headlines (docs/RESULTS.md "
        "section 26)",
        group="experimental",
        nested="all",
        split="unit-a",
    )
)
