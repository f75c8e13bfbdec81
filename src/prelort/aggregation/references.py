"""Reference rows of every comparison: homogeneous FedIT at the smallest or the largest rank, and
the frozen base (only a classifier head learns).

FedIT (Zhang et al., 2024) is FedAvg of LoRA adapters of one rank; with every client at one rank
zero-padding is exactly that average. ``fedit-min`` is what the weakest client's budget imposes
on everyone; ``fedit-max`` is the oracle every client could not afford.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prelort.adapters.state import AdapterState
from prelort.aggregation.base import ClientUpdate
from prelort.aggregation.registry import register
from prelort.aggregation.zeropad import ZeroPad
from prelort.errors import MethodUnsupported
from prelort.training.objective import LocalObjective

FROZEN = LocalObjective(trains_adapter=False)


@dataclass(frozen=True)
class FedIT(ZeroPad):
    """Every client trains at one rank: the smallest (``largest=False``) or the largest."""

    largest: bool = False

    def client_ranks(self, ranks: Sequence[int]) -> list[int]:
        return [max(ranks) if self.largest else min(ranks)] * len(ranks)


@dataclass(frozen=True)
class NoAdapter(ZeroPad):
    """A frozen base: only the classifier head learns (zero-shot for a causal LM)."""

    trains_adapter: bool = False

    def local_objective(
        self, rank: int, client_ranks: Sequence[int], ladder: Sequence[int]
    ) -> LocalObjective:
        return FROZEN

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
    NoAdapter(
        "no-adapter",
        "reference: frozen base, only the classifier head learns (zero-shot for a causal LM)",
        group="reference",
    ),
)
