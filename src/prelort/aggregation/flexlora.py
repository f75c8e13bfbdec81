"""FlexLoRA (Bai et al., NeurIPS 2024): average the full updates, re-factorise by truncated SVD.

Each client's update is its full product ``dW_k = s * B_k @ A_k`` (out, in). The server averages
them with example weights and re-factorises the average by a truncated SVD of rank R:
``dW ~= U_R diag(S_R) V_R^T``. The singular values are split evenly between the factors,
``B = U_R sqrt(S_R) / sqrt(s)`` and ``A = sqrt(S_R) V_R^T / sqrt(s)``, so ``s * B @ A`` is the
best rank-R approximation and, because SVD components are ordered, the rank-r prefix a client
receives is the best rank-r approximation too.

The average is never materialised: ``sum_k w_k s B_k A_k = Bcat @ Acat`` with the factors stacked
along the rank (``Bcat`` (out, sum r_k), ``Acat`` (sum r_k, in)). QR of both stacks leaves a small
(sum r_k, sum r_k) core whose SVD gives the SVD of the product, as NVFlare's HLoRA aggregator does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from prelort.adapters.state import LORA_A, LORA_B, AdapterState, lora_modules
from prelort.aggregation.base import (
    AggregateFn,
    ClientUpdate,
    average_dense,
    check_updates,
    example_weights,
)
from prelort.aggregation.method import AggregationContext, Method
from prelort.aggregation.registry import register
from prelort.errors import ConfigError


def stacked_factors(
    updates: Sequence[ClientUpdate], module: str, weights: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Bcat, Acat)`` with ``Bcat @ Acat = sum_k w_k * scale * B_k @ A_k``, in float64.

    Returns:
        Bcat of shape (out, sum r_k) and Acat of shape (sum r_k, in).
    """
    b = torch.cat(
        [
            w * scale * u.state[module + LORA_B].double()
            for w, u in zip(weights.tolist(), updates, strict=True)
        ],
        dim=1,
    )  # (out, sum r_k)
    a = torch.cat([u.state[module + LORA_A].double() for u in updates], dim=0)  # (sum r_k, in)
    return b, a


def low_rank_svd(
    b: torch.Tensor, a: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``rank`` SVD of ``b @ a`` without forming it: ``U`` (out, k), ``S`` (k,), ``Vh`` (k, in).

    k is ``min(rank, b.shape[1])``; the caller pads when fewer components exist.
    """
    q_b, r_b = torch.linalg.qr(b)  # (out, m), (m, m)
    q_a, r_a = torch.linalg.qr(a.T)  # (in, m), (m, m)
    u_core, s, vh_core = torch.linalg.svd(r_b @ r_a.T)  # core (m, m)
    k = min(rank, s.shape[0])
    return q_b @ u_core[:, :k], s[:k], vh_core[:k] @ q_a.T


def aggregate_flexlora(
    global_state: Mapping[str, torch.Tensor],
    updates: Sequence[ClientUpdate],
    scale: float,
) -> AdapterState:
    """Weighted average of the full client updates, re-factorised to rank R by SVD.

    Args:
        global_state: the rank-R global adapter (gives R, the keys and shapes).
        updates: the round's client updates.
        scale: the LoRA scale ``s`` shared by every client.

    Returns:
        The new rank-R global adapter; components beyond the average's rank are zero.

    Raises:
        AdapterError: no updates, or an update that does not fit the global adapter.
    """
    max_rank = check_updates(global_state, updates)
    weights = example_weights(updates)
    out = average_dense(global_state, updates)
    for module in lora_modules(global_state):
        b_cat, a_cat = stacked_factors(updates, module, weights, scale)
        out[module + LORA_A], out[module + LORA_B] = refactorised(
            global_state[module + LORA_A], b_cat, a_cat, max_rank, scale
        )
    return out


def refactorised(
    global_a: torch.Tensor, b_cat: torch.Tensor, a_cat: torch.Tensor, max_rank: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rank-R factors (A, B) with ``s * B @ A`` the best rank-R approximation of
    ``b_cat @ a_cat``, ``sqrt(S)`` on each side; components beyond its rank are zero.

    Args:
        global_a: the module's global A (R, in): gives the shape and device.
        b_cat, a_cat: stacked factors (out, m) and (m, in) whose product is the update.
        max_rank: R.
        scale: the LoRA scale s, divided out of the factors.
    """
    u, s, vh = low_rank_svd(b_cat, a_cat, max_rank)
    root = torch.sqrt(s / scale)  # split sqrt(S) to each side, undo the scale
    new_a = torch.zeros_like(global_a, dtype=torch.float64)  # (R, in)
    new_b = global_a.new_zeros((b_cat.shape[0], global_a.shape[0]), dtype=torch.float64)  # (out, R)
    k = s.shape[0]
    new_a[:k] = root[:, None] * vh  # (k, in)
    new_b[:, :k] = u * root[None, :]  # (out, k)
    return new_a.float(), new_b.float()


@dataclass(frozen=True)
class FlexLoRA(Method):
    """An SVD of the average update: no secure aggregation (it needs the products), no DP.

    Its one-shot merge may choose the output rank: the SVD truncates anywhere up to the sum of
    the input ranks.
    """

    def rule(self, context: AggregationContext) -> AggregateFn:
        return partial(aggregate_flexlora, scale=context.scale)

    def merge(
        self,
        updates: Sequence[ClientUpdate],
        zeros: Callable[[int], AdapterState],
        rank: int | None = None,
    ) -> AdapterState:
        target = rank or max(u.rank for u in updates)
        if not 1 <= target <= sum(u.rank for u in updates):
            raise ConfigError(f"rank: {target} is outside [1, {sum(u.rank for u in updates)}]")
        return aggregate_flexlora(zeros(target), updates, scale=1.0)


register(
    FlexLoRA(
        "flexlora",
        "FlexLoRA: average full updates, truncated SVD back to each rank",
        group="baseline",
    )
)
