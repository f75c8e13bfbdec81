"""A classifier head in closed form from federated class statistics (linear discriminant analysis).

Clients send, per tier, their class counts, per-class sums of the head's input features and the
sum of feature outer products; summed over clients these are exactly the statistics of the whole
federation's data, so the server fits the same head a central fit would, with no training and no
raw features leaving a client (the closed-form federated classifiers of Fed3R and CCVR's class
statistics follow the same idea). The head is LDA with a pooled, ridge-regularised covariance.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

LDA_RIDGE = 1e-3  # times the mean feature variance, added to the covariance's diagonal
ABSENT_CLASS_BIAS = -1e4  # a class no client holds is never predicted


@dataclass(frozen=True)
class ClassStatistics:
    """Sufficient statistics of one tier's head-input features over some examples (float64).

    Attributes:
        counts: examples per class, shape (C,).
        sums: per-class feature sums, shape (C, H).
        scatter: sum of feature outer products ``sum_i x_i x_i^T``, shape (H, H).
    """

    counts: torch.Tensor
    sums: torch.Tensor
    scatter: torch.Tensor

    @classmethod
    def of(cls, features: torch.Tensor, labels: torch.Tensor, classes: int) -> ClassStatistics:
        """The statistics of ``features`` (n, H) with ``labels`` (n,) in [0, classes)."""
        x = features.double()
        onehot = torch.nn.functional.one_hot(labels.long(), classes).double()  # (n, C)
        return cls(onehot.sum(0), onehot.T @ x, x.T @ x)

    def __add__(self, other: ClassStatistics) -> ClassStatistics:
        return ClassStatistics(
            self.counts + other.counts, self.sums + other.sums, self.scatter + other.scatter
        )


def sum_statistics(parts: Iterable[ClassStatistics]) -> ClassStatistics:
    """The federation's statistics: the element-wise sum of the clients'."""
    parts = list(parts)
    if not parts:
        raise ValueError("no class statistics to sum")
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def lda_head(stats: ClassStatistics, ridge: float = LDA_RIDGE) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (C, H), bias (C,)) of the LDA classifier of ``stats``, as float32.

    ``logit_c = mu_c^T S^-1 x - mu_c^T S^-1 mu_c / 2 + log prior_c`` with S the pooled within-class
    covariance plus ``ridge`` times its mean diagonal.

    Raises:
        ValueError: statistics of no example.
    """
    n = float(stats.counts.sum())
    if n <= 0:
        raise ValueError("class statistics of no example")
    held = stats.counts > 0
    means = torch.zeros_like(stats.sums)
    means[held] = stats.sums[held] / stats.counts[held, None]  # (C, H)
    between = (means * stats.counts[:, None]).T @ means  # sum_c n_c mu_c mu_c^T, (H, H)
    covariance = (stats.scatter - between) / n
    hidden = covariance.shape[0]
    covariance = covariance + ridge * covariance.diagonal().mean().clamp_min(1e-12) * torch.eye(
        hidden, dtype=covariance.dtype
    )
    weight = torch.linalg.solve(covariance, means.T).T  # (C, H)
    bias = -0.5 * (weight * means).sum(1) + torch.log(stats.counts.clamp_min(1e-300) / n)
    bias[~held] = ABSENT_CLASS_BIAS
    weight[~held] = 0.0
    return weight.float(), bias.float()
