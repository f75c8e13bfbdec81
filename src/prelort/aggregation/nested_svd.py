"""Nested product averaging (``prelort-svd``): PreLort's nested adapter, built from exact tier averages.

PreLort averages A and B separately per segment, so a tier's product is ``avg(B) avg(A)``, not the
average of the clients' products: the cross terms ``B_j A_k`` of different clients enter every tier.
FlexLoRA avoids them by averaging products and re-factorising by SVD, but its prefixes are the best
approximations of the *full* average, not models that the clients trained to work alone.

This rule keeps PreLort's nested training and prefix distribution and aggregates products, tier
by tier. Tier r's target is the example-weighted average of every client's own rank-r truncation,
``M_r = Σ_k w_k s B_k[:, :min(r, r_k)] A_k[:min(r, r_k)]`` (nested training made each truncation a
model on its own; a client below r contributes its whole update, as in FlexLoRA's top tier). The
global adapter is then factorised segment by segment: the first segment is the best rank-r_1
approximation of ``M_{r_1}``, each next segment ``[lo, hi)`` the best rank-(hi - lo) approximation of
the residual ``M_hi - s B[:, :lo] A[:lo]``, so every prefix approximates its own tier's average.
Segments above every update's rank keep their value, as in PreLort. The factorisation is
FlexLoRA's (QR of stacked factors, SVD of a small core), never forming a dense (out, in) matrix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
from prelort.aggregation.flexlora import low_rank_svd
from prelort.aggregation.method import AggregationContext, Method
from prelort.aggregation.registry import register
from prelort.aggregation.segments import segment_bounds


def aggregate_nested_svd(
    global_state: Mapping[str, torch.Tensor],
    updates: Sequence[ClientUpdate],
    scale: float,
    ladder: Sequence[int] = (),
) -> AdapterState:
    """The rank-R nested adapter whose every prefix approximates its tier's product average.

    Raises:
        AdapterError: no updates, or an update that does not fit the global adapter.
    """
    max_rank = check_updates(global_state, updates)
    weights = example_weights(updates).tolist()
    top = max(u.rank for u in updates)
    bounds = segment_bounds([*ladder, *(u.rank for u in updates)], max_rank)
    out = average_dense(global_state, updates)
    for module in lora_modules(global_state):
        key_a, key_b = module + LORA_A, module + LORA_B
        new_a = global_state[key_a].detach().clone().double()  # (R, in)
        new_b = global_state[key_b].detach().clone().double()  # (out, R)
        for lo, hi in bounds:
            if lo >= top:
                break  # nobody holds these segments this round: they keep their value
            parts_b = [
                w * scale * u.state[key_b][:, : min(hi, u.rank)].double()
                for w, u in zip(weights, updates, strict=True)
            ]  # each (out, m_k)
            parts_a = [u.state[key_a][: min(hi, u.rank)].double() for u in updates]
            if lo > 0:  # minus the prefix already placed: the residual of tier hi
                parts_b.append(-scale * new_b[:, :lo])
                parts_a.append(new_a[:lo])
            u_, s, vh = low_rank_svd(torch.cat(parts_b, 1), torch.cat(parts_a, 0), hi - lo)
            root = torch.sqrt(s / scale)  # split sqrt(S) between the factors, undo the scale
            k = s.shape[0]
            new_a[lo:hi], new_b[:, lo:hi] = 0.0, 0.0
            new_a[lo : lo + k] = root[:, None] * vh  # (k, in)
            new_b[:, lo : lo + k] = u_ * root[None, :]  # (out, k)
        out[key_a], out[key_b] = new_a.float(), new_b.float()
    return out


@dataclass(frozen=True)
class NestedSVD(Method):
    """Nested product averaging; an SVD of each residual, so neither secure aggregation nor DP."""

    def rule(self, context: AggregationContext) -> AggregateFn:
        return partial(aggregate_nested_svd, scale=context.scale, ladder=context.ladder)


register(
    NestedSVD(
        "prelort-svd",
        "PreLort + nested product averaging: prefix r approximates the average of the "
        "clients' rank-r products (segment-by-segment SVD of the residual)",
        group="experimental",
        nested="all",
    )
)
