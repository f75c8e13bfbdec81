"""Merging PEFT LoRA adapters of different ranks, and exporting a nested adapter's prefix to PEFT.

The same aggregation functions as the federation do the math; this module only maps PEFT folders
to adapter states (scale folded into B, so every input has scale 1) and back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from prelort.adapters.peft_io import (
    PeftAdapter,
    check_compatible,
    read_peft_adapter,
    write_peft_adapter,
)
from prelort.adapters.state import (
    LORA_A,
    LORA_B,
    MERGED,
    AdapterState,
    lora_modules,
    nonfinite_keys,
    slice_to_rank,
    split_head,
    state_rank,
)
from prelort.aggregation import ClientUpdate, get_method
from prelort.errors import AdapterError, ConfigError
from prelort.io import load_adapter


def _zeros(adapters: Sequence[PeftAdapter], rank: int) -> AdapterState:
    first = adapters[0].state
    out: AdapterState = {k: torch.zeros_like(v) for k, v in split_head(first)[1].items()}
    for module in lora_modules(first):
        out[module + LORA_A] = torch.zeros(rank, first[module + LORA_A].shape[1])
        out[module + LORA_B] = torch.zeros(first[module + LORA_B].shape[0], rank)
    return out


def check_weights(weights: Sequence[float], count: int) -> list[float]:
    """The weights, if there is one finite weight > 0 per adapter.

    Raises:
        ConfigError: a wrong count, or a weight that is NaN, infinite, zero or negative.
    """
    if len(weights) != count or any(not math.isfinite(w) or w <= 0 for w in weights):
        raise ConfigError(f"weights: need {count} finite weights > 0, got {list(weights)}")
    return list(weights)


def merge_adapters(
    adapters: Sequence[PeftAdapter],
    method: str,
    weights: Sequence[float] | None = None,
    rank: int | None = None,
) -> AdapterState:
    """Merge adapters (scale folded into B) into one state of scale 1, by any registered method.

    Output rank: the largest input rank, except where the method says otherwise (``Method.merge``:
    flexlora may choose a lower one with ``rank``; flora stacks to the sum of the ranks).
    ``fedavg`` is plain FedAvg: zero-padding over adapters of one rank.

    Raises:
        ConfigError: an unknown method, bad weights or a ``rank`` the method cannot honour.
        AdapterError: incompatible adapters.
    """
    if method == "fedavg" and len({a.rank for a in adapters}) > 1:
        raise ConfigError(
            "fedavg needs adapters of one rank; use prelort-ordered-a, prelort, zeropad, "
            "flexlora, flora or another method of `prelort methods`"
        )
    chosen = get_method("zeropad" if method == "fedavg" else method)
    if not adapters:
        raise ConfigError("give at least one adapter folder")
    check_compatible(list(adapters))
    weights = [1.0] * len(adapters) if weights is None else check_weights(weights, len(adapters))
    updates = [
        ClientUpdate(k, a.state, a.rank, w)
        for k, (a, w) in enumerate(zip(adapters, weights, strict=True))
    ]
    return chosen.served(chosen.merge(updates, partial(_zeros, adapters), rank))


def aggregate_folders(
    folders: Sequence[Path],
    out: Path,
    method: str,
    weights: Sequence[float] | None = None,
    rank: int | None = None,
) -> int:
    """Read PEFT folders, merge them, write one PEFT folder; returns the output rank."""
    adapters = [read_peft_adapter(Path(f)) for f in folders]
    merged = merge_adapters(adapters, method, weights, rank)
    lora, head = split_head(merged)
    write_peft_adapter(out, lora, adapters[0].config, head=head)
    return state_rank(merged)


def peft_module_name(module: str) -> str:
    """PEFT's key prefix for a module of the base model."""
    return f"base_model.model.{module}"


def export_prefix(adapter_file: Path, rank: int, out: Path) -> dict[str, Any]:
    """Write the rank-``rank`` prefix of a prelort global adapter as a PEFT LoRA folder.

    A classification head goes with it the PEFT way (``modules_to_save``): the tier's own head
    with per-tier heads (the largest tier <= rank), else the shared one. The base model is named
    by a path or hub id PEFT can load (a packaged alias is resolved to its folder).

    Raises:
        AdapterError: an unreadable adapter, a rank above its R, or metadata without a scale.
    """
    from prelort.adapters.heads import split_head_key, tier_of
    from prelort.models import PACKAGED_MODELS, resolve_model_path

    state, meta = load_adapter(adapter_file)
    bad = nonfinite_keys(state)
    if bad:
        raise AdapterError(f"{adapter_file}: holds NaN or Inf in {bad[:3]}; nothing exported")
    held = state_rank(state)
    if not 1 <= rank <= held:
        raise AdapterError(f"rank: {rank} is outside [1, {held}] for {adapter_file}")
    if any(k.endswith(MERGED) for k in state):
        raise AdapterError(
            f"{adapter_file}: a FLoRA adapter is merged into the base and has no rank prefix"
        )
    if "scale" not in meta:
        raise AdapterError(
            f"{adapter_file}: its metadata has no LoRA scale (alpha / R); re-save it with prelort"
        )
    prefix_factors, _ = split_head(slice_to_rank(state, rank))
    lora = {
        peft_module_name(k.rsplit(".", 1)[0]) + "." + k.rsplit(".", 1)[1]: v
        for k, v in prefix_factors.items()
    }
    heads = split_head(state)[1]
    tiers = sorted({t for k in heads if (t := split_head_key(k)[1]) is not None})
    tier = tier_of(rank, tiers) if tiers else None
    head = {split_head_key(k)[0]: v for k, v in heads.items() if split_head_key(k)[1] == tier}
    model = meta.get("model")
    base = resolve_model_path(model) if model in PACKAGED_MODELS else model
    template = {
        "base_model_name_or_path": base,
        "task_type": "SEQ_CLS" if head else "CAUSAL_LM",
    }
    write_peft_adapter(out, lora, template, scale=float(meta["scale"]), head=head)
    return {"rank": rank, "modules": len(lora) // 2, "head": sorted(head), "head_tier": tier}
