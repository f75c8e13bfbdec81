"""A calibration round: every tier's classifier head refitted in closed form from client statistics.

After training, each client runs forward passes only (no optimizer, no backward) over its own
examples with the global adapter truncated at every tier, and sends per tier its class counts,
per-class feature sums and feature scatter (``prelort.aggregation.lda``). The server sums them
and sets tier r's head to the LDA classifier of the federation's statistics at tier r, so each
truncation gets a head that matches its own features. With ``holders_only`` a client computes
only the tiers up to its own rank (a rank-2 client never runs the rank-16 adapter).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prelort.adapters.heads import head_key
from prelort.adapters.state import AdapterState, is_head_key, set_state, slice_to_rank
from prelort.aggregation.lda import ClassStatistics, lda_head, sum_statistics
from prelort.errors import ConfigError
from prelort.evaluation.metrics import accuracy, correct
from prelort.evaluation.readout import head_features, head_module
from prelort.evaluation.tiers import TierMetrics
from prelort.runtime.federation import Federation


@dataclass(frozen=True)
class Calibration:
    """Per-tier LDA heads and what they were fitted on.

    Attributes:
        state: the global adapter with one head per tier (``<name>@<tier>`` keys).
        examples: per tier, the training examples whose statistics were summed.
        clients: per tier, the clients that sent statistics.
    """

    state: AdapterState
    examples: dict[int, int]
    clients: dict[int, int]


def calibrates(fed: Federation) -> bool:
    """Whether the run ends with a calibration round (``calibration``: ``lda``, or ``auto`` where
    the run has a linear classifier head and neither secure aggregation nor client-level DP,
    whose guarantees the clear-text class statistics would not keep).

    Raises:
        ConfigError: ``lda`` for a run whose head LDA cannot replace.
    """
    config = fed.config
    if config.calibration == "lda":
        linear_head_names(fed)
        return True
    if config.calibration == "none" or config.secure_aggregation or config.dp_clip is not None:
        return False
    try:
        linear_head_names(fed)
    except ConfigError:
        return False
    return True


def linear_head_names(fed: Federation) -> tuple[str, str]:
    """(weight name, bias name) of the classifier's final linear layer, the head LDA replaces.

    Raises:
        ConfigError: the task has no classifier head, or its head is not one linear layer with
            a bias.
    """
    adapted = fed.bench.adapted
    if not fed.bench.objective.trains_head or not adapted.head:
        raise ConfigError("calibration: only runs with a classifier head can be calibrated")
    module = head_module(adapted)
    names = sorted(adapted.head)
    if not isinstance(module, nn.Linear) or module.bias is None or len(names) != 2:
        raise ConfigError(
            f"calibration: the head {names} is not one linear layer with a bias; LDA needs one"
        )
    weight = next(n for n in names if n.endswith("weight"))
    return weight, next(n for n in names if n.endswith("bias"))


def calibration_rows(fed: Federation, client: int) -> list[int]:
    """The training rows a client computes its statistics on: all of them, or its share (by
    examples) of ``calibration_examples``, drawn with a seed of the run and the client."""
    rows = list(fed.plan.client_rows[client])
    ceiling = fed.config.calibration_examples
    total = sum(len(r) for r in fed.plan.client_rows)
    if ceiling == 0 or total <= ceiling or not rows:
        return rows
    keep = max(1, round(ceiling * len(rows) / total))
    draw = torch.Generator().manual_seed(fed.config.seed * 100_003 + client)
    order = torch.randperm(len(rows), generator=draw)[:keep]
    return sorted(rows[i] for i in order.tolist())


@torch.no_grad()  # not inference_mode: set_state below must leave the model trainable afterwards
def client_statistics(
    fed: Federation, global_state: AdapterState, client: int, tiers: list[int]
) -> dict[int, ClassStatistics]:
    """One client's class statistics at each of ``tiers`` (forward passes over its rows only).

    A method that trains no adapter has the same features at every tier: they are computed once.
    """
    adapted, data = fed.bench.adapted, fed.bench.train
    rows = calibration_rows(fed, client)
    labels = torch.tensor([data.labels[i] for i in rows])
    stats: dict[int, ClassStatistics] = {}
    for tier in tiers:
        if stats and not fed.method.trains_adapter:
            stats[tier] = next(iter(stats.values()))
            continue
        set_state(adapted, slice_to_rank(global_state, tier))
        adapted.set_active_rank(tier)
        features = head_features(adapted, data, rows, fed.bench.tokenizer.pad_token_id, 64)
        stats[tier] = ClassStatistics.of(features, labels, fed.bench.task.num_labels)
    return stats


def fit_calibration(
    fed: Federation,
    global_state: AdapterState,
    per_tier: Mapping[int, Sequence[ClassStatistics]],
) -> Calibration:
    """The server's half: every tier's LDA head from the statistics the clients sent for it.

    Raises:
        ConfigError: no linear classifier head, or a tier no client sent statistics for.
    """
    weight_name, bias_name = linear_head_names(fed)
    state = {k: v for k, v in global_state.items() if not is_head_key(k)}
    examples, clients = {}, {}
    for tier in fed.config.ranks.ladder:
        parts = per_tier.get(tier, ())
        if not parts:
            raise ConfigError(f"calibration: no client sent statistics for tier {tier}")
        total = sum_statistics(parts)
        weight, bias = lda_head(total)
        state[head_key(weight_name, tier)] = weight
        state[head_key(bias_name, tier)] = bias
        examples[tier], clients[tier] = int(total.counts.sum()), len(parts)
    return Calibration(state, examples, clients)


def calibrate(
    fed: Federation, global_state: AdapterState, holders_only: bool = False
) -> Calibration:
    """Every tier's head refitted by LDA on the statistics of every client (or of its holders).

    Raises:
        ConfigError: no linear classifier head; or ``holders_only`` and a tier no client holds.
    """
    linear_head_names(fed)  # refuse before any forward pass
    ladder = list(fed.config.ranks.ladder)
    per_tier: dict[int, list[ClassStatistics]] = {t: [] for t in ladder}
    for client, rank in enumerate(fed.plan.client_ranks):
        tiers = [t for t in ladder if t <= rank] if holders_only else ladder
        for tier, stats in client_statistics(fed, global_state, client, tiers).items():
            per_tier[tier].append(stats)
    return fit_calibration(fed, global_state, per_tier)


def evaluate_calibration(
    fed: Federation,
    calibrated_state: AdapterState,
    head_inputs: Mapping[str, torch.Tensor] | None = None,
    per_example: dict[str, dict[str, list[float]]] | None = None,
) -> TierMetrics:
    """Every tier's test accuracy with its own LDA head (``calibrated_state``: the adapter with one
    head per tier, ``Calibration.state`` or a saved ``calibrated.safetensors``).

    ``head_inputs``: the test features per tier that the final evaluation already computed for
    the same adapter (``SimulationResult.head_inputs``); a tier without them gets a forward pass.
    ``per_example``: receives each test example's ``calibrated_accuracy`` (0/1) per tier, beside
    the final evaluation's scores (``SimulationResult.examples``), for paired comparisons.

    The head is applied in float64 to the features the tier's forward gives: LDA weights are
    large and their logits nearly cancel against the bias, which a 16-bit head matmul (under
    ``eval_dtype``) would lose; so the model's own head is never used, nor changed.
    """
    adapted, test, ladder = fed.bench.adapted, fed.bench.test, fed.config.ranks.ladder
    weight_name, bias_name = linear_head_names(fed)
    results: TierMetrics = {}
    scores: dict[str, list[float]] = {}
    loaded = False
    for tier in ladder:
        key = str(tier)
        if results and not fed.method.trains_adapter:  # the same features at every tier
            first = next(iter(results))
            results[key], scores[key] = dict(results[first]), scores[first]
            continue
        if head_inputs and key in head_inputs:
            features = head_inputs[key]
        else:
            if not loaded:
                set_state(adapted, calibrated_state, heads=False)
                loaded = True
            adapted.set_active_rank(tier)
            features = head_features(
                adapted, test, range(len(test)), fed.bench.tokenizer.pad_token_id, 32
            )
        weight = calibrated_state[head_key(weight_name, tier)].double()
        bias = calibrated_state[head_key(bias_name, tier)].double()
        predictions = (features.double() @ weight.T + bias).argmax(-1).tolist()
        results[key] = {"accuracy": accuracy(predictions, test.labels)}
        scores[key] = correct(predictions, test.labels)
    if per_example is not None:
        for key, tier_scores in scores.items():
            per_example.setdefault(key, {})["calibrated_accuracy"] = tier_scores
    return results


def calibrated_tiers(
    fed: Federation,
    global_state: AdapterState,
    holders_only: bool = False,
    head_inputs: Mapping[str, torch.Tensor] | None = None,
    per_example: dict[str, dict[str, list[float]]] | None = None,
) -> tuple[Calibration, TierMetrics]:
    """Calibrate, then evaluate every tier with its own LDA head (``head_inputs`` and
    ``per_example``: see ``evaluate_calibration``)."""
    calibration = calibrate(fed, global_state, holders_only)
    return calibration, evaluate_calibration(fed, calibration.state, head_inputs, per_example)


def record_calibrated(final: TierMetrics, calibrated: TierMetrics) -> None:
    """Put each tier's calibrated accuracy beside its other final metrics."""
    for tier, metrics in calibrated.items():
        final[tier]["calibrated_accuracy"] = metrics["accuracy"]
