"""The method's own part of the server state survives a checkpoint, also from older files."""

import torch

from prelort.io import load_adapter, save_adapter
from prelort.runtime.checkpoint import CHECKPOINT_NAME, Checkpoint, load_checkpoint, save_checkpoint

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
