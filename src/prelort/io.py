"""Atomic file writes and adapter files.

A file is written to a temporary sibling, flushed and fsynced, then renamed over the target, so a
crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from prelort.errors import AdapterError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_staging_dir(parent: Path, prefix: str) -> Path:
    """A temporary folder in ``parent`` with the mode ``mkdir`` would give (0777 less the umask).

    Folders are built in it and renamed into place; ``mkdtemp``'s 0700 would otherwise keep a
    shared results folder from colleagues.
    """
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    staging.chmod(0o777 & ~_umask())
    return staging


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers never see a partial file.

    The file gets the mode a plain ``open`` would give (0666 less the umask), not ``mkstemp``'s 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def finite_or_none(data: Any) -> Any:
    """``data`` with every NaN or infinite float replaced by None (JSON ``null``)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite_or_none(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite_or_none(v) for v in data]
    return data


def write_json(path: Path, data: Any) -> None:
    """Strict JSON (``null`` where a number is undefined, never a bare NaN), written atomically."""
    text = json.dumps(finite_or_none(data), indent=2, sort_keys=False, allow_nan=False)
    atomic_write_text(path, text + "\n")


def save_adapter(
    path: Path, state: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]
) -> None:
    """Save an adapter state as safetensors with JSON-encoded metadata (model, ranks, scale)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    meta = {k: json.dumps(v) for k, v in metadata.items()}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def load_adapter(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load an adapter saved by ``save_adapter``.

    Raises:
        AdapterError: a missing, truncated or corrupted file; the message names it.
    """
    meta = read_adapter_metadata(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"{path}: not a readable safetensors file ({e})") from None
    return state, meta


def read_adapter_metadata(path: Path) -> dict[str, Any]:
    """The metadata of a file saved by ``save_adapter``, read from its header alone (no tensors).

    Raises:
        AdapterError: a missing or unreadable file, or metadata that is not JSON; the message names it.
    """
    if not path.is_file():
        raise AdapterError(f"adapter file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        return {k: json.loads(v) for k, v in raw.items()}
    except json.JSONDecodeError:
        raise AdapterError(f"{path}: its metadata is not JSON") from None


def file_sha256(name: str) -> str | None:
    """The SHA-256 of a task given as a file (None for a packaged task name)."""
    path = Path(name)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
