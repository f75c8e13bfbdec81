"""Server state saved after every round, so a crash costs at most the round in flight.

One file, ``OUT/checkpoint.safetensors``, holds the global adapter and, as JSON metadata, the round
number, the client ranks (HetLoRA prunes them), the metric and traffic history and the config. It
is written atomically (temporary file, fsync, rename). Client sampling, failures and training
streams derive from (seed, round, client), so no generator state needs saving.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prelort.adapters.state import AdapterState
from prelort.errors import ConfigError
from prelort.io import load_adapter, save_adapter

CHECKPOINT_NAME = "checkpoint.safetensors"


@dataclass(frozen=True)
class Checkpoint:
    """The server state after ``round`` completed rounds."""

    round: int
    global_state: AdapterState
    client_ranks: list[int]
    rounds: list[dict[str, Any]]
    traffic: list[dict[str, Any]]
    previous_stack_numel: int
    config: dict[str, Any]


def save_checkpoint(out_dir: Path, checkpoint: Checkpoint) -> None:
    meta = {
        "round": checkpoint.round,
        "client_ranks": checkpoint.client_ranks,
        "rounds": checkpoint.rounds,
        "traffic": checkpoint.traffic,
        "previous_stack_numel": checkpoint.previous_stack_numel,
        "config": checkpoint.config,
    }
    save_adapter(out_dir / CHECKPOINT_NAME, checkpoint.global_state, meta)


def load_checkpoint(out_dir: Path) -> Checkpoint:
    """Read ``OUT/checkpoint.safetensors``.

    Raises:
        ConfigError: no checkpoint in ``out_dir``.
        AdapterError: a corrupted checkpoint file.
    """
    path = out_dir / CHECKPOINT_NAME
    if not path.is_file():
        raise ConfigError(f"resume: no {CHECKPOINT_NAME} in {out_dir}")
    state, meta = load_adapter(path)
    return Checkpoint(
        int(meta["round"]),
        {k: v.clone() for k, v in state.items()},
        list(meta["client_ranks"]),
        list(meta["rounds"]),
        list(meta["traffic"]),
        int(meta["previous_stack_numel"]),
        dict(meta["config"]),
    )


def same_tensors(a: AdapterState, b: AdapterState) -> bool:
    """Bitwise equality of two states (used by the resume check)."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
