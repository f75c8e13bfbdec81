"""Whether a comparison's runs have settled: each metric's change over the last rounds.

A run "until its metric plateaus" needs a rule for plateau; this one is read off the curves a
comparison already records (one evaluation every ``eval_every`` rounds), so that every summary
says whether its runs were still moving when they stopped, not only where they stopped.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from prelort.simulation.tables import tier_table

if TYPE_CHECKING:
    from prelort.simulation.compare import Comparison

WINDOW_SHARE = 0.25
"""The trend is read over the last quarter of the rounds (at least from the evaluation before
the last one): long enough to span several evaluations, late enough to say how the run ends."""

PLATEAU_TOLERANCE = 0.01
"""A metric has plateaued when its mean over seeds moved by at most 1 % of its value over the
window: for an accuracy of 0.90 that is 0.9 points, for a perplexity of 20 it is 0.2."""


@dataclass(frozen=True)
class Trend:
    """How one method's metric at one tier moved over the last rounds, mean over seeds."""

    method: str
    tier: int
    metric: str
    start_round: int
    end_round: int
    start: float
    end: float
    seeds: int

    @property
    def relative_change(self) -> float:
        """``(end - start) / |start|``; infinite when it starts at 0 and moves."""
        if self.start == 0:
            return 0.0 if self.end == 0 else math.copysign(math.inf, self.end)
        return (self.end - self.start) / abs(self.start)

    @property
    def plateau(self) -> bool:
        return abs(self.relative_change) <= PLATEAU_TOLERANCE

    def to_row(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "relative_change": self.relative_change,
            "plateau": self.plateau,
        }


def window_start(evaluated: Sequence[int]) -> int | None:
    """The round a trend is read from, given a run's evaluated rounds (ascending): the latest one
    at least a quarter of the run before the last; None with fewer than two evaluations."""
    if len(evaluated) < 2:
        return None
    last = evaluated[-1]
    span = max(1, round(WINDOW_SHARE * last))
    earlier = [r for r in evaluated[:-1] if r <= last - span]
    return earlier[-1] if earlier else evaluated[-2]


def trends(comparison: Comparison) -> list[Trend]:
    """One trend per method, tier and metric over the seeds that evaluated the same two rounds.

    Seeds of a method may differ in their evaluated rounds (a run extended with another
    ``--eval-every``); the window comes from the first seed's rounds and a seed lacking either
    round is left out (``Trend.seeds`` counts those used).
    """
    out = []
    for method in comparison.methods:
        results = [
            comparison.runs[(method, s)] for s in comparison.seeds if (method, s) in comparison.runs
        ]
        if not results:
            continue
        evaluated = sorted(r["round"] for r in results[0].rounds)
        start_round = window_start(evaluated)
        if start_round is None:
            continue
        end_round = evaluated[-1]
        pairs = []
        for result in results:
            by_round = {r["round"]: r["tiers"] for r in result.rounds}
            if start_round in by_round and end_round in by_round:
                pairs.append((by_round[start_round], by_round[end_round]))
        if not pairs:
            continue
        for tier in sorted(pairs[0][1], key=int):
            for metric in sorted(pairs[0][1][tier]):
                values = [
                    (first[tier][metric], last[tier][metric])
                    for first, last in pairs
                    if metric in first.get(tier, {}) and metric in last.get(tier, {})
                ]
                if not values:
                    continue
                out.append(
                    Trend(
                        method,
                        int(tier),
                        metric,
                        start_round,
                        end_round,
                        statistics.fmean(v[0] for v in values),
                        statistics.fmean(v[1] for v in values),
                        len(values),
                    )
                )
    return out


def trend_table(found: Sequence[Trend], labels: dict[str, str] | None = None) -> str:
    """Markdown, a table per metric: a row per method, a column per tier, each cell the last
    window's change (``start → end, ±x.x %``), bold where the metric has plateaued."""
    labels = labels or {}
    blocks = []
    for metric in sorted({t.metric for t in found}):
        sel = [t for t in found if t.metric == metric]
        tiers = sorted({t.tier for t in sel})
        caption = (
            f"Change of {labels.get(metric, metric)} over the last rounds (mean over seeds; "
            f"**bold** = plateau: within {PLATEAU_TOLERANCE:.0%} of its value over the last "
            f"{WINDOW_SHARE:.0%} of the rounds):"
        )
        grid = []
        for method in dict.fromkeys(t.method for t in sel):
            mine = {t.tier: t for t in sel if t.method == method}
            first = next(iter(mine.values()))
            cells = {}
            for tier, t in mine.items():
                cell = f"{t.start:.4g} → {t.end:.4g}, {100 * t.relative_change:+.1f} %"
                cells[tier] = f"**{cell}**" if t.plateau else cell
            span = f"{first.start_round} → {first.end_round} (n = {first.seeds})"
            grid.append(([method, span], cells))
        blocks.append(caption + "\n\n" + tier_table("method", tiers, grid, columns=["rounds"]))
    return "\n\n".join(blocks)
