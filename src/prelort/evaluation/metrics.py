"""Accuracy, ROUGE-L and perplexity."""

from __future__ import annotations

import math
from collections.abc import Sequence


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """The fraction of predictions equal to their labels."""
    if len(predictions) != len(labels) or not labels:
        raise ValueError("accuracy needs as many predictions as labels, and at least one")
    return sum(int(p == y) for p, y in zip(predictions, labels, strict=True)) / len(labels)


def correct(predictions: Sequence[int], labels: Sequence[int]) -> list[float]:
    """Per example, 1.0 where the prediction equals its label (accuracy is their mean)."""
    return [float(p == y) for p, y in zip(predictions, labels, strict=True)]


def rouge_l_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F1 (with stemming) of each prediction against its reference."""
    if len(predictions) != len(references) or not references:
        raise ValueError("rouge_l needs as many predictions as references, and at least one")
    from rouge_score import rouge_scorer  # only generation tasks need it

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [
        scorer.score(ref, pred)["rougeL"].fmeasure
        for pred, ref in zip(predictions, references, strict=True)
    ]


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 (with stemming) of predictions against references."""
    scores = rouge_l_scores(predictions, references)
    return sum(scores) / len(scores)


def perplexity(total_nll: float, num_tokens: int) -> float:
    """exp of the mean negative log-likelihood per target token."""
    if num_tokens <= 0:
        raise ValueError("perplexity needs at least one token")
    return math.exp(total_nll / num_tokens)
