"""Where tensors live and in what precision: device names, the base model's dtype, autocast.

The rule everywhere: a tensor that meets model tensors is made on their device; what crosses the
wire or goes to a file is a CPU tensor (``adapters.state.get_state``). A client's device holds the
model, its adapter, head, batches and optimizer state; the server's aggregation runs on its own
device (``server_device``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from prelort.config.values import check_device_name
from prelort.errors import ConfigError

HALF_DTYPES = (torch.bfloat16, torch.float16)
CPU = torch.device("cpu")


def cuda_available() -> bool:
    return torch.cuda.is_available()


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str, field: str = "device") -> torch.device:
    """The ``torch.device`` a device setting means on this machine (``auto``: CUDA if present).

    Raises:
        ConfigError: a bad name, or a device this machine does not have.
    """
    check_device_name(field, name)
    if name == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not cuda_available():
            raise ConfigError(
                f"{field}: {name!r} asked for, but torch {torch.__version__} sees no CUDA GPU "
                "(install a CUDA build of torch, or use --device cpu)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"{field}: {name!r} asked for, but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    if device.type == "mps" and not mps_available():
        raise ConfigError(f"{field}: 'mps' asked for, but this machine has no MPS device")
    return device


def base_dtype(setting: str, device: torch.device, packaged_default: torch.dtype | None = None):
    """The dtype of the frozen base weights.

    ``auto``: bf16 on CUDA (the QLoRA / FlowerTune convention), otherwise the packaged model's own
    measured choice (``packaged_default``) or fp32; a packaged bf16 choice holds only on a CPU that
    computes bf16 natively (SmolLM2's forward in emulated bf16 took 6x its fp32 time on an AVX2-only
    CPU). Adapters stay fp32 whatever this is.
    """
    if setting != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            setting
        ]
    if device.type == "cuda":
        return torch.bfloat16
    if packaged_default == torch.bfloat16 and not has_native_bf16(device):
        return torch.float32
    return packaged_default or torch.float32


@functools.cache
def cpu_has_native_bf16() -> bool | None:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX); None: unknown.

    Without it a bf16 base is emulated and can be slower than fp32 on the CPU.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return None  # not Linux: cannot tell
    return "avx512_bf16" in flags or "amx_bf16" in flags


def emulates_bf16(device: torch.device, dtype: torch.dtype | None) -> bool:
    """A bf16 computation on a CPU known to lack native bf16: worth a warning."""
    return device.type == "cpu" and dtype == torch.bfloat16 and cpu_has_native_bf16() is False


def has_native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 natively: a CUDA device that supports it, or a CPU with
    AVX512-BF16 or AMX. An unknown CPU (not Linux) and MPS count as not native."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)  # Ampere and later
    return device.type == "cpu" and cpu_has_native_bf16() is True


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype a ``train_dtype`` / ``eval_dtype`` setting asks for on ``device``.

    None: no autocast of its own (``auto``, or ``bfloat16-if-native`` where bf16 would be emulated),
    so the forwards run in the base's precision.
    """
    if setting == "auto":
        return None
    if setting == "bfloat16-if-native":
        return torch.bfloat16 if has_native_bf16(device) else None
    return base_dtype(setting, device)


def uses_autocast(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether forwards run under autocast: a 16-bit base on a GPU.

    On a GPU the adapter's fp32 master weights then meet the base in 16-bit matmuls (the QLoRA
    recipe). On the CPU the layer casts between the two itself, as it always has: CPU autocast
    would change the numbers of every existing CPU run for no speed gain.
    """
    return device.type in ("cuda", "mps") and dtype in HALF_DTYPES


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` to ``dtype`` on ``device``; nothing when ``dtype`` is None."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch of CPU tensors on ``device``; on the CPU, the same tensors.

    The batches are a few kilobytes of token ids, so they are not pinned (``non_blocking`` on
    unpinned memory copies synchronously).
    """
    if device.type == "cpu":
        return dict(batch)
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def state_to(state: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of an adapter state on ``device`` (the same objects where already there)."""
    return {k: v.to(device) for k, v in state.items()}


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that a wall-clock time covers the work (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
