"""Reading and writing PEFT LoRA adapter folders.

A PEFT folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` with keys
``<prefix>.<module>.lora_A.weight`` (r, in) and ``...lora_B.weight`` (out, r). Its scale is
``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with ``use_rslora``). Read adapters get that scale
folded into B, so that every adapter of any rank is ``B @ A`` with scale 1 and they can be averaged;
written adapters declare ``lora_alpha = r`` (scale 1) so PEFT reproduces the product exactly.
"""

from __future__ import annotations

import json
import math
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from prelort.adapters.state import (
    LORA_A,
    LORA_B,
    AdapterState,
    lora_modules,
    split_head,
    state_rank,
)
from prelort.errors import AdapterError
from prelort.io import make_staging_dir

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_A, PEFT_B = ".lora_A.weight", ".lora_B.weight"
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class PeftAdapter:
    """A PEFT LoRA adapter with its scale folded into B.

    Attributes:
        path: the folder it was read from.
        config: its ``adapter_config.json``.
        state: ``<module>.lora_a`` (r, in) and ``<module>.lora_b`` (out, r) with B scaled.
        rank: r.
    """

    path: Path
    config: dict[str, Any]
    state: AdapterState
    rank: int


def saved_head_name(key: str, saved_modules: tuple[str, ...]) -> str | None:
    """``base_model.model.classifier.weight`` -> ``classifier.weight`` when ``classifier`` is one
    of the config's ``modules_to_save``; None for any other key."""
    name = key.removeprefix(PEFT_PREFIX)
    owner = name.rpartition(".")[0]
    return name if name != key and owner in saved_modules else None


def peft_scale(config: Mapping[str, Any], rank: int) -> float:
    alpha = float(config.get("lora_alpha", rank))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def read_peft_adapter(folder: Path) -> PeftAdapter:
    """Read a PEFT LoRA folder; fold its scale into B.

    Raises:
        AdapterError: a missing or unreadable config or weights file, a non-LoRA adapter, keys
            that do not pair up, a wrong dtype or per-module ranks; the message names the file.
    """
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file():
        raise AdapterError(f"{config_path}: missing (is {folder} a PEFT adapter folder?)")
    if not weights_path.is_file():
        raise AdapterError(f"{weights_path}: missing")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{config_path}: not valid JSON ({e})") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{config_path}: peft_type {config.get('peft_type')!r} is not LORA")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise AdapterError(f"{config_path}: per-module rank_pattern/alpha_pattern is not supported")
    try:
        raw = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"{weights_path}: not a readable safetensors file ({e})") from None
    state: AdapterState = {}
    saved_modules = tuple(config.get("modules_to_save") or ())
    for key, tensor in raw.items():
        if not tensor.is_floating_point():
            raise AdapterError(f"{weights_path}: {key} has dtype {tensor.dtype}, not a float")
        if not torch.isfinite(tensor).all():
            raise AdapterError(f"{weights_path}: {key} holds NaN or Inf")
        if key.endswith(PEFT_A):
            state[key[: -len(PEFT_A)] + LORA_A] = tensor.float()
        elif key.endswith(PEFT_B):
            state[key[: -len(PEFT_B)] + LORA_B] = tensor.float()
        elif (head := saved_head_name(key, saved_modules)) is not None:
            state[head] = tensor.float()  # a task head PEFT trained and saved whole
        else:
            raise AdapterError(
                f"{weights_path}: unsupported key {key!r} (only lora_A / lora_B and the "
                "modules_to_save of its config)"
            )
    try:
        rank = state_rank(state)
    except AdapterError as e:
        raise AdapterError(f"{weights_path}: {e}") from None
    if int(config.get("r", rank)) != rank:
        raise AdapterError(
            f"{config_path}: declares r={config.get('r')} but the weights have rank {rank}"
        )
    scale = peft_scale(config, rank)
    for module in lora_modules(state):
        state[module + LORA_B] = state[module + LORA_B] * scale
    return PeftAdapter(folder, config, state, rank)


def write_peft_adapter(
    folder: Path,
    state: Mapping[str, torch.Tensor],
    template: Mapping[str, Any],
    scale: float = 1.0,
    head: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Write ``state`` (scale ``scale``) as a PEFT LoRA folder, atomically.

    The folder appears whole or not at all: it is written to a temporary sibling and renamed.

    Args:
        folder: the output folder (must not exist, or be empty).
        state: ``<peft module>.lora_a`` / ``.lora_b`` tensors of one rank.
        template: an ``adapter_config.json`` to copy fields from (base model, task type).
        scale: the scale of ``state``; folded into B, and the config declares scale 1.
        head: a trained task head by the model's parameter names (``classifier.weight``); saved
            as PEFT saves ``modules_to_save`` (``base_model.model.classifier.weight``), which
            ``PeftModel.from_pretrained`` loads into the head it wraps.
    """
    rank = state_rank(state)
    modules = lora_modules(state)
    tensors = {}
    for module in modules:
        tensors[module + PEFT_A] = state[module + LORA_A].contiguous().float()
        tensors[module + PEFT_B] = (state[module + LORA_B] * scale).contiguous().float()
    for name, value in (head or {}).items():
        tensors[f"{PEFT_PREFIX}{name}"] = value.contiguous().float()
    config = {
        "peft_type": "LORA",
        "base_model_name_or_path": template.get("base_model_name_or_path"),
        "task_type": template.get("task_type"),
        "target_modules": sorted({m.rsplit(".", 1)[-1] for m in modules}),
        "r": rank,
        "lora_alpha": rank,  # scale 1: the scale is already in B
        "lora_dropout": 0.0,
        "use_rslora": False,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    if head:
        config["modules_to_save"] = sorted({name.rpartition(".")[0] for name in head})
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise AdapterError(f"{folder}: the output folder exists and is not empty")
    if folder.exists() and not folder.stat().st_mode & stat.S_IWUSR:
        raise AdapterError(f"{folder}: the output folder is read-only; it is left as it is")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging_dir(folder.parent, f".{folder.name}.")
    try:
        save_file(tensors, str(staging / WEIGHTS_NAME))
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if folder.exists():
            folder.rmdir()
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def same_base_model(a: str, b: str) -> bool:
    """Whether two names denote one base model: a packaged alias and its folder are the same."""
    from prelort.models import PACKAGED_MODELS, resolve_model_path

    def where(name: str) -> str:
        if name in PACKAGED_MODELS:
            name = resolve_model_path(name)
        path = Path(name)
        return str(path.resolve()) if path.exists() else name

    return a == b or where(a) == where(b)


def check_compatible(adapters: list[PeftAdapter]) -> None:
    """Refuse adapters for different base models, modules or layer shapes, naming the file.

    Raises:
        AdapterError: the first adapter that does not match the first one.
    """
    first = adapters[0]
    shapes = {
        m: (first.state[m + LORA_A].shape[1], first.state[m + LORA_B].shape[0])
        for m in lora_modules(first.state)
    }
    for other in adapters[1:]:
        where = other.path / WEIGHTS_NAME
        base_a = first.config.get("base_model_name_or_path")
        base_b = other.config.get("base_model_name_or_path")
        if base_a and base_b and not same_base_model(base_a, base_b):
            raise AdapterError(
                f"{other.path / CONFIG_NAME}: base model {base_b!r} != {base_a!r} of {first.path}"
            )
        heads_a = {k: tuple(v.shape) for k, v in split_head(first.state)[1].items()}
        heads_b = {k: tuple(v.shape) for k, v in split_head(other.state)[1].items()}
        if heads_a != heads_b:
            raise AdapterError(
                f"{where}: its task head {heads_b or 'none'} differs from {first.path}'s "
                f"{heads_a or 'none'}"
            )
        mods = lora_modules(other.state)
        if set(mods) != set(shapes):
            diff = sorted(set(mods) ^ set(shapes))[:3]
            raise AdapterError(f"{where}: adapts other modules than {first.path} ({diff})")
        for m in mods:
            shape = (other.state[m + LORA_A].shape[1], other.state[m + LORA_B].shape[0])
            if shape != shapes[m]:
                raise AdapterError(
                    f"{where}: {m} has (in, out) {shape}, {first.path} has {shapes[m]}"
                )
