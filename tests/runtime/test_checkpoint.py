"""The method's own part of the server state survives a checkpoint, also from older files; a resumed
run keeps what its trained rounds depended on."""

import dataclasses

import pytest
import torch

from prelort.errors import ConfigError
from prelort.io import load_adapter, save_adapter
from prelort.runtime.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    check_schedule_unchanged,
    load_checkpoint,
    save_checkpoint,
)

CONFIG = {
    "model": "m",
    "task": "t",
    "method": "flora",
    "max_rank": 2,
    "alpha": 4.0,
    "target_modules": None,
    "head": "shared",
}


def checkpoint(memory):
    state = {"m.lora_a": torch.ones(2, 3), "m.lora_b": torch.zeros(4, 2)}
    return Checkpoint(1, state, [2, 2], [], [], memory, CONFIG)


def test_the_method_memory_round_trips(tmp_path):
    save_checkpoint(tmp_path, checkpoint(42))
    assert load_checkpoint(tmp_path).memory == 42
    save_checkpoint(tmp_path, checkpoint(None))
    assert load_checkpoint(tmp_path).memory is None


def test_a_checkpoint_written_before_method_memory_still_resumes_flora(tmp_path):
    save_checkpoint(tmp_path, checkpoint(7))
    state, meta = load_adapter(tmp_path / CHECKPOINT_NAME)
    meta["previous_stack_numel"] = meta.pop("method_memory")  # the older key
    save_adapter(tmp_path / CHECKPOINT_NAME, state, meta)
    assert load_checkpoint(tmp_path).memory == 7


def test_the_wall_time_so_far_round_trips_and_older_files_read_zero(tmp_path):
    save_checkpoint(tmp_path, dataclasses.replace(checkpoint(None), wall_seconds=1234.567))
    assert load_checkpoint(tmp_path).wall_seconds == 1234.57
    state, meta = load_adapter(tmp_path / CHECKPOINT_NAME)
    del meta["wall_seconds"]  # written before the checkpoint kept it
    save_adapter(tmp_path / CHECKPOINT_NAME, state, meta)
    assert load_checkpoint(tmp_path).wall_seconds == 0.0


def test_a_decaying_step_is_resumed_only_over_the_same_rounds():
    def started(**config):
        return Checkpoint(1, {}, [2, 2], [], [], None, {**CONFIG, "rounds": 4, **config})

    check_schedule_unchanged(started(), "constant", 8)  # written before schedules: constant
    check_schedule_unchanged(started(lr_schedule="constant"), "constant", 8)  # more rounds extend
    check_schedule_unchanged(started(lr_schedule="cosine"), "cosine", 4)  # an interrupted run
    with pytest.raises(ConfigError, match="decays its step over 4 rounds"):
        check_schedule_unchanged(started(lr_schedule="cosine"), "cosine", 8)
    with pytest.raises(ConfigError, match="lr_schedule: the run was started with constant"):
        check_schedule_unchanged(started(), "cosine", 4)
