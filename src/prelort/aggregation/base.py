"""What every aggregation rule receives, and the weighted average they share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from prelort.adapters.state import MERGED, AdapterState, is_head_key, is_lora_key, state_rank
from prelort.errors import AdapterError


@dataclass(frozen=True)
class ClientUpdate:
    """One client's trained adapter as sent to the server.

    Attributes:
        client_id: who sent it (for logs and rejections).
        state: the rank-``rank`` adapter: A (rank, in), B (out, rank), plus dense head tensors.
        rank: the client's adapter rank.
        num_examples: local training examples, the weight of the update (any positive
            number, e.g. a user's weight when merging adapters).
    """

    client_id: int
    state: AdapterState
    rank: int
    num_examples: float

    def __post_init__(self) -> None:
        if self.num_examples <= 0:
            raise AdapterError(f"client {self.client_id}: num_examples must be > 0")
        held = state_rank(self.state)
        if held != self.rank:
            raise AdapterError(
                f"client {self.client_id}: claims rank {self.rank} but its factors have rank {held}"
            )


class AggregateFn(Protocol):
    """A pure aggregation rule: new global state from the old one and the round's updates.

    The global state is the rank-R nested adapter; the result has the same keys and shapes.
    """

    def __call__(
        self, global_state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]
    ) -> AdapterState: ...


def example_weights(updates: Sequence[ClientUpdate]) -> torch.Tensor:
    """Weights proportional to each update's example count, summing to one. Shape (K,)."""
    counts = torch.tensor([u.num_examples for u in updates], dtype=torch.float64)
    return counts / counts.sum()


def weighted_sum(tensors: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """``sum_k weights[k] * tensors[k]`` in float64, returned as float32."""
    total = torch.zeros_like(tensors[0], dtype=torch.float64)
    for t, w in zip(tensors, weights.tolist(), strict=True):
        total += w * t.to(torch.float64)
    return total.to(torch.float32)


def average_dense(
    global_state: Mapping[str, torch.Tensor],
    updates: Sequence[ClientUpdate],
    weights: torch.Tensor | None = None,
) -> AdapterState:
    """FedAvg of the head tensors (keys without a rank axis), each over the updates that carry it.

    A per-tier head (``<name>@<tier>``) comes only from the clients that trained that tier; the
    weights are renormalised over them, the rule the rank segments follow. A head no update
    carries keeps its value.

    Args:
        global_state: the global state (gives the head keys).
        updates: the round's updates.
        weights: one weight per update (default: proportional to examples).
    """
    weights = example_weights(updates) if weights is None else weights
    out: AdapterState = {}
    for key in global_state:
        if not is_head_key(key):
            continue
        holders = [k for k, u in enumerate(updates) if key in u.state]
        if not holders:
            out[key] = global_state[key].detach().clone().float()
            continue
        w = weights[holders]
        w = w / w.sum() if w.sum() > 0 else torch.full_like(w, 1 / len(holders))
        out[key] = weighted_sum([updates[k].state[key] for k in holders], w)
    return out


def check_updates(global_state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]) -> int:
    """Check that updates can be aggregated into the global state; returns R.

    Raises:
        AdapterError: no updates, a rank above R, or keys that differ from the global state's.
    """
    if not updates:
        raise AdapterError("no client updates to aggregate")
    max_rank = state_rank(global_state)
    lora_keys = {k for k in global_state if is_lora_key(k)}
    head_keys = {k for k in global_state if is_head_key(k)}
    for u in updates:
        if u.rank > max_rank:
            raise AdapterError(f"client {u.client_id}: rank {u.rank} is above max_rank {max_rank}")
        got = {k for k in u.state if not k.endswith(MERGED)}
        if {k for k in got if is_lora_key(k)} != lora_keys or not (got - lora_keys) <= head_keys:
            diff = sorted(got ^ (lora_keys | head_keys))[:3]
            raise AdapterError(f"client {u.client_id}: keys differ from the global adapter: {diff}")
    return max_rank
