"""Aggregation from weighted sums alone, the form secure aggregation (SecAgg+) can compute.

Under secure aggregation the server learns only the example-weighted sum (or mean) of what the
clients send, so every client sends the same fixed shapes: its prefix zero-padded to R, and per
rank index an indicator, 1 below its rank and 0 above (``<module>#weight``). Summed with weights
n_k, index i of A holds ``sum_{k: r_k > i} n_k A_k[i]`` and the indicator ``sum_{k: r_k > i} n_k``;
their ratio is exactly PreLort's segment-wise average (segments only group indices with equal
holders), and an index nobody holds (weight 0) keeps its global value. Zero-padding divides by
every client's weight instead (index 0's, which every client holds). Heads carry one indicator
each. The weights cancel in the ratios, so a weighted mean works as well as a weighted sum.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch

from prelort.adapters.state import LORA_A, LORA_B, MERGED, AdapterState, is_head_key, lora_modules
from prelort.aggregation.base import ClientUpdate, divided_by_holders

WEIGHT = "#weight"  # suffix of the indicator that goes with a module's rank axis or with a head


def share_layout(global_state: Mapping[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...]]]:
    """The (key, shape) of every tensor a client sends, in a fixed order both ends derive."""
    layout: list[tuple[str, tuple[int, ...]]] = []
    for module in lora_modules(global_state):
        a, b = global_state[module + LORA_A], global_state[module + LORA_B]  # (R, in), (out, R)
        layout += [(module + LORA_A, tuple(a.shape)), (module + LORA_B, tuple(b.shape))]
        layout.append((module + WEIGHT, (a.shape[0],)))
    for key in sorted(global_state):
        if is_head_key(key):
            layout += [(key, tuple(global_state[key].shape)), (key + WEIGHT, (1,))]
    return layout


def secure_share(update: ClientUpdate, global_state: Mapping[str, torch.Tensor]) -> AdapterState:
    """What one client contributes, before weighting: its update padded to the global shapes.

    Args:
        update: the client's rank-r update (A (r, in), B (out, r), heads it trained).
        global_state: the rank-R global adapter (gives R and the head keys).

    Returns:
        Every key of ``share_layout`` (float64): ``<module>.lora_a`` A padded to (R, in),
        ``<module>.lora_b`` B padded to (out, R), ``<module>#weight`` (R,) with 1 on the first r
        entries, each head (zeros if the client did not train it) with ``<head>#weight`` 1 or 0.
    """
    rank = update.rank
    share: AdapterState = {}
    for module in lora_modules(global_state):
        a, b = global_state[module + LORA_A], global_state[module + LORA_B]  # (R, in), (out, R)
        padded_a = torch.zeros(a.shape, dtype=torch.float64)
        padded_b = torch.zeros(b.shape, dtype=torch.float64)
        padded_a[:rank] = update.state[module + LORA_A].double()  # (r, in)
        padded_b[:, :rank] = update.state[module + LORA_B].double()  # (out, r)
        indicator = torch.zeros(a.shape[0], dtype=torch.float64)
        indicator[:rank] = 1.0
        share[module + LORA_A], share[module + LORA_B] = padded_a, padded_b
        share[module + WEIGHT] = indicator
    for key, value in global_state.items():
        if not is_head_key(key):
            continue
        held = key in update.state
        share[key] = update.state[key].double() if held else torch.zeros_like(value).double()
        share[key + WEIGHT] = torch.tensor([1.0 if held else 0.0], dtype=torch.float64)
    return share


def share_problem(share: Mapping[str, torch.Tensor], bound: float) -> str | None:
    """Why a client must not send ``share`` under secure aggregation, or None.

    SecAgg+ clips every number to [-bound, bound] before quantising it, silently; a client checks
    its own share first so that nothing is clipped, and so that NaN or Inf, which the server could
    no longer trace to a client once masked, never enters the sum.
    """
    for key, value in share.items():
        if not torch.isfinite(value).all():
            return f"{key} has NaN or Inf"
        largest = float(value.abs().max()) if value.numel() else 0.0
        if largest > bound:
            return f"{key} holds {largest:.4g}, outside secure_range {bound:g}"
    return None


def weighted_sum(
    shares: Iterable[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> AdapterState:
    """``sum_k w_k share_k``: what the secure aggregation protocol reveals (here in the clear)."""
    total: AdapterState = {}
    for share, w in zip(shares, weights, strict=True):
        for key, value in share.items():
            total[key] = total[key] + w * value if key in total else w * value
    return total


def sums_problem(
    total: Mapping[str, torch.Tensor], global_state: Mapping[str, torch.Tensor]
) -> str | None:
    """Why a revealed sum cannot be aggregated (wrong keys or shapes, NaN or Inf), or None."""
    layout = dict(share_layout(global_state))
    if set(total) != set(layout):
        missing, unknown = sorted(set(layout) - set(total)), sorted(set(total) - set(layout))
        return f"the sum's keys differ (missing {missing[:2]}, unknown {unknown[:2]})"
    for key, shape in layout.items():
        if tuple(total[key].shape) != shape:
            return f"{key} has shape {tuple(total[key].shape)}, expected {shape}"
        if not torch.isfinite(total[key]).all():
            return f"{key} has NaN or Inf"
    return None


def _held(weight: torch.Tensor, resolution: float) -> torch.Tensor:
    # a quantised sum leaves ~1e-7 where nobody held an index; below the resolution is nobody
    return torch.where(weight > resolution, weight, torch.zeros_like(weight))


def _heads_from_sums(
    global_state: Mapping[str, torch.Tensor],
    total: Mapping[str, torch.Tensor],
    out: AdapterState,
    resolution: float,
) -> None:
    for key, value in global_state.items():
        if key.endswith(MERGED):
            out[key] = value.detach().clone()
        elif is_head_key(key):
            weight = float(total[key + WEIGHT])
            held = weight > resolution
            out[key] = (total[key] / weight).float() if held else value.detach().clone()


def segmentwise_from_sums(
    global_state: Mapping[str, torch.Tensor],
    total: Mapping[str, torch.Tensor],
    resolution: float = 0.0,
) -> AdapterState:
    """PreLort's new global adapter from the summed shares: each rank index divided by its weight.

    Args:
        global_state: the rank-R global adapter before the round.
        total: the weighted sum (or mean) of the clients' ``secure_share``.
        resolution: weights at or below it count as nobody's (the quantisation error of a
            secure sum; 0 for an exact sum).

    Indices and heads nobody held keep their global value; a FLoRA merged term is carried over.
    """
    out: AdapterState = {}
    for module in lora_modules(global_state):
        key_a, key_b = module + LORA_A, module + LORA_B
        out[key_a], out[key_b] = divided_by_holders(
            global_state[key_a],
            global_state[key_b],
            total[key_a],
            total[key_b],
            _held(total[module + WEIGHT], resolution),
        )
    _heads_from_sums(global_state, total, out, resolution)
    return out


def zeropad_from_sums(
    global_state: Mapping[str, torch.Tensor],
    total: Mapping[str, torch.Tensor],
    resolution: float = 0.0,
) -> AdapterState:
    """Zero-padding's new global adapter from the summed shares: every index divided by the total.

    The total weight is index 0's (every client holds rank index 0), so indices few clients hold
    are diluted and indices nobody held become zero, exactly as in ``aggregate_zeropad``; heads
    are averaged over the clients that trained them.
    """
    out: AdapterState = {}
    for module in lora_modules(global_state):
        everyone = float(total[module + WEIGHT][0])
        if not everyone > resolution or not math.isfinite(everyone):
            raise ValueError(f"{module}: the sum holds no client")
        out[module + LORA_A] = (total[module + LORA_A] / everyone).float()
        out[module + LORA_B] = (total[module + LORA_B] / everyone).float()
    _heads_from_sums(global_state, total, out, resolution)
    return out
