"""Local training and the prefix-nested truncation schedule."""

from prelort.training.local import LocalResult, LocalTrainingConfig, train_local
from prelort.training.nested import MODES, truncation_ranks

__all__ = ["MODES", "LocalResult", "LocalTrainingConfig", "train_local", "truncation_ranks"]
