"""Written files and folders follow the user's umask (a shared results folder stays readable)."""

import os
import stat

import torch

from prelort.adapters.peft_io import write_peft_adapter
from prelort.io import finite_or_none, write_json


def test_modes_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
        state = {"m.lora_a": torch.zeros(2, 3), "m.lora_b": torch.zeros(4, 2)}
        write_peft_adapter(tmp_path / "peft", state, {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "peft").stat().st_mode) == 0o755


def test_json_is_strict_with_null_for_undefined_numbers(tmp_path):
    write_json(tmp_path / "m.json", {"loss": float("nan"), "x": [1.0, float("inf")]})
    assert (tmp_path / "m.json").read_text().split() == [
        "{",
        '"loss":',
        "null,",
        '"x":',
        "[",
        "1.0,",
        "null",
        "]",
        "}",
    ]
    assert finite_or_none((1.0, float("-inf"))) == [1.0, None]
