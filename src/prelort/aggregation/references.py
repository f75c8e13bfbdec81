"""Reference rows of every comparison: homogeneous FedIT at the smallest or the largest rank, the
lowest- or highest-rank clients federated alone, and the frozen base (only a classifier head learns).

FedIT (Zhang et al., 2024) is FedAvg of LoRA adapters of one rank; with every client at one rank
zero-padding is exactly that average. ``fedit-min`` is what the weakest client's budget imposes
on everyone; ``fedit-max`` is the oracle every client could not afford. ``lowest-alone`` is what
the lowest-rank clients get without the others, the row PreLort's central claim is read against:
low-rank clients gain from what high-rank clients learn. ``highest-alone`` is its mirror at the top
tier: what the top-rank clients reach without the others, which says how much of the top tier the
low-rank clients supply and how much of the gap to ``fedit-max`` is the top segment's missing data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from prelort.adapters.state import AdapterState
from prelort.aggregation.base import AggregateFn, ClientUpdate
from prelort.aggregation.method import AggregationContext, FromSums, Sensitivity, uplink_numel
from prelort.aggregation.registry import register
from prelort.aggregation.zeropad import ZeroPad, aggregate_zeropad
from prelort.errors import MethodUnsupported
from prelort.training.objective import PLAIN, LocalObjective

FROZEN = LocalObjective(trains_adapter=False)


@dataclass(frozen=True)
class FedIT(ZeroPad):
    """Every client trains at one rank: the smallest (``largest=False``) or the largest."""

    largest: bool = False

    def client_ranks(self, ranks: Sequence[int]) -> list[int]:
        return [max(ranks) if self.largest else min(ranks)] * len(ranks)


@dataclass(frozen=True)
class RankAlone(ZeroPad):
    """Only the clients of the federation's lowest rank (or, ``highest=True``, its highest): FedAvg
    of their adapters. The other clients' adapters stay frozen and their updates are left out of
    every average, so the global adapter is what those clients would reach on their data alone."""

    highest: bool = False

    def alone_rank(self, ranks: Sequence[int]) -> int:
        return max(ranks) if self.highest else min(ranks)

    def rule(self, context: AggregationContext) -> AggregateFn:
        alone = self.alone_rank(context.client_ranks or context.ladder)

        def aggregate(global_state, updates: Sequence[ClientUpdate]) -> AdapterState:
            kept = [u for u in updates if u.rank == alone]
            return aggregate_zeropad(global_state, kept) if kept else dict(global_state)

        return aggregate

    def secure_rule(self) -> FromSums:
        raise MethodUnsupported(
            f"secure_aggregation: {self.name} leaves clients out by rank, which the secure sums hide"
        )

    def sensitivity(self) -> Sensitivity:
        raise MethodUnsupported(f"dp_clip: {self.name} is a reference row; run it without DP")

    def local_objective(
        self,
        rank: int,
        client_ranks: Sequence[int],
        ladder: Sequence[int],
        assigned: int | None = None,
    ) -> LocalObjective:
        return PLAIN if rank == self.alone_rank(client_ranks) else FROZEN


@dataclass(frozen=True)
class NoAdapter(ZeroPad):
    """A frozen base: only the classifier head learns (zero-shot for a causal LM)."""

    trains_adapter: bool = False
    objective: LocalObjective = FROZEN

    def downlink_numel(self, sent: Mapping[str, torch.Tensor], memory: Any) -> int:
        # the adapter stays the initial one, which every client holds: only heads travel
        return uplink_numel(sent, factors=False)

    def merge(
        self,
        updates: Sequence[ClientUpdate],
        zeros: Callable[[int], AdapterState],
        rank: int | None = None,
    ) -> AdapterState:
        raise MethodUnsupported("method: no-adapter has no adapter to merge")


register(
    FedIT("fedit-min", "homogeneous FedIT: every client at the smallest rank", group="reference"),
    FedIT(
        "fedit-max",
        "homogeneous FedIT: every client at the largest rank (oracle)",
        group="reference",
        largest=True,
    ),
    RankAlone(
        "lowest-alone",
        "reference: the lowest-rank clients federated alone (FedIT at their rank; the others "
        "left out), what PreLort's low tier is read against",
        group="reference",
    ),
    RankAlone(
        "highest-alone",
        "reference: the highest-rank clients federated alone (FedIT at their rank; the others "
        "left out), what the top tier owes the low-rank clients",
        group="reference",
        highest=True,
    ),
    NoAdapter(
        "no-adapter",
        "reference: frozen base, only the classifier head learns (zero-shot for a causal LM)",
        group="reference",
    ),
)
