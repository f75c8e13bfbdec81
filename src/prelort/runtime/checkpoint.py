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

from prelort.adapters.state import AdapterState, nonfinite_keys
from prelort.errors import AdapterError, ConfigError
from prelort.federation.records import RoundRecord, TrafficRecord
from prelort.io import file_sha256, load_adapter, save_adapter

CHECKPOINT_NAME = "checkpoint.safetensors"


@dataclass(frozen=True)
class Checkpoint:
    """The server state after ``round`` completed rounds (``memory``: the method's own part;
    ``task_sha256``: the task file's digest, when the task is a file, so a resume can refuse a
    file that changed; ``wall_seconds``: the run's wall time up to this round, over every leg of
    a resumed run, so its final wall time is the whole run's and not the last leg's)."""

    round: int
    global_state: AdapterState
    client_ranks: list[int]
    rounds: list[RoundRecord]
    traffic: list[TrafficRecord]
    memory: Any
    config: dict[str, Any]
    task_sha256: str | None = None
    wall_seconds: float = 0.0


def adapter_metadata(config: dict[str, Any], ladder: list[int]) -> dict[str, Any]:
    """What a global adapter file says about itself: enough to export or reuse it alone."""
    return {
        "model": config["model"],
        "task": config["task"],
        "method": config["method"],
        "max_rank": config["max_rank"],
        "alpha": config["alpha"],
        "scale": config["alpha"] / config["max_rank"],
        "ladder": ladder,
        "target_modules": config["target_modules"],
        "head": config.get("head"),
    }


def save_checkpoint(out_dir: Path, checkpoint: Checkpoint) -> None:
    """Write the checkpoint atomically; its metadata also describes the adapter (scale, model)."""
    ladder = sorted({int(t) for r in checkpoint.rounds for t in r["tiers"]})
    meta = {
        **adapter_metadata(checkpoint.config, ladder),
        "round": checkpoint.round,
        "client_ranks": checkpoint.client_ranks,
        "rounds": checkpoint.rounds,
        "traffic": checkpoint.traffic,
        "method_memory": checkpoint.memory,
        "task_sha256": checkpoint.task_sha256,
        "wall_seconds": round(checkpoint.wall_seconds, 2),
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
    bad = nonfinite_keys(state)
    if bad:
        raise AdapterError(f"{path}: holds NaN or Inf in {bad[:3]}; it cannot be resumed")
    missing = [k for k in ("round", "client_ranks", "rounds", "traffic", "config") if k not in meta]
    if missing:
        raise AdapterError(f"{path}: not a prelort checkpoint (its metadata lacks {missing})")
    return Checkpoint(
        int(meta["round"]),
        {k: v.clone() for k, v in state.items()},
        list(meta["client_ranks"]),
        list(meta["rounds"]),
        list(meta["traffic"]),
        meta.get("method_memory", meta.get("previous_stack_numel")),  # older files: FLoRA's
        dict(meta["config"]),
        meta.get("task_sha256"),
        float(meta.get("wall_seconds", 0.0)),  # older files: the resumed leg's time only
    )


def check_schedule_unchanged(checkpoint: Checkpoint, lr_schedule: str, rounds: int) -> None:
    """Refuse to resume a run whose step decays over its rounds with other rounds or another schedule.

    A cosine step is laid out over the run's length: a resumed run with more rounds would have
    trained its first rounds at other steps, so it would not be the uninterrupted run.

    Raises:
        ConfigError: the schedule or, under a decaying schedule, the rounds differ.
    """
    before = checkpoint.config.get("lr_schedule", "constant")  # older checkpoints: constant
    if before == lr_schedule == "constant":
        return
    if before != lr_schedule:
        raise ConfigError(
            f"lr_schedule: the run was started with {before}; a resumed run keeps its schedule"
        )
    if rounds != checkpoint.config["rounds"]:
        raise ConfigError(
            f"rounds: the run decays its step over {checkpoint.config['rounds']} rounds "
            f"(lr_schedule {lr_schedule}); other rounds would change the rounds already run"
        )


def check_task_unchanged(checkpoint: Checkpoint, task: str) -> None:
    """Refuse to resume a run whose task file changed since the checkpoint was written.

    Raises:
        ConfigError: the file's SHA-256 differs from the one the checkpoint recorded.
    """
    if checkpoint.task_sha256 is None:
        return  # a packaged task, or a checkpoint written before digests were kept
    now = file_sha256(task)
    if now != checkpoint.task_sha256:
        found = "is gone" if now is None else f"now {now[:12]}..."
        raise ConfigError(
            f"task: {task} changed since the run started (SHA-256 {checkpoint.task_sha256[:12]}..., "
            f"{found}); a resumed run must train on the same data: start a new run instead"
        )
