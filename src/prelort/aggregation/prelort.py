"""PreLort's segment-wise aggregation.

The rank axis is cut into segments at the ranks in use. Each segment of A's rows and B's columns
is the example-weighted average over the clients whose rank covers it, and only those: a rank-2
client says nothing about components 2..R, so it must not pull them towards zero as zero-padding
does. A segment no participating client covers keeps its previous global value.

Per rank index this is the average over the clients holding that index, the rule of FjORD's
nested (ordered-dropout) averaging, of RBLA and of FediLoRA (``fedilora.py``, which zeroes the
indices nobody of the round holds); the segments only group indices with equal contributor sets.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch

from prelort.adapters.state import LORA_A, LORA_B, AdapterState, lora_modules
from prelort.aggregation.base import (
    AggregateFn,
    ClientUpdate,
    average_dense,
    check_updates,
    divided_by_holders,
    example_weights,
    prefix_sums,
)
from prelort.aggregation.method import AggregationContext, FromSums, Method, Sensitivity
from prelort.aggregation.privacy import segment_sensitivity
from prelort.aggregation.registry import register
from prelort.aggregation.secure import segmentwise_from_sums
from prelort.aggregation.zeropad import ZeroPad
from prelort.training.nested import prefix_step_scales
from prelort.training.objective import LocalObjective, scaled_component_steps

if TYPE_CHECKING:
    from prelort.adapters.inject import NestedLoRAModel


def aggregate_segmentwise(
    global_state: Mapping[str, torch.Tensor],
    updates: Sequence[ClientUpdate],
    ladder: Sequence[int] = (),
    starts: Sequence[int] | None = None,
) -> AdapterState:
    """Average each rank segment over its holders; keep segments nobody holds.

    Computed per rank index in one pass over the uploads: the example-weighted sums of the
    zero-padded prefixes divided, index by index, by the examples of the clients holding that
    index. Indices with the same holders form a segment, so this is the segment-wise average.

    Args:
        global_state: the rank-R global adapter, A (R, in) and B (out, R) per module.
        updates: the round's client updates, each a rank-r_k prefix.
        ladder: the ranks in use; they cut the segments of the diagnostics but cannot change
            the average (a cut between indices with the same holders splits nothing).
        starts: per update, the first index it trained (``window.py``: a window above a frozen
            prefix, whose indices it does not hold); default 0, the whole prefix.

    Returns:
        The new rank-R global adapter.

    Raises:
        AdapterError: no updates, or an update that does not fit the global adapter.
    """
    check_updates(global_state, updates)
    out = average_dense(global_state, updates)
    sums, held = prefix_sums(global_state, updates, example_weights(updates), starts)
    for module in lora_modules(global_state):
        key_a, key_b = module + LORA_A, module + LORA_B
        out[key_a], out[key_b] = divided_by_holders(
            global_state[key_a], global_state[key_b], sums[key_a], sums[key_b], held
        )
    return out


@dataclass(frozen=True)
class PreLort(Method):
    """Segment-wise aggregation (with ``nested`` training by default). Each segment's average is
    a weighted sum over its holders, so secure aggregation and DP apply segment by segment."""

    def rule(self, context: AggregationContext) -> AggregateFn:
        return partial(aggregate_segmentwise, ladder=context.ladder)

    def secure_rule(self) -> FromSums:
        return segmentwise_from_sums

    def sensitivity(self) -> Sensitivity:
        return segment_sensitivity


@dataclass(frozen=True)
class TierBalanced(PreLort):
    """Nested training with every truncation weighted equally over the federation."""

    def local_objective(
        self,
        rank: int,
        client_ranks: Sequence[int],
        ladder: Sequence[int],
        assigned: int | None = None,
    ) -> LocalObjective:
        return LocalObjective(truncation_weights=tier_balanced_weights(client_ranks, ladder))


def tier_balanced_weights(client_ranks: Sequence[int], ladder: Sequence[int]) -> dict[int, float]:
    """``1 / (clients whose rank covers truncation t)`` per ladder rank t.

    Under nested training every client trains the low truncations and few train the high ones, so
    the shared head and the top segments see the top tiers' features through a few clients only.
    With these weights each truncation carries the same total weight over the federation.
    """
    return {t: 1.0 / max(1, sum(1 for r in client_ranks if r >= t)) for t in ladder}


@dataclass(frozen=True)
class PrefixStepObjective(LocalObjective):
    """Each rank component's optimizer step scaled by the share of the step's truncations that
    contain it (``prefix_step_scales``).

    AdamW gives every component about the same step, so PreLort's update spreads evenly over the
    rank (docs/RESULTS.md: ~22 % of its energy in the rank-2 prefix) and its low tiers are weak
    models; scaling restores the precedence plain gradient descent gives the prefix.
    """

    @contextmanager
    def stepping(self, adapted: NestedLoRAModel, ranks: Sequence[int], rank: int) -> Iterator[None]:
        if len(ranks) == 1:  # one truncation: every component takes the whole step
            yield
            return
        scales = prefix_step_scales(ranks, rank)  # (rank,)
        with scaled_component_steps(adapted, [scales] * len(adapted.layers)):
            yield


register(
    PreLort(
        "prelort",
        "segment-wise aggregation + prefix-nested training (PreLort)",
        group="paper",
        nested="all",
    ),
    PreLort(
        "prelort-agg", "ablation: segment-wise aggregation, plain LoRA training", group="ablation"
    ),
    ZeroPad(
        "prelort-train",
        "ablation: prefix-nested training, zero-pad aggregation",
        group="ablation",
        nested="all",
    ),
    TierBalanced(
        "prelort-balanced",
        "PreLort + tier-balanced nested training: truncation t's loss weighted by 1 / (clients "
        "of rank >= t)",
        group="experimental",
        nested="all",
    ),
    PreLort(
        "prelort-prefix",
        "PreLort + prefix-scaled steps: each rank component's AdamW step scaled by the share of "
        "the step's truncations that contain it",
        group="experimental",
        nested="all",
        objective=PrefixStepObjective(),
    ),
)
