"""Gradient-shared steps: each module's AdamW step divided among its rank components as its gradient is.

``prelort-ordered-u`` re-factorises the global adapter in singular-value order each round, so A's
rows are orthonormal and the product's strongest direction lives in component 1 alone; the other
rows are orthogonal to it and their B columns see only what is left of the gradient (on headlines,
at round 24, 0.15-0.42 of component 1's gradient norm: ``python -m benchmarks.step_anatomy``). A
client's AdamW is new each round and a few steps long, so it moves every coordinate by about the
learning rate whatever its gradient's size: the weak components take full-size steps along noise,
and the strong direction gets one component's step. In LoRA's own basis (FedIT) every A row keeps a
share of the strongest direction, every component's step follows it, and on headlines FedIT's
rank-8 update keeps 98 % of its energy in rank 2 where ours spreads flat (docs/RESULTS.md section 27).

Here the client keeps AdamW's step but rescales it per module: component i moves ``n_i / rms(n)``
times as far, where ``n_i`` is the norm of its gradient (its A row and B column together) in this
step. The step's total size is unchanged (the scales' mean square is 1); it goes where the gradient
is, as plain gradient descent would send it. Aggregation is ``prelort-ordered-u``'s, unchanged.

Measured against ``prelort-ordered-u`` (docs/RESULTS.md sections 28, 29; 3 seeds, paired intervals): on
headlines at lr 4e-3 (24 rounds) 0.091 / 0.060 / 0.053 nats per token ahead at ranks 2 / 4 / 8, its update
as concentrated as FedIT's (95-96 % of the energy in rank 2), and at the packaged 3-round budget 0.095 /
0.060 / 0.045 ahead; on R8 (24 rounds), BBC label writing (12 rounds) and BBC News (8 rounds; 0.7-0.8
points behind at ranks 4-16 there) tied at every tier, no interval separated. The recommended method,
the default of every entry point, since 2026-12-03.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from prelort.aggregation.ordered import Ordered
from prelort.aggregation.registry import register
from prelort.training.objective import LocalObjective, scaled_component_steps

if TYPE_CHECKING:
    from prelort.adapters.inject import NestedLoRAModel


def gradient_share_scales(
    grad_a: torch.Tensor, grad_b: torch.Tensor, cap: float | None = None
) -> torch.Tensor:
    """Per component, its gradient norm over the root mean square of the module's (shape (r,)).

    ``grad_a`` is A's gradient (r, in), ``grad_b`` B's (out, r). All-zero gradients (a module no
    loss reached) give unit scales: the step, zero or not, is left as the optimizer made it. With
    ``cap``, no scale exceeds it: ``cap = 1`` never moves a component further than AdamW's own step.
    """
    energy = grad_a.float().pow(2).sum(1) + grad_b.float().pow(2).sum(0)
    mean = energy.mean()
    if not torch.isfinite(mean) or mean <= 0:
        return torch.ones_like(energy)
    scales = (energy / mean).sqrt()
    return scales if cap is None else scales.clamp_max(cap)


@dataclass(frozen=True)
class GradientShareObjective(LocalObjective):
    """Every module's optimizer step shared among its components in proportion to their gradients.

    ``cap`` bounds each component's factor (None: the step's mean square stays AdamW's, so the
    strong component moves up to sqrt(r) times as far).
    """

    cap: float | None = None

    @contextmanager
    def stepping(self, adapted: NestedLoRAModel, ranks: Sequence[int], rank: int) -> Iterator[None]:
        scales = []
        for layer in adapted.layers.values():
            a, b = layer.lora_a.grad, layer.lora_b.grad
            if a is None or b is None:  # a frozen adapter: nothing steps
                scales.append(torch.ones(layer.lora_a.shape[0]))
            else:
                scales.append(gradient_share_scales(a, b, self.cap))
        with scaled_component_steps(adapted, scales):
            yield


register(
    Ordered(
        "prelort-ordered-g",
        "prelort-ordered-u whose clients share each module's AdamW step among its rank components "
        "in proportion to their gradient norms (the strong direction gets the step the flat "
        "spectrum spent on noise)",
        group="recommended",
        nested="all",
        split="unit-a",
        objective=GradientShareObjective(),
    ),
    Ordered(
        "prelort-ordered-gc",
        "prelort-ordered-g with each component's share of the step capped at AdamW's own: the "
        "strong direction moves as plain LoRA's, the weak ones less (against the default's narrower "
        "range of stable steps, docs/RESULTS.md section 51)",
        group="trial",
        nested="all",
        split="unit-a",
        objective=GradientShareObjective(cap=1.0),
    ),
    Ordered(
        "prelort-ordered-gb",
        "prelort-ordered-g with the singular values split evenly between the factors (sqrt(S) to "
        "each, FlexLoRA's split): a strong component's A row is sqrt(sigma) long, so AdamW's "
        "coordinate-sized steps turn it less and a weak one's more (against the default's narrower "
        "range of stable steps without slowing the higher tiers, docs/RESULTS.md sections 51-53)",
        group="trial",
        nested="all",
        split="balanced",
        objective=GradientShareObjective(),
    ),
)
