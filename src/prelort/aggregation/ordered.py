"""Segment-wise aggregation, then the global adapter re-factorised in singular-value order.

PreLort's segment-wise average keeps every segment where its holders put it. Under AdamW the
clients' nested training spreads the update over the whole rank (docs/RESULTS.md: about 22 % of
the energy in the rank-2 prefix), so a low tier holds only a small part of what the federation
learnt, while FlexLoRA's SVD puts the best rank-r approximation of its average first.

``prelort-ordered`` keeps PreLort's rule and adds one exact change of basis: per module, the new
global product ``B @ A`` (rank <= R) is written as ``U diag(S) Vh`` and re-factorised as
``B = U sqrt(S)``, ``A = sqrt(S) Vh``. The full rank-R product is unchanged, so the top tier is
PreLort's; every prefix r becomes the best rank-r approximation of that product (Eckart-Young),
the low tiers inherit what the high-rank clients learnt, and the next round's nested training
starts from that order. The re-factorisation does not depend on the LoRA scale. How the singular
values are split between the factors changes no product, only the next round's optimizer steps
(``split``: ``prelort-ordered-u`` keeps A's rows orthonormal, and the recommended
``prelort-ordered-g``, in ``gradshare``, aggregates as it does; ``prelort-ordered-a`` keeps their
RMS norm, LoRA's convention).

Components with a negligible singular value (e.g. a segment nobody has trained yet, B = 0) would
come out as zero rows and columns, which no gradient can revive; they keep the previous A rows
at their index with B = 0 instead, LoRA's own initial form, so the product is still exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from prelort.adapters.state import LORA_A, LORA_B, AdapterState, lora_modules
from prelort.aggregation.base import AggregateFn, ClientUpdate
from prelort.aggregation.method import AggregationContext, FromSums
from prelort.aggregation.prelort import PreLort, aggregate_segmentwise
from prelort.aggregation.registry import register
from prelort.aggregation.secure import segmentwise_from_sums

# Singular values at or below this fraction of the largest are treated as absent components.
NULL_TOLERANCE = 1e-6


def _principal_frame(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvectors (R, k) and the square roots of the eigenvalues (k,) of a factor's Gram matrix,
    dropping the directions the factor does not span (a segment nobody has trained: B = 0)."""
    eigenvalues, vectors = torch.linalg.eigh(gram)  # ascending
    keep = eigenvalues > NULL_TOLERANCE**2 * eigenvalues[-1].clamp_min(1e-300)
    return vectors[:, keep], eigenvalues[keep].sqrt()


SPLITS = ("balanced", "fixed-a", "unit-a")


def svd_ordered(state: Mapping[str, torch.Tensor], split: str = "balanced") -> AdapterState:
    """The same adapter with every module's components in decreasing singular-value order.

    Args:
        state: a rank-R adapter, A (R, in) and B (out, R) per module, plus dense tensors.
        split: how the singular values go to the factors. ``balanced``: ``sqrt(S)`` to each
            (FlexLoRA's choice). ``fixed-a``: A's rows orthogonal with the RMS row norm A had,
            B carries ``S``; LoRA's own convention (A a fixed-scale projection, B the magnitude),
            under which an AdamW step on B moves a weak component's product as much as a strong
            one's, where the balanced split gives it a small A row and so a small step.
            ``unit-a``: A's rows orthonormal, B carries ``S`` (RB-LoRA's ``A = V^T``,
            ``B = U S``): as fixed-a with a row norm of one, so an AdamW step on B moves the
            product by the step itself, not by the step times A's norm.

    Returns:
        An adapter with the same keys, shapes and products ``B @ A`` (up to float rounding),
        whose prefix of every rank r is the best rank-r approximation of the product;
        components beyond the product's rank have their previous A row and a zero B column.

    The SVD of ``B @ A`` comes from the two R x R Gram matrices (computed in the factors' dtype,
    decomposed in float64): with ``B^T B = V_b L_b V_b^T`` and ``A A^T = V_a L_a V_a^T``, the core
    ``L_b^1/2 V_b^T V_a L_a^1/2 = U S W^T`` gives
    ``B @ A = (B V_b L_b^-1/2 U) S (W^T L_a^-1/2 V_a^T A)``. Each factor is read once for its Gram
    matrix and once for its product with an R x R matrix: where a float64 QR of each factor cost
    4-9x more (``python -m benchmarks.ordered_refactor``).
    """
    if split not in SPLITS:
        raise ValueError(f"split: unknown {split!r}; choose one of {', '.join(SPLITS)}")
    out: AdapterState = dict(state)
    for module in lora_modules(state):
        key_a, key_b = module + LORA_A, module + LORA_B
        a, b = state[key_a], state[key_b]  # (R, in), (out, R)
        gram_a = (a @ a.T).double()  # (R, R)
        frame_b, root_b = _principal_frame((b.T @ b).double())  # (R, kb), (kb,)
        frame_a, root_a = _principal_frame(gram_a)  # (R, ka), (ka,)
        core = root_b[:, None] * (frame_b.T @ frame_a) * root_a[None, :]  # (kb, ka)
        u, s, wh = torch.linalg.svd(core, full_matrices=False)
        k = int((s > NULL_TOLERANCE * s.max().clamp_min(1e-300)).sum()) if s.numel() else 0
        rank = a.shape[0]
        if split == "balanced":
            left = right = s[:k].sqrt()
        else:
            row_norm = (  # fixed-a: A's RMS row norm before the change
                (gram_a.trace() / rank).sqrt()
                if split == "fixed-a"
                else torch.ones((), dtype=s.dtype)
            )
            right = row_norm.expand(k)
            left = s[:k] / right
        # One R x R matrix per factor: components beyond k get B = 0 and keep their A row.
        to_b = torch.zeros(rank, rank, dtype=torch.float64, device=b.device)
        to_b[:, :k] = (frame_b / root_b[None, :]) @ u[:, :k] * left[None, :]
        to_a = torch.eye(rank, dtype=torch.float64, device=a.device)
        to_a[:k] = right[:, None] * wh[:k] @ (frame_a / root_a[None, :]).T
        out[key_a] = to_a.to(a.dtype) @ a  # (R, in)
        out[key_b] = b @ to_b.to(b.dtype)  # (out, R)
    return out


def aggregate_segmentwise_ordered(
    global_state: Mapping[str, torch.Tensor],
    updates: Sequence[ClientUpdate],
    ladder: Sequence[int] = (),
    split: str = "balanced",
) -> AdapterState:
    """PreLort's segment-wise average, re-factorised in singular-value order (``svd_ordered``).

    Raises:
        AdapterError: no updates, or an update that does not fit the global adapter.
    """
    return svd_ordered(aggregate_segmentwise(global_state, updates, ladder), split)


def ordered_from_sums(
    global_state: Mapping[str, torch.Tensor],
    total: Mapping[str, torch.Tensor],
    resolution: float,
    split: str = "balanced",
) -> AdapterState:
    """``svd_ordered`` of PreLort's rule from secure sums: a change of basis after the division,
    so what secure aggregation reveals is unchanged."""
    return svd_ordered(segmentwise_from_sums(global_state, total, resolution), split)


@dataclass(frozen=True)
class Ordered(PreLort):
    """PreLort whose aggregate is re-factorised in singular-value order (``split`` convention)."""

    split: str = "balanced"

    def rule(self, context: AggregationContext) -> AggregateFn:
        return partial(aggregate_segmentwise_ordered, ladder=context.ladder, split=self.split)

    def secure_rule(self) -> FromSums:
        return partial(ordered_from_sums, split=self.split)


@dataclass(frozen=True)
class OrderedOnce(PreLort):
    """PreLort's training and aggregation, unchanged; what it serves is re-ordered.

    The server keeps the paper's own factors between rounds, so the high-rank clients' segments
    are trained only by them, as the paper intends; every tier it evaluates, calibrates, saves
    and exports is a prefix of ``svd_ordered`` of that state: the top tier the paper's own
    product, each lower one that product's best approximation. A post-processing of the
    aggregate, so it keeps PreLort's secure-aggregation and DP support.
    """

    split: str = "fixed-a"

    def served(self, state: Mapping[str, torch.Tensor]) -> AdapterState:
        return svd_ordered(state, self.split)


register(
    OrderedOnce(
        "prelort-ordered-once",
        "PreLort as the paper trains it, served in SVD order: every tier a prefix of the "
        "re-factorised product (the top tier the paper's, each lower one its best approximation)",
        group="candidate",
        nested="all",
    ),
    Ordered(
        "prelort-ordered-u",
        "PreLort + SVD order: segment-wise average, then each module's product re-factorised "
        "in singular-value order with A's rows orthonormal and B carrying the singular values "
        "(RB-LoRA's factor convention; the default from 2026-12-02 to prelort-ordered-g)",
        group="experimental",
        nested="all",
        split="unit-a",
    ),
    Ordered(
        "prelort-ordered-a",
        "PreLort + SVD order, LoRA's factor convention: as prelort-ordered-u, but A's rows keep "
        "their RMS norm (the default until 2026-12-02)",
        group="experimental",
        nested="all",
        split="fixed-a",
    ),
    Ordered(
        "prelort-ordered",
        "PreLort + SVD order: segment-wise average, then each module's product re-factorised "
        "in singular-value order (same product; every prefix its best rank-r approximation)",
        group="experimental",
        nested="all",
    ),
)
