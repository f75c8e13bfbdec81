"""What a run ran with: package versions and the device, for metrics.json."""

from __future__ import annotations

import platform
from importlib import metadata

import torch

from prelort import __version__
from prelort.device import resolve_device

PACKAGES = ("torch", "transformers", "peft", "flwr", "bitsandbytes")


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment(device: str = "auto") -> dict[str, object]:
    """Versions of prelort, Python and the libraries a run depends on, and the client device."""
    where = resolve_device(device)
    record: dict[str, object] = {
        "prelort": __version__,
        "python": platform.python_version(),
        **{name: package_version(name) for name in PACKAGES},
        "device": str(where),
    }
    if where.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(where)
    return record
