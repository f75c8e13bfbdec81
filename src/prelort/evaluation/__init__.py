"""Accuracy, ROUGE-L and perplexity of a global adapter at every rank tier."""

from prelort.evaluation.metrics import accuracy, perplexity, rouge_l
from prelort.evaluation.tiers import TierMetrics, evaluate_tiers

__all__ = ["TierMetrics", "accuracy", "evaluate_tiers", "perplexity", "rouge_l"]
