"""Norms of LoRA updates computed from the small r x r Gram matrices, never forming B @ A.

Used by validation (a bound on an update's norm), HetLoRA (norm weights, the tail penalty) and the
per-segment diagnostics (how much of the adapter's energy sits in each rank segment).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from prelort.adapters.state import LORA_A, LORA_B, lora_modules


def product_gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(B^T B) * (A A^T)`` elementwise, (r, r): its sum is ``||B A||_F^2`` without forming B A.

    A diagonal block ``[i:j, i:j]`` sums to the squared norm of components i..j alone.
    """
    return (b.T @ b) * (a @ a.T)  # (r, out) @ (out, r) * (r, in) @ (in, r)


def update_norm(state: Mapping[str, torch.Tensor], scale: float) -> float:
    """``sqrt(sum_modules ||s B A||_F^2)`` of a state's factors."""
    total = 0.0
    for module in lora_modules(state):
        a, b = state[module + LORA_A].double(), state[module + LORA_B].double()
        total += float(product_gram(a, b).sum()) * scale**2
    return max(total, 0.0) ** 0.5


def segment_norms(
    state: Mapping[str, torch.Tensor], bounds: Sequence[tuple[int, int]], scale: float
) -> list[float]:
    """Per segment [lo, hi): ``sqrt(sum_modules ||s B[:, lo:hi] A[lo:hi]||_F^2)``.

    The norm of the update a segment alone would make: where the adapter keeps its signal. Under
    prefix-nested training most of it should sit in the first segments.
    """
    totals = [0.0] * len(bounds)
    for module in lora_modules(state):
        gram = product_gram(state[module + LORA_A].double(), state[module + LORA_B].double())
        for i, (lo, hi) in enumerate(bounds):
            totals[i] += float(gram[lo:hi, lo:hi].sum()) * scale**2
    return [max(t, 0.0) ** 0.5 for t in totals]
