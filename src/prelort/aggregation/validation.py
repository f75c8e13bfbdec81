"""Checking a client update before it may touch the global adapter.

A hostile or broken client must not poison the global state: an update with NaN or Inf, factors
whose shapes do not match its claimed rank, a rank above R or off the ladder, keys that differ
from the global adapter's, or an update norm above a bound is rejected with a reason. The check is
a pure function; the caller logs the reason and aggregates the rest.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch

from prelort.adapters.heads import split_head_key
from prelort.adapters.norms import update_norm
from prelort.adapters.state import LORA_A, LORA_B, MERGED, is_head_key, is_lora_key, lora_modules


def update_problem(
    state: Mapping[str, torch.Tensor],
    rank: int,
    global_state: Mapping[str, torch.Tensor],
    allowed_ranks: Collection[int] | None = None,
    max_norm: float | None = None,
    scale: float = 1.0,
) -> str | None:
    """Why an update must be rejected, or None if it is acceptable.

    Args:
        state: the client's adapter: A (rank, in), B (out, rank), dense head tensors.
        rank: the rank the client claims.
        global_state: the rank-R global adapter the update must fit.
        allowed_ranks: ranks a client may hold (the ladder); None allows any rank <= R.
        max_norm: bound on ``||s B A||_F`` over all modules; None disables it.
        scale: the LoRA scale s.
    """
    max_rank = global_state[lora_modules(global_state)[0] + LORA_A].shape[0]
    if not isinstance(rank, int) or rank < 1 or rank > max_rank:
        return f"rank {rank} is outside [1, {max_rank}]"
    if allowed_ranks is not None and rank not in allowed_ranks:
        return f"rank {rank} is not one of the ranks in use {sorted(allowed_ranks)}"
    lora_keys = {k for k in global_state if is_lora_key(k)}
    head_keys = {k for k in global_state if is_head_key(k)}
    got = {k for k in state if not k.endswith(MERGED)}
    # per-tier heads: a client sends only the tiers it trained; a shared head must be sent whole
    shared_head = all(split_head_key(k)[1] is None for k in head_keys)
    missing = sorted((lora_keys | head_keys if shared_head else lora_keys) - got)
    unknown = sorted(got - lora_keys - head_keys)
    if missing or unknown:
        return f"keys differ from the global adapter (missing {missing[:2]}, unknown {unknown[:2]})"
    above = sorted(k for k in got if (split_head_key(k)[1] or 0) > rank)
    if above:
        return f"a rank-{rank} client sent heads of higher tiers: {above[:2]}"
    for key, value in state.items():
        if key.endswith(MERGED):
            continue
        reference = global_state[key]
        if key.endswith(LORA_A):
            shape = (rank, reference.shape[1])
        elif key.endswith(LORA_B):
            shape = (reference.shape[0], rank)
        else:
            shape = tuple(reference.shape)
        if tuple(value.shape) != shape:
            return f"{key} has shape {tuple(value.shape)}, expected {shape} for rank {rank}"
        if not value.is_floating_point():
            return f"{key} has dtype {value.dtype}, not a float"
        if not torch.isfinite(value).all():
            return f"{key} holds NaN or Inf"
    if max_norm is not None:
        norm = update_norm({k: v for k, v in state.items() if k.endswith((LORA_A, LORA_B))}, scale)
        if norm > max_norm:
            return f"update norm {norm:.4g} is above the bound {max_norm:.4g}"
    return None
