"""What a federated method is: an aggregation rule and the hooks by which it changes a round.

A method's module holds its rule (a pure function over tensors), a ``Method`` subclass that
overrides the hooks where the method differs from plain behaviour, and, last, its ``register``
call (``prelort.aggregation.registry``), as PEFT's tuners register themselves. The round, the
training loop, ``prelort aggregate`` and the Flower app only call hooks; none of them tests a
method's name. Adding a method is one new module in ``prelort/aggregation/`` and its tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from prelort.adapters.state import MERGED, AdapterState, is_lora_key
from prelort.aggregation.base import AggregateFn, ClientUpdate
from prelort.errors import MethodUnsupported
from prelort.training.objective import PLAIN, LocalObjective

FromSums = Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor], float], AdapterState]
Sensitivity = Callable[[Sequence[ClientUpdate]], float]


@dataclass(frozen=True)
class AggregationContext:
    """What a rule may need beyond the updates.

    Attributes:
        ladder: the ranks in use.
        scale: the LoRA scale s.
        fresh_state: the run's fresh rank-R adapter (FLoRA restarts from it each round).
        client_ranks: every client's rank in the federation (not only the round's).
        client_examples: every client's training examples, in the same order.
    """

    ladder: tuple[int, ...]
    scale: float
    fresh_state: Mapping[str, torch.Tensor] | None = None
    client_ranks: tuple[int, ...] = ()
    client_examples: tuple[float, ...] = ()


def uplink_numel(state: Mapping[str, torch.Tensor], factors: bool = True) -> int:
    """Numbers a client sends: its factors and head (a merged base term is never sent up).

    Args:
        factors: False for a client whose adapter is frozen (a reference row): it sends only
            what it trained, its head, which is nothing for a zero-shot causal LM.
    """
    return sum(
        v.numel()
        for k, v in state.items()
        if not k.endswith(MERGED) and (factors or not is_lora_key(k))
    )


@dataclass(frozen=True)
class Method:
    """A federated method with the plain behaviour: clients keep their rank, nothing is merged.

    Attributes:
        name: the name used on the command line.
        description: one line for ``prelort methods`` and the docs.
        group: where ``prelort methods`` lists it (``registry.GROUPS``).
        nested: the default prefix-nested training mode ("all", "sample", "split" or "off").
        head: the default classifier head, "per-tier" or "shared" (measured: docs/RESULTS.md).
        trains_adapter: False for a reference whose adapter never learns (evaluation then
            scores every tier once).
        objective: what every client optimises beyond the task loss (``local_objective``'s
            answer; a method whose objective depends on the client overrides that instead).
    """

    name: str
    description: str
    group: str
    nested: str = "off"
    head: str = "shared"
    trains_adapter: bool = True
    objective: LocalObjective = PLAIN

    # --- the server side -------------------------------------------------------------------
    def rule(self, context: AggregationContext) -> AggregateFn:
        """The aggregation rule of a run: new global state from the old one and the updates."""
        raise NotImplementedError(f"{self.name} defines no aggregation rule")

    def secure_rule(self) -> FromSums:
        """The rule from the weighted sum of the clients' padded shares alone (what secure
        aggregation reveals, ``prelort.aggregation.secure``).

        Raises:
            MethodUnsupported: the rule needs each client's own update.
        """
        raise MethodUnsupported(
            f"secure_aggregation: method {self.name!r} needs each client's update, which secure "
            "aggregation hides (use prelort, zeropad or another averaging method)"
        )

    def sensitivity(self) -> Sensitivity:
        """The largest weight one client has in the rule's averages, for client-level DP
        (``prelort.aggregation.privacy``).

        Raises:
            MethodUnsupported: the rule is not a weighted average of the updates.
        """
        raise MethodUnsupported(
            f"dp_clip: method {self.name!r} does not support client-level DP: its aggregate is "
            "not a weighted average of the updates, so one client's influence is unbounded (use "
            "prelort, zeropad or another averaging method)"
        )

    def served(self, state: Mapping[str, torch.Tensor]) -> AdapterState:
        """The adapter a run serves from the server's ``state``: what every evaluation scores and
        the calibration round, ``adapter.safetensors`` and ``prelort export`` read. The server
        keeps training from ``state`` itself (the checkpoint). Default: ``state`` unchanged."""
        return dict(state)

    def initial_state(self, fresh_state: Mapping[str, torch.Tensor]) -> AdapterState:
        """The server's state before round 1, from the fresh rank-R adapter."""
        return dict(fresh_state)

    def initial_memory(self) -> Any:
        """What the method keeps between rounds beside the adapter (JSON-able; None: nothing)."""
        return None

    def next_memory(self, memory: Any, updates: Sequence[ClientUpdate]) -> Any:
        """The method's memory after a round that aggregated ``updates`` (none: unchanged)."""
        return memory

    def allowed_ranks(self, ladder: Sequence[int], ranks: Sequence[int]) -> set[int] | None:
        """Ranks a reply may carry (None: any rank up to R)."""
        return set(ladder) | set(ranks)

    def next_rank(
        self, rank: int, tail_ratio: float, ladder: Sequence[int], assigned: int | None = None
    ) -> int:
        """A client's rank for the next rounds, after a round it trained at ``rank``.

        Args:
            assigned: the rank the client was assigned at round 1 (its budget), for a method
                whose rank schedule starts from it; None where unknown.
        """
        return rank

    def downlink_numel(self, sent: Mapping[str, torch.Tensor], memory: Any) -> int:
        """Numbers a client receives when it is sent ``sent`` (its rank prefix and head)."""
        return uplink_numel(sent)

    def merge(
        self,
        updates: Sequence[ClientUpdate],
        zeros: Callable[[int], AdapterState],
        rank: int | None = None,
    ) -> AdapterState:
        """One-shot merge of adapters (``prelort aggregate``): the rule at scale 1 from zeros.

        Args:
            updates: the adapters, scales folded into B, weighted by ``num_examples``.
            zeros: a zero state (factors and heads) of a given rank.
            rank: an output rank the user asked for (only some methods can choose it).

        Raises:
            MethodUnsupported: ``rank`` given to a method whose output rank is fixed.
        """
        if rank is not None:
            raise MethodUnsupported(f"rank: {self.name} cannot choose its output rank")
        ladder = tuple(sorted({u.rank for u in updates}))
        rule = self.rule(AggregationContext(ladder, 1.0))
        return rule(zeros(max(u.rank for u in updates)), updates)

    # --- the client side -------------------------------------------------------------------
    def client_ranks(self, ranks: Sequence[int]) -> list[int]:
        """The ranks the method trains at, from the ranks assigned to the clients."""
        return list(ranks)

    def local_objective(
        self,
        rank: int,
        client_ranks: Sequence[int],
        ladder: Sequence[int],
        assigned: int | None = None,
    ) -> LocalObjective:
        """What a client sent the rank-``rank`` prefix optimises.

        Args:
            client_ranks: the whole federation's assigned ranks.
            assigned: this client's assigned rank (``rank`` itself for most methods; a method
                that moves clients between ranks reads its schedule from it); None where unknown.
        """
        return self.objective
