"""A LoRA layer whose rank can be truncated at forward time.

The layer holds ``lora_a`` of shape (rank, in) and ``lora_b`` of shape (out, rank). A forward at
active rank r uses only ``lora_a[:r]`` and ``lora_b[:, :r]``: the adapter of rank r is the rank-r
prefix of the adapter, so every truncation is a slice.

The scale is fixed when the layer is made (``alpha / max_rank`` by default) and does not depend on
r. A scale of ``alpha / r`` (PEFT's) would rescale the prefix whenever the rank changes, so the
low-rank prefix trained inside a high-rank client would mean something else when used alone.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from prelort.errors import AdapterError


class NestedLoRALinear(nn.Module):
    """``base(x) + scale * x @ A[:r].T @ B[:, :r].T`` around a frozen ``nn.Linear``.

    Args:
        base: the linear layer to adapt; its weights are frozen.
        rank: the number of rank components this layer holds (the rows of A).
        scale: the multiplier of the low-rank product, the same at every active rank.
        dropout: dropout probability on the adapter's input.
        adapter_dtype: dtype of A and B; fp32 keeps the adapter precise over a bf16 base.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        scale: float,
        dropout: float = 0.0,
        adapter_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise AdapterError(f"rank must be >= 1, got {rank}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.scale = float(scale)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        device = base.weight.device
        self.lora_a = nn.Parameter(
            torch.zeros(rank, base.in_features, dtype=adapter_dtype, device=device)
        )  # (rank, in)
        self.lora_b = nn.Parameter(
            torch.zeros(base.out_features, rank, dtype=adapter_dtype, device=device)
        )  # (out, rank)
        self.active_rank = rank
        # Several truncations in one batch: (rows, active rank) 0/1 mask, row n of the batch keeps
        # the components below its own rank (see NestedLoRAModel.truncations); None: all keep all.
        self.rank_mask: torch.Tensor | None = None
        # A dense update merged into the frozen base (FLoRA merges each round); None for most methods.
        self.merged: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        """How many rank components this layer holds."""
        return self.lora_a.shape[0]

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """A as PEFT's default (Kaiming-uniform, a=sqrt(5)), B zero: the adapter starts as a no-op.

        The draw is made on the CPU (``generator`` is a CPU generator) and copied to the layer's
        device, so that a seed gives the same adapter on every device.
        """
        bound = 1.0 / math.sqrt(self.base.in_features)  # kaiming_uniform_(a=sqrt(5)) bound
        draw = torch.empty(self.lora_a.shape, dtype=self.lora_a.dtype)
        with torch.no_grad():
            self.lora_a.copy_(draw.uniform_(-bound, bound, generator=generator))
            self.lora_b.zero_()

    def set_factors(self, lora_a: torch.Tensor, lora_b: torch.Tensor) -> None:
        """Replace A and B, possibly with another rank; the active rank becomes the new rank.

        Raises:
            AdapterError: shapes that do not fit this layer or each other.
        """
        rank = lora_a.shape[0]
        expected_a = (rank, self.base.in_features)
        expected_b = (self.base.out_features, rank)
        if tuple(lora_a.shape) != expected_a or tuple(lora_b.shape) != expected_b:
            raise AdapterError(
                f"factors of shapes A {tuple(lora_a.shape)}, B {tuple(lora_b.shape)} do not fit a "
                f"layer of in={self.base.in_features}, out={self.base.out_features} "
                f"(expected A {expected_a}, B {expected_b})"
            )
        dtype, device = self.lora_a.dtype, self.lora_a.device
        self.lora_a = nn.Parameter(lora_a.detach().to(device=device, dtype=dtype).clone())
        self.lora_b = nn.Parameter(lora_b.detach().to(device=device, dtype=dtype).clone())
        self.active_rank = rank

    def set_active_rank(self, rank: int) -> None:
        """Use only the first ``rank`` components in the forward."""
        if not 0 <= rank <= self.rank:
            raise AdapterError(f"active rank {rank} is outside [0, {self.rank}]")
        self.active_rank = rank

    def delta_weight(self, rank: int | None = None) -> torch.Tensor:
        """The weight update ``scale * B[:, :r] @ A[:r]`` of shape (out, in)."""
        r = self.active_rank if rank is None else rank
        return self.scale * (self.lora_b[:, :r] @ self.lora_a[:r])  # (out, r) @ (r, in)

    def set_merged(self, merged: torch.Tensor | None) -> None:
        """Set (or clear, with None) a dense (out, in) update added to the frozen base."""
        if merged is not None:
            shape = (self.base.out_features, self.base.in_features)
            if tuple(merged.shape) != shape:
                raise AdapterError(f"merged update of shape {tuple(merged.shape)} != {shape}")
            merged = merged.detach().to(device=self.lora_a.device, dtype=self.lora_a.dtype).clone()
        self.merged = merged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged is not None:
            out = out + (x.to(self.merged.dtype) @ self.merged.T).to(
                out.dtype
            )  # (..., in) -> (..., out)
        r = self.active_rank
        if r == 0:
            return out
        h = self.dropout(x).to(self.lora_a.dtype)
        h = h @ self.lora_a[:r].T  # (..., in) @ (in, r) -> (..., r)
        if self.rank_mask is not None:  # zero each row's components above its truncation
            mask = self.rank_mask[:, :r]  # (batch, r)
            h = h * mask.view(mask.shape[0], *([1] * (h.ndim - 2)), r)
        h = h @ self.lora_b[:, :r].T  # (..., r) @ (r, out) -> (..., out)
        return out + (self.scale * h).to(out.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, active_rank={self.active_rank}, scale={self.scale:g}"
