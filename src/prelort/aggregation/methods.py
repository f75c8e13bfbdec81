"""Federated methods: an aggregation rule plus the hooks by which a method changes a round.

A method pairs its rule with how its clients train and what the server keeps between rounds:
PreLort is segment-wise aggregation *and* prefix-nested training; HetLoRA adds a tail regulariser
and self-pruning; the FedIT baselines put every client at one rank; FLoRA merges each round into
the base. The plain behaviour is on ``Method``; a method that differs overrides a hook (as PEFT's
LoRA variants do), so the round itself never tests a method's name or flags.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from prelort.adapters.state import LORA_A, LORA_B, MERGED, AdapterState, is_lora_key, lora_modules
from prelort.aggregation.base import AggregateFn, ClientUpdate
from prelort.aggregation.hetlora import HETLORA_GAMMA, HETLORA_THRESHOLD, tail_size
from prelort.aggregation.privacy import average_sensitivity
from prelort.aggregation.secure import zeropad_from_sums

FromSums = Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor], float], AdapterState]


@dataclass(frozen=True)
class AggregationContext:
    """What a rule may need beyond the updates: the ranks in use, the LoRA scale, the fresh adapter."""

    ladder: tuple[int, ...]
    scale: float
    fresh_state: Mapping[str, torch.Tensor] | None = None


def uplink_numel(state: Mapping[str, torch.Tensor]) -> int:
    """Numbers a client sends: its factors and head (a merged base term is never sent up)."""
    return sum(v.numel() for k, v in state.items() if not k.endswith(MERGED))


def same_ranks(ranks: Sequence[int]) -> list[int]:
    return list(ranks)


@dataclass(frozen=True)
class Method:
    """A federated method with the plain behaviour: clients keep their rank, nothing is merged.

    Attributes:
        name: the name used on the command line.
        nested: the default prefix-nested training mode ("all", "sample", "split" or "off").
        description: one line for ``prelort methods`` and the docs.
        build: makes the aggregation rule for a run.
        client_ranks: maps the assigned client ranks to the ranks the method trains at.
        head: the default classifier head, "per-tier" or "shared" (measured: docs/RESULTS.md).
        sensitivity: the largest weight one client has in the rule's averages, for client-level
            DP (``prelort.aggregation.privacy``); None: the rule is not a weighted average of
            the updates and refuses DP.
        from_sums: the rule computed from the weighted sum of the clients' padded shares alone
            (``prelort.aggregation.secure``), what secure aggregation reveals; None: the rule
            needs each client's update and refuses secure aggregation.
    """

    name: str
    nested: str
    description: str
    build: Callable[[AggregationContext], AggregateFn]
    client_ranks: Callable[[Sequence[int]], list[int]] = same_ranks
    head: str = "shared"
    sensitivity: Callable[[Sequence[ClientUpdate]], float] | None = average_sensitivity
    from_sums: FromSums | None = zeropad_from_sums

    trains_adapter = True  # False for the no-adapter reference (only the head learns)
    tail_penalty = 0.0  # weight of a client's tail-norm regulariser (HetLoRA's gamma)
    prefix_steps = False  # scale each component's step by the share of truncations using it

    def aggregator(self, context: AggregationContext) -> AggregateFn:
        return self.build(context)

    def initial_state(self, fresh_state: Mapping[str, torch.Tensor]) -> AdapterState:
        """The server's state before round 1, from the fresh rank-R adapter."""
        return dict(fresh_state)

    def allowed_ranks(self, ladder: Sequence[int], ranks: Sequence[int]) -> set[int] | None:
        """Ranks a reply may carry (None: any rank up to R)."""
        return set(ladder) | set(ranks)

    def truncation_weights(
        self, client_ranks: Sequence[int], ladder: Sequence[int]
    ) -> dict[int, float] | None:
        """Relative weight of each truncation's loss under nested training (None: equal)."""
        return None

    def tail_components(self, rank: int) -> int:
        """How many trailing components a rank-``rank`` client regularises and reports on."""
        return 0

    def next_rank(self, rank: int, tail_ratio: float, ladder: Sequence[int]) -> int:
        """A client's rank for the next rounds, after a round it trained at ``rank``."""
        return rank

    def downlink_numel(self, sent: Mapping[str, torch.Tensor], previous_stack_numel: int) -> int:
        """Numbers a client receives when it is sent ``sent`` (its rank prefix and head)."""
        return uplink_numel(sent)


@dataclass(frozen=True)
class HetLoRA(Method):
    """Clients regularise their tail and drop it for good once it carries little of the update."""

    tail_penalty = HETLORA_GAMMA

    def allowed_ranks(self, ladder: Sequence[int], ranks: Sequence[int]) -> set[int] | None:
        return None  # pruned ranks fall between the rungs

    def tail_components(self, rank: int) -> int:
        return tail_size(rank)

    def next_rank(self, rank: int, tail_ratio: float, ladder: Sequence[int]) -> int:
        if tail_ratio < HETLORA_THRESHOLD:
            return max(min(ladder), rank - tail_size(rank))
        return rank


@dataclass(frozen=True)
class FLoRA(Method):
    """The server merges every round into a dense base term; clients download the stacked factors."""

    def initial_state(self, fresh_state: Mapping[str, torch.Tensor]) -> AdapterState:
        state = dict(fresh_state)
        for module in lora_modules(fresh_state):
            out_features = fresh_state[module + LORA_B].shape[0]
            in_features = fresh_state[module + LORA_A].shape[1]
            state[module + MERGED] = torch.zeros(out_features, in_features)
        return state

    def downlink_numel(self, sent: Mapping[str, torch.Tensor], previous_stack_numel: int) -> int:
        # the head, plus the stacked factors of last round's clients to rebuild the merged base:
        # sum_k r_k (in + out) per module
        head = sum(
            v.numel() for k, v in sent.items() if not is_lora_key(k) and not k.endswith(MERGED)
        )
        return head + previous_stack_numel


@dataclass(frozen=True)
class NoAdapter(Method):
    """The reference row: a frozen base, only the classifier head learns (zero-shot for an LLM)."""

    trains_adapter = False


@dataclass(frozen=True)
class TierBalanced(Method):
    """Nested training with every truncation weighted equally over the federation."""

    def truncation_weights(
        self, client_ranks: Sequence[int], ladder: Sequence[int]
    ) -> dict[int, float] | None:
        return tier_balanced_weights(client_ranks, ladder)


@dataclass(frozen=True)
class PrefixSteps(Method):
    """Nested training whose optimizer steps favour the prefix as gradient descent would.

    AdamW gives every component about the same step, so PreLort's update spreads evenly over the
    rank (docs/RESULTS.md: ~22 % of its energy in the rank-2 prefix) and its low tiers are weak
    models; each component's step is scaled by the share of the step's truncations that use it.
    """

    prefix_steps = True


def tier_balanced_weights(client_ranks: Sequence[int], ladder: Sequence[int]) -> dict[int, float]:
    """``1 / (clients whose rank covers truncation t)`` per ladder rank t.

    Under nested training every client trains the low truncations and few train the high ones, so
    the shared head and the top segments see the top tiers' features through a few clients only.
    With these weights each truncation carries the same total weight over the federation.
    """
    return {t: 1.0 / max(1, sum(1 for r in client_ranks if r >= t)) for t in ladder}
