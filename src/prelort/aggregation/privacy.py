"""Client-level differential privacy with fixed clipping (central DP, DP-FedAvg style).

The server clips every client's update ``Δ_k = state_k - prefix_k`` (factors and head together)
to L2 norm at most C, aggregates the clipped updates with the method's rule, and adds Gaussian
noise of standard deviation ``σ · C · s`` to every number some update covered. ``s`` is the
rule's sensitivity: the largest weight one client has in any average of the rule. For the
example-weighted zero-pad average it is ``max_k n_k / Σ n``; under PreLort's segment-wise average
a client's weight in a segment is renormalised over that segment's holders, so ``s`` is the
largest such weight (a lone rank-16 client owns its top segment: s = 1 there). One client's
clipped update moves the aggregate by at most ``s · C`` in L2, which is what the Gaussian
mechanism with noise multiplier σ needs; with equal weights ``s = 1/n``, Flower's
``σ · C / n``. Rules whose output is not a weighted average of the updates (norm-weighted
HetLoRA, FlexLoRA's SVD, FLoRA's merge) have no such bound and refuse DP.

All pure functions over tensors; the server step applies them and reports each round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from prelort.adapters.state import LORA_A, LORA_B, AdapterState
from prelort.aggregation.base import ClientUpdate, example_weights
from prelort.aggregation.segments import segment_bounds


def update_norm_l2(sent: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> float:
    """The L2 norm of ``state - sent`` over every tensor of ``state`` (a key not sent: vs 0)."""
    total = 0.0
    for key, value in state.items():
        base = sent.get(key)
        delta = value.double() if base is None else value.double() - base.double()
        total += float(delta.square().sum())
    return math.sqrt(total)


def clip_update(
    sent: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], clip: float
) -> tuple[AdapterState, float]:
    """``sent + Δ · min(1, C / ||Δ||)``: the update scaled into the ball of radius C.

    Returns:
        The clipped state (fp32) and the update's norm before clipping.
    """
    norm = update_norm_l2(sent, state)
    factor = min(1.0, clip / norm) if norm > 0 else 1.0
    if factor == 1.0:
        return dict(state), norm
    out: AdapterState = {}
    for key, value in state.items():
        base = sent.get(key)
        base = torch.zeros_like(value) if base is None else base.to(value.dtype)
        out[key] = base + factor * (value - base)
    return out, norm


def average_sensitivity(updates: Sequence[ClientUpdate]) -> float:
    """Largest weight of one client in an example-weighted average over all updates."""
    return float(example_weights(updates).max())


def segment_sensitivity(updates: Sequence[ClientUpdate]) -> float:
    """Largest weight of one client in any segment's average over that segment's holders."""
    max_rank = max(u.rank for u in updates)
    largest = 0.0
    for _, hi in segment_bounds([u.rank for u in updates], max_rank):
        holders = [u for u in updates if u.rank >= hi]
        total = sum(float(u.num_examples) for u in holders)
        largest = max(largest, max(float(u.num_examples) for u in holders) / total)
    return largest


def add_noise(
    global_state: Mapping[str, torch.Tensor],
    updates: Sequence[ClientUpdate],
    std: float,
    generator: torch.Generator,
) -> AdapterState:
    """Gaussian noise of ``std`` on every number some update covered; the rest unchanged.

    Covered: the first ``max_k r_k`` rows of each A and columns of each B, and the heads some
    update carries. Components nobody sent hold no client's data and get no noise.
    """
    covered_rank = max(u.rank for u in updates)
    sent_keys = {k for u in updates for k in u.state}
    out: AdapterState = {}
    for key, value in global_state.items():
        noisy = value.detach().clone().float()
        if key.endswith(LORA_A):
            view = noisy[:covered_rank]  # (r, in)
        elif key.endswith(LORA_B):
            view = noisy[:, :covered_rank]  # (out, r)
        elif key in sent_keys:
            view = noisy
        else:
            out[key] = noisy
            continue
        noise = torch.randn(view.shape, generator=generator, dtype=torch.float64)  # CPU stream
        view.add_(noise.float().to(view.device) * std)
        out[key] = noisy
    return out
