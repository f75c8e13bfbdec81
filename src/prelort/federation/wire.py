"""The number format of adapters on the wire: fp32, or a 16-bit format that halves the traffic.

The sender casts its tensors to the wire format, the receiver computes in fp32 with what arrived:
the simulation round-trips every prefix and reply through the format, the Flower app sends it as
is, so both engines see the same rounded numbers. bfloat16 keeps fp32's range with 8 bits of
mantissa; float16 has 11 bits but overflows above 65504 (an overflowing reply is then non-finite
and the server's checks reject it).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from prelort.adapters.state import AdapterState

WIRE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def on_wire(state: Mapping[str, torch.Tensor], wire_dtype: str) -> AdapterState:
    """The tensors as sent: cast to the wire format (no copy for fp32)."""
    dtype = WIRE_DTYPES[wire_dtype]
    return {k: v.to(dtype) for k, v in state.items()}


def off_wire(state: Mapping[str, torch.Tensor]) -> AdapterState:
    """The tensors as the receiver computes with them: fp32."""
    return {k: v.float() for k, v in state.items()}


def through_wire(state: Mapping[str, torch.Tensor], wire_dtype: str) -> AdapterState:
    """What the receiver gets of ``state``: every number rounded to the wire format."""
    if wire_dtype == "float32":
        return dict(state)
    return off_wire(on_wire(state, wire_dtype))


def wire_bytes(numel: int, wire_dtype: str) -> int:
    """Bytes of ``numel`` numbers in the wire format."""
    return numel * WIRE_DTYPES[wire_dtype].itemsize
