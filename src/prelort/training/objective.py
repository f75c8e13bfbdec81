"""What a client optimises beyond the task loss: the method's hooks into local training.

``train_local`` asks its ``LocalObjective`` for each step's extra loss, truncation weights and
optimizer step, and never tests which method it runs. The plain objective adds nothing; a method
that trains differently (HetLoRA's tail penalty, prefix-scaled steps, the frozen-adapter
reference) subclasses it in the method's own module.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from prelort.adapters.norms import product_gram

if TYPE_CHECKING:  # the methods that define objectives need only torch
    from prelort.adapters.inject import NestedLoRAModel


@dataclass(frozen=True)
class LocalObjective:
    """Plain local training: the task loss, equal truncation weights, the optimizer's own step.

    Attributes:
        trains_adapter: False freezes the adapter (only a head learns).
        truncation_weights: relative weight of each truncation rank's loss under nested training,
            renormalised over a step's truncations; None: equal weights.
    """

    trains_adapter: bool = True
    truncation_weights: Mapping[int, float] | None = None

    def truncation_ladder(self, ladder: Sequence[int]) -> Sequence[int]:
        """The ladder ranks whose truncations the client may train (all: plain nested training)."""
        return ladder

    def prepare(self, adapted: NestedLoRAModel, rank: int, seed: int) -> None:
        """Prepares the received rank-``rank`` adapter before the first step; ``seed`` is the
        client's (seed, round, client) seed. Nothing by default (FLoRA draws fresh factors)."""

    def penalty(self, adapted: NestedLoRAModel, rank: int) -> torch.Tensor:
        """An extra loss term of the client's rank-``rank`` adapter (differentiable)."""
        return torch.zeros((), device=adapted.device)

    @contextmanager
    def stepping(self, adapted: NestedLoRAModel, ranks: Sequence[int], rank: int) -> Iterator[None]:
        """Wraps the optimizer's step of a step that trained the truncations ``ranks``."""
        yield

    def tail_ratio(self, adapted: NestedLoRAModel, rank: int) -> float:
        """What the client reports on its adapter's tail after training (0: nothing)."""
        return 0.0


PLAIN = LocalObjective()


@contextmanager
def scaled_component_steps(
    adapted: NestedLoRAModel, scales: Sequence[torch.Tensor]
) -> Iterator[None]:
    """Wraps an optimizer step so that layer k's rank component i moves ``scales[k][i]`` times as far
    as the step moved it (its A row and B column alike); the head steps as usual."""
    layers = list(adapted.layers.values())
    before = [(layer.lora_a.detach().clone(), layer.lora_b.detach().clone()) for layer in layers]
    yield
    with torch.no_grad():
        for layer, scale, (a0, b0) in zip(layers, scales, before, strict=True):
            scale = scale.to(a0.device, a0.dtype)
            layer.lora_a.copy_(a0 + scale[:, None] * (layer.lora_a - a0))  # (r, in)
            layer.lora_b.copy_(b0 + scale[None, :] * (layer.lora_b - b0))  # (out, r)


def tail_norms(adapted: NestedLoRAModel, rank: int, tail: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(norm of the last ``tail`` components' update, norm of the whole update), differentiable."""
    tail_sq = whole_sq = torch.zeros((), dtype=torch.float32, device=adapted.device)
    for layer in adapted.layers.values():
        a, b = layer.lora_a[:rank], layer.lora_b[:, :rank]
        gram = product_gram(a, b)  # (r, r)
        whole_sq = whole_sq + gram.sum() * layer.scale**2
        tail_sq = tail_sq + gram[rank - tail :, rank - tail :].sum() * layer.scale**2
    # the epsilon keeps the gradient finite at B = 0 (every adapter starts there): d sqrt(x)/dx = inf at 0
    return (tail_sq.clamp_min(0) + 1e-12).sqrt(), (whole_sq.clamp_min(0) + 1e-12).sqrt()
