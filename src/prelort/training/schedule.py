"""The clients' step size over the rounds.

A constant step is what the paper's baselines run; on a long run it leaves a federation swinging
around its optimum once the step is larger than the landscape allows (docs/RESULTS.md section 42:
headlines at lr 4e-3, where the default's curve rose from 14.8 to 16.0 between rounds 30 and 42).
A cosine decay over the run's rounds, as centralised fine-tuning recipes use, lets every method
settle at the end of its budget. The factor depends only on the round and the run's length, so the
in-process simulation and every Flower client compute the same step without a message for it.
"""

from __future__ import annotations

import dataclasses
import math

from prelort.training.local import LocalTrainingConfig


def round_lr_factor(schedule: str, round_index: int, rounds: int) -> float:
    """The factor on the learning rates in round ``round_index`` (1-based) of a ``rounds``-round run.

    ``constant``: 1. ``cosine``: ``(1 + cos(pi (t - 1) / T)) / 2``, 1 in round 1 and above 0 in the
    last round, so every round trains.

    Raises:
        ValueError: an unknown schedule, or a decaying schedule's round outside 1..rounds.
    """
    if schedule == "constant":
        return 1.0
    if not 1 <= round_index <= rounds:
        raise ValueError(f"round {round_index} is outside the run's rounds 1..{rounds}")
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (round_index - 1) / rounds))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}")


def at_round(config: LocalTrainingConfig, factor: float) -> LocalTrainingConfig:
    """``config`` with the adapter's and the head's learning rates times ``factor``."""
    if factor == 1.0:
        return config
    head_lr = None if config.head_lr is None else config.head_lr * factor
    return dataclasses.replace(config, lr=config.lr * factor, head_lr=head_lr)
