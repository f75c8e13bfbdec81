"""Nested LoRA adapters: the layer, injection into models, and state slicing / padding."""

from prelort.adapters.inject import NestedLoRAModel, default_target_modules, inject_nested_lora
from prelort.adapters.layer import NestedLoRALinear
from prelort.adapters.state import (
    AdapterState,
    get_state,
    is_lora_key,
    lora_modules,
    pad_to_rank,
    set_state,
    slice_to_rank,
    state_rank,
)

__all__ = [
    "AdapterState",
    "NestedLoRALinear",
    "NestedLoRAModel",
    "default_target_modules",
    "get_state",
    "inject_nested_lora",
    "is_lora_key",
    "lora_modules",
    "pad_to_rank",
    "set_state",
    "slice_to_rank",
    "state_rank",
]
