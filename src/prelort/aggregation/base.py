"""What every aggregation rule receives, and the weighted average they share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from prelort.adapters.state import (
    LORA_A,
    LORA_B,
    MERGED,
    AdapterState,
    is_head_key,
    is_lora_key,
    lora_modules,
    state_rank,
)
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


def prefix_sums(
    global_state: Mapping[str, torch.Tensor],
    updates: Sequence[ClientUpdate],
    weights: torch.Tensor,
    starts: Sequence[int] | None = None,
) -> tuple[AdapterState, torch.Tensor]:
    """``sum_k w_k A_k`` and ``sum_k w_k B_k`` zero-padded to R per module, and each index's weight.

    One pass over the uploaded numbers, accumulated in place into rank-R float32 buffers (no
    padded copies), so the cost is that of reading the updates once: the rule is bounded by
    memory bandwidth. Float32 accumulation of weighted factors loses about 1e-7 relative.

    Args:
        starts: per update, the first index it trained (a window ``[start, rank)`` above a
            frozen prefix: ``window.py``); the indices below count as not held. Default: 0.

    Returns:
        (sums, held): ``<module>.lora_a`` (R, in) and ``<module>.lora_b`` (out, R) sums, and
        ``held`` (R,) float64, the total weight of the updates whose rank covers each index.
    """
    starts = [0] * len(updates) if starts is None else list(starts)
    held = torch.zeros(state_rank(global_state), dtype=torch.float64)  # weights: on the CPU
    for u, w, start in zip(updates, weights.tolist(), starts, strict=True):
        held[start : u.rank] += w
    sums: AdapterState = {}
    for module in lora_modules(global_state):
        key_a, key_b = module + LORA_A, module + LORA_B
        sum_a = torch.zeros_like(global_state[key_a], dtype=torch.float32)  # (R, in)
        sum_b = torch.zeros_like(global_state[key_b], dtype=torch.float32)  # (out, R)
        for u, w, s in zip(updates, weights.tolist(), starts, strict=True):
            sum_a[s : u.rank].add_(u.state[key_a][s:], alpha=w)  # (r - s, in)
            sum_b[:, s : u.rank].add_(u.state[key_b][:, s:], alpha=w)  # (out, r - s)
        sums[key_a], sums[key_b] = sum_a, sum_b
    return sums, held


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


def divided_by_holders(
    global_a: torch.Tensor,
    global_b: torch.Tensor,
    sum_a: torch.Tensor,
    sum_b: torch.Tensor,
    held: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per rank index, the weighted sum over its holders divided by their weight; kept where none.

    Args:
        global_a, global_b: the module's global A (R, in) and B (out, R).
        sum_a, sum_b: the holders' weighted sums, zero-padded to R (same shapes).
        held: (R,) the total weight of the holders of each index.

    Returns:
        The new A and B (float32).
    """
    held = held.to(sum_a.device)  # the weights come from the CPU; the sums may be on a GPU
    covered = held > 0  # (R,) indices some update holds
    inverse = torch.where(covered, 1 / held.clamp_min(1e-300), 0.0)  # (R,)
    new_a = (sum_a * inverse[:, None].to(sum_a.dtype)).float()  # (R, in)
    new_b = (sum_b * inverse[None, :].to(sum_b.dtype)).float()  # (out, R)
    if not covered.all():  # nobody trained these indices this round: keep their value
        new_a[~covered] = global_a[~covered].float()
        new_b[:, ~covered] = global_b[:, ~covered].float()
    return new_a, new_b
