"""Evaluating one global adapter truncated at every rank tier."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from prelort.adapters.inject import NestedLoRAModel
from prelort.adapters.state import set_state
from prelort.data.encoding import EncodedSplit
from prelort.evaluation.objectives import GENERATIVE, HEAD, VERBALIZED, ReadoutData, TaskObjective

TierMetrics = dict[str, dict[str, float]]

__all__ = [
    "GENERATIVE",
    "HEAD",
    "VERBALIZED",
    "ReadoutData",
    "TaskObjective",
    "TierMetrics",
    "evaluate_tiers",
]


def evaluate_tiers(
    adapted: NestedLoRAModel,
    global_state: Mapping[str, torch.Tensor],
    tiers: Sequence[int],
    objective: TaskObjective,
    data: EncodedSplit,
    tokenizer,
    batch_size: int = 32,
    generation_data: EncodedSplit | None = None,
    max_new_tokens: int = 24,
    readout: ReadoutData | None = None,
    same_at_every_tier: bool = False,
    samples: dict[str, list[dict[str, str]]] | None = None,
    per_example: dict[str, dict[str, list[float]]] | None = None,
    features: dict[str, torch.Tensor] | None = None,
) -> TierMetrics:
    """Metrics of the global adapter truncated at each tier rank.

    Args:
        objective: how the task is scored (``prelort.evaluation.objectives``): a head's
            ``accuracy`` (and ``readout_accuracy``), a verbalised label's ``accuracy``, or
            ``perplexity`` (and ``rouge_l`` of greedy completions when ``generation_data`` is
            given).
        readout: also report ``readout_accuracy``, a readout refitted on each tier's features.
        same_at_every_tier: the model is the same at every tier (no adapter, one head): evaluate
            once and report it for every tier.
        samples: filled with the first ``SAMPLES`` generations per tier (prompt, reference,
            output) when ROUGE-L is computed.
        per_example: filled per tier with each example's score per metric (accuracy: 0/1,
            ROUGE-L: F1), in the order of ``data``: what paired comparisons resample.
        features: filled per tier with the (n, hidden) head inputs of ``data`` (head objective):
            what the calibration round's heads are then scored on without another forward.

    Returns:
        ``{"<rank>": {"<metric>": value}}``.
    """
    set_state(adapted, global_state)
    adapted.model.eval()
    results: TierMetrics = {}
    for tier in tiers:
        if same_at_every_tier and results:
            results[str(tier)] = dict(next(iter(results.values())))
            if per_example is not None:
                per_example[str(tier)] = dict(next(iter(per_example.values())))
            if features:
                features[str(tier)] = next(iter(features.values()))
            continue
        adapted.set_active_rank(tier)
        kept: list[dict[str, str]] | None = [] if samples is not None else None
        scores: dict[str, list[float]] | None = {} if per_example is not None else None
        inputs: dict[str, torch.Tensor] | None = {} if features is not None else None
        metrics = objective.score(
            adapted,
            data,
            tokenizer,
            batch_size,
            readout,
            generation_data,
            max_new_tokens,
            kept,
            scores,
            inputs,
        )
        if per_example is not None and scores is not None:
            per_example[str(tier)] = scores
        if kept:
            samples[str(tier)] = kept
        if inputs:
            features[str(tier)] = inputs["head_input"]
        results[str(tier)] = metrics
    return results
