"""Segment-wise aggregation from sums alone, the form secure aggregation (SecAgg+) can compute.

Under secure aggregation the server learns only the element-wise sum of what the clients send.
Each client therefore sends fixed-shape tensors: its example-weighted prefix zero-padded to R, and
per rank index the weight it contributes there (its example count below its rank, zero above).
Summed over clients, index i of A holds ``sum_{k: r_k > i} n_k A_k[i]`` and the weight vector
``sum_{k: r_k > i} n_k``: their ratio is exactly PreLort's segment-wise average (segments only
group indices with equal holders), and an index nobody holds (weight 0) keeps its global value.
Heads work the same way with one weight each.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from prelort.adapters.state import LORA_A, LORA_B, MERGED, AdapterState, is_head_key, lora_modules
from prelort.aggregation.base import ClientUpdate
from prelort.aggregation.prelort import divided_by_holders

WEIGHT = "#weight"  # suffix of the weight that goes with a module's rank axis or with a head


def secure_share(update: ClientUpdate, global_state: Mapping[str, torch.Tensor]) -> AdapterState:
    """What one client adds into the secure sum (float64, the shapes of the rank-R global adapter).

    Args:
        update: the client's rank-r update (A (r, in), B (out, r), heads it trained).
        global_state: the rank-R global adapter (gives R and the head keys).

    Returns:
        ``<module>.lora_a`` n·A padded to (R, in), ``<module>.lora_b`` n·B padded to (out, R),
        ``<module>#weight`` (R,) with n on the first r entries, each head key n·head (zeros if
        the client did not train it) with ``<head>#weight`` (1,) n or 0.
    """
    n, rank = float(update.num_examples), update.rank
    share: AdapterState = {}
    for module in lora_modules(global_state):
        a, b = global_state[module + LORA_A], global_state[module + LORA_B]  # (R, in), (out, R)
        padded_a = torch.zeros(a.shape, dtype=torch.float64)
        padded_b = torch.zeros(b.shape, dtype=torch.float64)
        padded_a[:rank] = n * update.state[module + LORA_A].double()  # (r, in)
        padded_b[:, :rank] = n * update.state[module + LORA_B].double()  # (out, r)
        weight = torch.zeros(a.shape[0], dtype=torch.float64)
        weight[:rank] = n
        share[module + LORA_A], share[module + LORA_B] = padded_a, padded_b
        share[module + WEIGHT] = weight
    for key, value in global_state.items():
        if not is_head_key(key):
            continue
        held = key in update.state
        share[key] = n * update.state[key].double() if held else torch.zeros_like(value).double()
        share[key + WEIGHT] = torch.tensor([n if held else 0.0], dtype=torch.float64)
    return share


def sum_shares(shares: Iterable[Mapping[str, torch.Tensor]]) -> AdapterState:
    """The element-wise sum the secure aggregation protocol reveals (here computed in the clear)."""
    total: AdapterState = {}
    for share in shares:
        for key, value in share.items():
            total[key] = total[key] + value if key in total else value.clone()
    return total


def segmentwise_from_sums(
    global_state: Mapping[str, torch.Tensor], total: Mapping[str, torch.Tensor]
) -> AdapterState:
    """PreLort's new global adapter from the summed shares: each rank index divided by its weight.

    Indices and heads of weight 0 (no client held them) keep their global value; a FLoRA merged
    term is carried over unchanged.
    """
    out: AdapterState = {}
    for module in lora_modules(global_state):
        key_a, key_b = module + LORA_A, module + LORA_B
        out[key_a], out[key_b] = divided_by_holders(
            global_state[key_a],
            global_state[key_b],
            total[key_a],
            total[key_b],
            total[module + WEIGHT],
        )
    for key, value in global_state.items():
        if key.endswith(MERGED):
            out[key] = value.detach().clone()
        elif is_head_key(key):
            weight = float(total[key + WEIGHT])
            out[key] = (total[key] / weight).float() if weight > 0 else value.detach().clone()
    return out
