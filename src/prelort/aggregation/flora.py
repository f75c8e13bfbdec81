"""FLoRA (Wang et al., NeurIPS 2024): stack the client adapters, merge the product into the base.

Stacking ``A_k`` scaled by ``p_k`` along the rank and concatenating the ``B_k`` gives factors whose
product is exactly ``sum_k p_k s B_k A_k``: no cross terms, unlike averaging A and B separately.
The server merges that product into the base weights each round and the clients start the next
round from fresh adapters, as the paper does.

Here the merged weights are a dense ``<module>.merged`` (out, in) term of the global state that
the nested layer adds to its frozen base. Every client builds its fresh adapter itself, as the
reference code does (a new PEFT LoRA module per client and round): A drawn anew with PEFT's default
init from the client's (seed, round, client) seed, B zero (``FreshFactors``). The server's reset to
the run's initial adapter keeps the rule a pure function; what it sends is overwritten. Until
2026-12-04 every client restarted from that one initial A, which pinned the merged update to A's
fixed random row space (docs/RESULTS.md section 39). Its downlink is the stacked factors,
``sum_k r_k (in + out)`` numbers per module, which grows with the number of clients.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch

from prelort.adapters.state import (
    LORA_A,
    LORA_B,
    MERGED,
    AdapterState,
    lora_modules,
)
from prelort.aggregation.base import (
    AggregateFn,
    ClientUpdate,
    average_dense,
    check_updates,
    example_weights,
)
from prelort.aggregation.flexlora import stacked_factors
from prelort.aggregation.method import AggregationContext, Method, uplink_numel
from prelort.aggregation.registry import register
from prelort.errors import MethodUnsupported
from prelort.training.objective import LocalObjective

if TYPE_CHECKING:
    from prelort.adapters.inject import NestedLoRAModel

FRESH_SALT = 0x5EED_F10A  # the fresh factors' own stream: the batches stay every method's


def aggregate_flora(
    global_state: Mapping[str, torch.Tensor],
    updates: Sequence[ClientUpdate],
    scale: float,
    fresh_state: Mapping[str, torch.Tensor],
) -> AdapterState:
    """Merge ``sum_k p_k s B_k A_k`` (stacked factors) into ``<module>.merged``; reset the adapter.

    Args:
        global_state: the global state with ``.merged`` terms (shape (out, in)).
        updates: the round's client updates (their ``.merged`` terms are ignored).
        scale: the LoRA scale.
        fresh_state: the adapter every round starts from (A initial, B zero), rank R.

    Raises:
        AdapterError: no updates, or an update that does not fit the global adapter.
    """
    check_updates(global_state, updates)
    weights = example_weights(updates)
    out = average_dense(global_state, updates, weights)  # the head
    for module in lora_modules(global_state):
        b_cat, a_cat = stacked_factors(updates, module, weights, scale)  # (out, sum r), (sum r, in)
        merged = global_state[module + MERGED].double() + b_cat @ a_cat
        out[module + MERGED] = merged.float()
        out[module + LORA_A] = fresh_state[module + LORA_A].clone()
        out[module + LORA_B] = torch.zeros_like(fresh_state[module + LORA_B])
    return out


def stacked_numel(updates: Sequence[ClientUpdate]) -> int:
    """Numbers in the stacked factors a FLoRA client downloads: sum over modules of sum_k r_k (in + out)."""
    total = 0
    for u in updates:
        for module in lora_modules(u.state):
            total += u.state[module + LORA_A].numel() + u.state[module + LORA_B].numel()
    return total


@dataclass(frozen=True)
class FreshFactors(LocalObjective):
    """Plain training from a new adapter each round: A drawn as PEFT initialises it, B zero."""

    def prepare(self, adapted: NestedLoRAModel, rank: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed ^ FRESH_SALT)
        for layer in adapted.layers.values():
            layer.reset_parameters(generator)


@dataclass(frozen=True)
class FLoRA(Method):
    """The server merges every round into a dense base term; clients download the stacked factors.

    Its memory between rounds is the size of the last round's stack (``int``), which the next
    round's downlink carries. The merge needs each client's factors: no secure aggregation, no DP.
    """

    def rule(self, context: AggregationContext) -> AggregateFn:
        if context.fresh_state is None:
            raise MethodUnsupported("flora needs the run's fresh adapter state")
        return partial(aggregate_flora, scale=context.scale, fresh_state=context.fresh_state)

    def initial_state(self, fresh_state: Mapping[str, torch.Tensor]) -> AdapterState:
        state = dict(fresh_state)
        for module in lora_modules(fresh_state):
            out_features = fresh_state[module + LORA_B].shape[0]
            in_features = fresh_state[module + LORA_A].shape[1]
            state[module + MERGED] = torch.zeros(out_features, in_features)
        return state

    def initial_memory(self) -> int:
        return 0

    def next_memory(self, memory: int | None, updates: Sequence[ClientUpdate]) -> int:
        return stacked_numel(updates) if updates else memory or 0

    def downlink_numel(self, sent: Mapping[str, torch.Tensor], memory: int | None) -> int:
        # the head, plus the stacked factors of last round's clients to rebuild the merged base:
        # sum_k r_k (in + out) per module
        return uplink_numel(sent, factors=False) + (memory or 0)

    def merge(
        self,
        updates: Sequence[ClientUpdate],
        zeros: Callable[[int], AdapterState],
        rank: int | None = None,
    ) -> AdapterState:
        """Exact stacking: the output's rank is the sum of the input ranks."""
        if rank is not None:
            raise MethodUnsupported("rank: flora's output rank is the sum of the input ranks")
        w = example_weights(updates)
        out = average_dense(zeros(1), updates, w)  # the heads, if any
        for module in lora_modules(updates[0].state):
            b_cat, a_cat = stacked_factors(updates, module, w, 1.0)  # (out, sum r), (sum r, in)
            out[module + LORA_A], out[module + LORA_B] = a_cat.float(), b_cat.float()
        return out


register(
    FLoRA(
        "flora",
        "FLoRA: stack adapters, merge into the base each round, fresh adapters",
        group="baseline",
        objective=FreshFactors(),
    )
)
