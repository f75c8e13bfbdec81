"""Adapter state as a plain ``dict[str, Tensor]``, and the rank arithmetic on it.

Keys ``<module>.lora_a`` hold A of shape (rank, in) and ``<module>.lora_b`` hold B of shape
(out, rank); ``<module>.merged`` (out, in), present only for methods that merge updates into the
base (FLoRA), is a dense term the layer adds to its base; every other key is a dense parameter
without a rank axis (a task head), averaged as in plain FedAvg. A rank-r client state is the rank-r prefix of the global state.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch

from prelort.adapters.heads import head_key, split_head_key
from prelort.adapters.inject import NestedLoRAModel
from prelort.errors import AdapterError

AdapterState = dict[str, torch.Tensor]

LORA_A = ".lora_a"
LORA_B = ".lora_b"
MERGED = ".merged"


def is_lora_key(key: str) -> bool:
    return key.endswith((LORA_A, LORA_B))


def is_head_key(key: str) -> bool:
    """A dense task-head tensor (no rank axis), shared or of one tier (``<name>@<tier>``)."""
    return not is_lora_key(key) and not key.endswith(MERGED)


def split_head(state: Mapping[str, torch.Tensor]) -> tuple[AdapterState, AdapterState]:
    """(LoRA factors, everything else: head tensors) of a state."""
    lora = {k: v for k, v in state.items() if is_lora_key(k)}
    return lora, {k: v for k, v in state.items() if not is_lora_key(k)}


def nonfinite_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The keys whose tensors hold NaN or Inf, sorted."""
    return sorted(k for k, v in state.items() if not torch.isfinite(v).all())


def lora_modules(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the adapted modules in a state, sorted."""
    return sorted({k[: -len(LORA_A)] for k in state if k.endswith(LORA_A)})


def state_rank(state: Mapping[str, torch.Tensor]) -> int:
    """The rank shared by every factor of a state.

    Raises:
        AdapterError: a module lacks A or B, or the factors disagree on the rank.
    """
    ranks: set[int] = set()
    for module in lora_modules(state):
        a, b = state.get(module + LORA_A), state.get(module + LORA_B)
        if a is None or b is None:
            raise AdapterError(f"module {module!r} lacks lora_a or lora_b")
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise AdapterError(
                f"module {module!r}: A {tuple(a.shape)} and B {tuple(b.shape)} are not "
                "(rank, in) and (out, rank)"
            )
        ranks.add(a.shape[0])
    orphans = [k for k in state if k.endswith(LORA_B) and k[: -len(LORA_B)] + LORA_A not in state]
    if orphans:
        raise AdapterError(f"lora_b without lora_a: {orphans[:3]}")
    if len(ranks) != 1:
        raise AdapterError(f"a state must have one rank, found {sorted(ranks) or 'none'}")
    return ranks.pop()


def slice_to_rank(state: Mapping[str, torch.Tensor], rank: int) -> AdapterState:
    """The rank-``rank`` prefix: the first rows of every A, the first columns of every B.

    Per-tier heads of tiers above ``rank`` are left out.

    Raises:
        AdapterError: ``rank`` is above the state's rank or below 1.
    """
    held = state_rank(state)
    if not 1 <= rank <= held:
        raise AdapterError(f"cannot slice a rank-{held} adapter to rank {rank}")
    out: AdapterState = {}
    for key, value in state.items():
        tier = split_head_key(key)[1]
        if tier is not None and tier > rank:
            continue  # the head of a tier above the client's rank is of no use to it
        if key.endswith(LORA_A):
            out[key] = value[:rank].clone()  # (R, in) -> (r, in)
        elif key.endswith(LORA_B):
            out[key] = value[:, :rank].clone()  # (out, R) -> (out, r)
        else:
            out[key] = value.clone()
    return out


def pad_to_rank(state: Mapping[str, torch.Tensor], rank: int) -> AdapterState:
    """Zero-pad every A with rows and every B with columns up to ``rank``.

    Raises:
        AdapterError: ``rank`` is below the state's rank.
    """
    held = state_rank(state)
    if rank < held:
        raise AdapterError(f"cannot pad a rank-{held} adapter to the smaller rank {rank}")
    out: AdapterState = {}
    for key, value in state.items():
        if key.endswith(LORA_A):
            out[key] = torch.cat([value, value.new_zeros(rank - held, value.shape[1])], 0)
        elif key.endswith(LORA_B):
            out[key] = torch.cat([value, value.new_zeros(value.shape[0], rank - held)], 1)
        else:
            out[key] = value.clone()
    return out


def get_state(adapted: NestedLoRAModel, head_tiers: Collection[int] | None = None) -> AdapterState:
    """A detached fp32 CPU copy of the adapter (at the rank its layers hold) and head.

    Args:
        adapted: the model.
        head_tiers: with per-tier heads, the tiers whose heads to include (None: all of them),
            e.g. only those a client trained.
    """
    out: AdapterState = {}
    for name, layer in adapted.layers.items():
        out[name + LORA_A] = layer.lora_a.detach().float().cpu().clone()
        out[name + LORA_B] = layer.lora_b.detach().float().cpu().clone()
        if layer.merged is not None:
            out[name + MERGED] = layer.merged.detach().float().cpu().clone()
    for key, p in head_items(adapted).items():
        tier = split_head_key(key)[1]
        if tier is None or head_tiers is None or tier in head_tiers:
            out[key] = p.detach().float().cpu().clone()
    return out


def head_items(adapted: NestedLoRAModel) -> dict[str, torch.nn.Parameter]:
    """The model's head parameters under their state keys (``name`` or ``name@tier``)."""
    if not adapted.tier_heads:
        return dict(adapted.head)
    return {
        head_key(name, tier): p
        for tier, params in adapted.tier_heads.items()
        for name, p in params.items()
    }


def set_state(
    adapted: NestedLoRAModel, state: Mapping[str, torch.Tensor], heads: bool = True
) -> None:
    """Load a state of any rank <= R into the model; its layers then hold exactly that rank.

    A shared head must be complete; per-tier heads may be a subset (a rank-r client receives the
    tiers up to r), the others keep their values. ``heads=False`` loads the adapter only and
    leaves the model's heads as they are, whatever heads ``state`` carries (the features a head
    reads do not depend on it).

    Raises:
        AdapterError: missing or unknown keys, or shapes that do not fit.
    """
    expected = set(adapted.layers)
    modules = set(lora_modules(state))
    missing = sorted(expected - modules)
    unknown = sorted(modules - expected)
    if missing or unknown:
        raise AdapterError(
            f"adapter modules do not match the model: missing {missing[:3]}, unknown {unknown[:3]}"
        )
    rank = state_rank(state)
    if rank > adapted.max_rank:
        raise AdapterError(f"adapter rank {rank} is above the global max_rank {adapted.max_rank}")
    model_heads = head_items(adapted) if heads else {}
    dense = {k for k in state if is_head_key(k)} if heads else set()
    if not dense <= set(model_heads) or (not adapted.tier_heads and dense != set(model_heads)):
        raise AdapterError(
            f"head parameters do not match: state has {sorted(dense)}, model has {sorted(model_heads)}"
        )
    for name, layer in adapted.layers.items():
        layer.set_factors(state[name + LORA_A], state[name + LORA_B])
        layer.set_merged(state.get(name + MERGED))
    with torch.no_grad():
        for key in dense:
            p = model_heads[key]
            if tuple(state[key].shape) != tuple(p.shape):
                raise AdapterError(
                    f"head {key!r}: shape {tuple(state[key].shape)} != {tuple(p.shape)}"
                )
            p.copy_(state[key])
