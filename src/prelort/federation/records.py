"""The typed records a run writes per round: what metrics.json, checkpoints and summaries read."""

from __future__ import annotations

from typing import TypedDict

from prelort.evaluation.tiers import TierMetrics


class Rejection(TypedDict):
    """A reply the server refused, and why."""

    client: int
    reason: str


class SegmentRecord(TypedDict):
    """One rank segment [lo, hi) of the global adapter: ``||s B_seg A_seg||_F`` and energy share."""

    lo: int
    hi: int
    norm: float
    share: float


class PrivacyRecord(TypedDict):
    """Client-level DP in one round: the clip norm, the noise, how many updates were clipped, and
    the run's (ε, δ) so far (``aggregation/budget.py``)."""

    clip: float
    noise_multiplier: float
    noise_std: float
    clipped: int
    median_norm: float
    epsilon: float | None  # after this round, at delta (None without noise)
    delta: float


class TrafficRecord(TypedDict):
    """What one round moved and cost on the server.

    ``bytes_up``/``bytes_down`` count bytes in the wire format; ``ranks`` are the accepted replies' ranks;
    ``tail_ratios`` what each reported on its adapter's tail (HetLoRA's pruning signal, 0 elsewhere);
    ``dropped`` the sampled clients whose reply never came; ``segments`` the global adapter after
    the round.
    """

    round: int
    clients: int
    bytes_up: int
    bytes_down: int
    aggregation_seconds: float
    ranks: list[int]
    tail_ratios: list[float]
    dropped: list[int]
    rejected: list[Rejection]
    segments: list[SegmentRecord]
    privacy: PrivacyRecord | None


class RoundRecord(TypedDict):
    """The metrics of one evaluated round: per tier, the mean training loss and the wall time."""

    round: int
    tiers: TierMetrics
    train_loss: float
    seconds: float
