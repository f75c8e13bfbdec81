"""Evaluating one global adapter truncated at every rank tier."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from prelort.adapters.inject import NestedLoRAModel
from prelort.adapters.state import set_state
from prelort.evaluation.objectives import (
    GENERATIVE,
    HEAD,
    VERBALIZED,
    EvalInputs,
    ReadoutData,
    TaskObjective,
    TierScore,
)

TierMetrics = dict[str, dict[str, float]]

__all__ = [
    "GENERATIVE",
    "HEAD",
    "VERBALIZED",
    "EvalInputs",
    "ReadoutData",
    "TaskObjective",
    "TierEvaluation",
    "TierMetrics",
    "TierScore",
    "evaluate_tiers",
]


@dataclass
class TierEvaluation:
    """One evaluation of the global adapter, keyed by tier rank (``"<rank>"``).

    Attributes:
        metrics: ``{"<rank>": {"<metric>": value}}``.
        per_example: per tier and metric, each test example's score (``TierScore.per_example``).
        samples: per tier, the first generations, where ROUGE-L ran.
        head_inputs: per tier, the test examples' head inputs (head objective).
    """

    metrics: TierMetrics = field(default_factory=dict)
    per_example: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    samples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    head_inputs: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, tier: int, score: TierScore) -> None:
        key = str(tier)
        self.metrics[key] = dict(score.metrics)
        self.per_example[key] = dict(score.per_example)
        if score.samples:
            self.samples[key] = score.samples
        if score.head_inputs is not None:
            self.head_inputs[key] = score.head_inputs


def evaluate_tiers(
    adapted: NestedLoRAModel,
    global_state: Mapping[str, torch.Tensor],
    tiers: Sequence[int],
    objective: TaskObjective,
    inputs: EvalInputs,
    same_at_every_tier: bool = False,
) -> TierEvaluation:
    """Scores of the global adapter truncated at each tier rank.

    Args:
        objective: how the task is scored (``prelort.evaluation.objectives``): a head's
            ``accuracy`` (and ``readout_accuracy``), a verbalised label's ``accuracy``, or
            ``perplexity`` (and ``rouge_l`` of greedy completions when ``inputs.generation`` is
            given).
        same_at_every_tier: the model is the same at every tier (no adapter, one head): score
            once and report it for every tier.
    """
    set_state(adapted, global_state)
    adapted.model.eval()
    evaluation = TierEvaluation()
    score: TierScore | None = None
    for tier in tiers:
        if score is None or not same_at_every_tier:
            adapted.set_active_rank(tier)
            score = objective.score(adapted, inputs)
        evaluation.add(tier, score)
    return evaluation
