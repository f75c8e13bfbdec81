"""RB-LoRA's rank-balanced aggregation (Ha, Oh and Jeon, Findings of EACL 2026; project page and
code ``seonha01/rb-lora``, read for the rule, nothing copied).

Each client's update is decomposed into rank-one components ``s b_{k,i} a_{k,i}^T``, aligned to a
common rank by zero-padding, and summed with factorised weights ``gamma_{k,i} = alpha_k beta_i``:
``alpha_k = n_k / sum_{round} n`` is the client's share of the round's data and
``beta_i = N / sum_{j: r_j > i} n_j`` the rarity of rank index i over the federation's clients
(their ranks and data sizes, as the code's ``compute_column_weights_from_ranks`` computes it).
The global update is then projected to each client's rank by SVD: ``B = U_r S_r``, ``A = V_r^T``.

With every client in the round the weights of each index sum to one and RB-LoRA equals raFLoRA's
rule (``raflora.py``); under partial participation rarity is the federation's and shares the
round's, so a rare component of the round can weigh more than one in total. The code's per-rank
LoRA scale ``alpha / r`` has no counterpart here: every prefix of the nested adapter shares one
scale ``s = alpha / R``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from prelort.adapters.state import LORA_A, LORA_B, AdapterState, lora_modules
from prelort.aggregation.base import AggregateFn, ClientUpdate, average_dense, check_updates
from prelort.aggregation.flexlora import low_rank_svd
from prelort.aggregation.method import AggregationContext, Method
from prelort.aggregation.raflora import holder_weights, weighted_stack
from prelort.aggregation.registry import register


def rank_balanced_weights(
    updates: Sequence[ClientUpdate],
    client_ranks: Sequence[int] = (),
    client_examples: Sequence[float] = (),
) -> list[torch.Tensor]:
    """Per update, ``alpha_k * beta_i`` for each of its components, shape (r_k,).

    Args:
        updates: the round's updates (their examples give ``alpha``).
        client_ranks, client_examples: the federation's clients (their ranks and examples give
            ``beta``); empty: the round's clients, where the weights are ``holder_weights``.
    """
    if not client_ranks:
        return holder_weights(updates)
    max_rank = max(max(client_ranks), max(u.rank for u in updates))
    held = torch.zeros(max_rank, dtype=torch.float64)  # the federation's examples per index
    for rank, examples in zip(client_ranks, client_examples, strict=True):
        held[:rank] += float(examples)
    beta = torch.where(held > 0, sum(client_examples) / held.clamp_min(1e-300), 0.0)  # (max_rank,)
    round_total = sum(float(u.num_examples) for u in updates)
    return [float(u.num_examples) / round_total * beta[: u.rank] for u in updates]


def aggregate_rblora(
    global_state: Mapping[str, torch.Tensor],
    updates: Sequence[ClientUpdate],
    scale: float,
    client_ranks: Sequence[int] = (),
    client_examples: Sequence[float] = (),
) -> AdapterState:
    """The rank-balanced sum of the updates' components, projected to rank R by SVD.

    Args:
        global_state: the rank-R global adapter (gives R, keys and shapes).
        updates: the round's client updates.
        scale: the LoRA scale s.
        client_ranks, client_examples: the federation's clients, for the rank rarity.

    Returns:
        The new global adapter: ``A = V_R^T`` (orthonormal rows), ``B = U_R S_R / s``; a
        client's rank-r prefix is the best rank-r approximation of the aggregate.

    Raises:
        AdapterError: no updates, or an update that does not fit the global adapter.
    """
    max_rank = check_updates(global_state, updates)
    weights = rank_balanced_weights(updates, client_ranks, client_examples)
    out = average_dense(global_state, updates)
    for module in lora_modules(global_state):
        key_a, key_b = module + LORA_A, module + LORA_B
        b_cat, a_cat = weighted_stack(updates, module, weights, scale)  # (out, Σr), (Σr, in)
        u_, s, vh = low_rank_svd(b_cat, a_cat, max_rank)  # (out, k), (k,), (k, in)
        k = s.shape[0]
        new_a = torch.zeros_like(global_state[key_a], dtype=torch.float64)  # (R, in)
        new_b = torch.zeros_like(global_state[key_b], dtype=torch.float64)  # (out, R)
        new_a[:k] = vh
        new_b[:, :k] = u_ * (s / scale)[None, :]
        out[key_a], out[key_b] = new_a.float(), new_b.float()
    return out


@dataclass(frozen=True)
class RBLoRA(Method):
    """Rank-balanced products and an SVD projection: neither secure aggregation nor DP."""

    def rule(self, context: AggregationContext) -> AggregateFn:
        return partial(
            aggregate_rblora,
            scale=context.scale,
            client_ranks=context.client_ranks,
            client_examples=context.client_examples,
        )


register(
    RBLoRA(
        "rblora",
        "RB-LoRA: rank-one components weighted by data share x rank rarity, SVD projection to "
        "each rank",
        group="peer",
    )
)
