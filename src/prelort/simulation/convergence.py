"""Whether a comparison's runs have settled: each metric's change over the last rounds, and each
method's gap to a reference round by round.

A run "until its metric plateaus" needs a rule for plateau; this one is read off the curves a
comparison already records (one evaluation every ``eval_every`` rounds), so that every summary
says whether its runs were still moving when they stopped, not only where they stopped. The gaps
answer the question a ranking at one round leaves open: whether a difference between methods is
closing, holding or growing as the runs go on.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prelort.runtime.outputs import METRIC_LABELS, method_colors, save_figure
from prelort.simulation.paired import figure_path, reference_groups
from prelort.simulation.tables import tier_table

if TYPE_CHECKING:
    from prelort.simulation.compare import Comparison

WINDOW_SHARE = 0.25
"""The trend is read over the last quarter of the rounds (at least from the evaluation before
the last one): long enough to span several evaluations, late enough to say how the run ends."""

PLATEAU_TOLERANCE = 0.01
"""A metric has plateaued when its mean over seeds moved by at most 1 % of its value over the
window (along the Theil-Sen line through the window's evaluations: ``Trend.fitted_change``): for an
accuracy of 0.90 that is 0.9 points, for a perplexity of 20 it is 0.2."""


def relative(delta: float, base: float) -> float:
    """``delta / |base|``; infinite when the base is 0 and it moves."""
    if base == 0:
        return 0.0 if delta == 0 else math.copysign(math.inf, delta)
    return delta / abs(base)


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
    points: tuple[tuple[int, float], ...] = ()
    """(round, mean over the seeds) at every evaluation of the window the seeds share; empty:
    the two ends only."""

    @property
    def relative_change(self) -> float:
        """``(end - start) / |start|``: the change between the window's two ends."""
        return relative(self.end - self.start, self.start)

    @property
    def fitted_change(self) -> float:
        """The change along the Theil-Sen line through the window's evaluations (its slope the
        median of the slopes between every two of them), relative to the line's value at the
        window's start. One evaluation off the trend (a spike of one seed) hardly moves it where
        it moves the two ends' change by its whole size; with the two ends alone they are equal."""
        points = self.points or ((self.start_round, self.start), (self.end_round, self.end))
        slope = statistics.median(
            (v1 - v0) / (r1 - r0) for i, (r0, v0) in enumerate(points) for r1, v1 in points[i + 1 :]
        )
        intercept = statistics.median(v - slope * r for r, v in points)
        first, last = points[0][0], points[-1][0]
        return relative(slope * (last - first), intercept + slope * first)

    @property
    def plateau(self) -> bool:
        return abs(self.fitted_change) <= PLATEAU_TOLERANCE

    def to_row(self) -> dict[str, Any]:
        row = {k: v for k, v in asdict(self).items() if k != "points"}
        return {
            **row,
            "evaluations": len(self.points) or 2,
            "relative_change": self.relative_change,
            "fitted_change": self.fitted_change,
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
        curves = []  # per seed that evaluated both ends: round -> tiers
        for result in results:
            by_round = {r["round"]: r["tiers"] for r in result.rounds}
            if start_round in by_round and end_round in by_round:
                curves.append(by_round)
        if not curves:
            continue
        for tier in sorted(curves[0][end_round], key=int):
            for metric in sorted(curves[0][end_round][tier]):
                held = [
                    c
                    for c in curves
                    if metric in c[start_round].get(tier, {})
                    and metric in c[end_round].get(tier, {})
                ]
                if not held:
                    continue
                shared = [
                    r
                    for r in sorted(held[0])
                    if start_round <= r <= end_round
                    and all(metric in c.get(r, {}).get(tier, {}) for c in held)
                ]
                points = tuple(
                    (r, statistics.fmean(c[r][tier][metric] for c in held)) for r in shared
                )
                out.append(
                    Trend(
                        method,
                        int(tier),
                        metric,
                        start_round,
                        end_round,
                        points[0][1],
                        points[-1][1],
                        len(held),
                        points,
                    )
                )
    return out


def trend_table(found: Sequence[Trend], labels: dict[str, str] | None = None) -> str:
    """Markdown, a table per metric: a row per method, a column per tier, each cell the last
    window's change (``start → end, ±x.x % (fit ±y.y %)``), bold where the metric has plateaued."""
    labels = labels or {}
    blocks = []
    for metric in sorted({t.metric for t in found}):
        sel = [t for t in found if t.metric == metric]
        tiers = sorted({t.tier for t in sel})
        caption = (
            f"Change of {labels.get(metric, metric)} over the last {WINDOW_SHARE:.0%} of the "
            "rounds (mean over seeds): end to end, and (fit) along the Theil-Sen line through "
            f"the window's evaluations; **bold** = plateau: the fitted change within "
            f"{PLATEAU_TOLERANCE:.0%}:"
        )
        grid = []
        for method in dict.fromkeys(t.method for t in sel):
            mine = {t.tier: t for t in sel if t.method == method}
            first = next(iter(mine.values()))
            cells = {}
            for tier, t in mine.items():
                cell = (
                    f"{t.start:.4g} → {t.end:.4g}, {100 * t.relative_change:+.1f} % "
                    f"(fit {100 * t.fitted_change:+.1f} %)"
                )
                cells[tier] = f"**{cell}**" if t.plateau else cell
            span = f"{first.start_round} → {first.end_round} (n = {first.seeds})"
            grid.append(([method, span], cells))
        blocks.append(caption + "\n\n" + tier_table("method", tiers, grid, columns=["rounds"]))
    return "\n\n".join(blocks)


GAP_SCALES: dict[str, tuple[str, Callable[[float], float]]] = {
    "perplexity": ("log_perplexity", math.log),
}
"""Metrics whose gaps are read on another scale: perplexity's as log perplexity (the mean NLL per
target token, in nats), so that a gap means the same at perplexity 50 as at 15."""


@dataclass(frozen=True)
class Gap:
    """``method`` minus ``reference`` at one tier after one evaluated round, mean and std over the
    seeds that evaluated that round under both (paired by seed)."""

    method: str
    reference: str
    tier: int
    metric: str
    round: int
    mean: float
    std: float
    seeds: int


def gaps(comparison: Comparison, references: Sequence[str]) -> list[Gap]:
    """Every other method's gap to each of ``references`` at every tier, metric and round both
    evaluated; perplexity's as log perplexity (``GAP_SCALES``)."""
    out: list[Gap] = []
    for reference in references:
        for method in comparison.methods:
            if method == reference:
                continue
            cells: dict[tuple[int, str, int], list[float]] = {}
            for seed in comparison.seeds:
                mine = comparison.runs.get((method, seed))
                theirs = comparison.runs.get((reference, seed))
                if mine is None or theirs is None:
                    continue
                other_rounds = {r["round"]: r["tiers"] for r in theirs.rounds}
                for record in mine.rounds:
                    other = other_rounds.get(record["round"], {})
                    for tier, metrics in record["tiers"].items():
                        for metric, value in metrics.items():
                            if metric not in other.get(tier, {}):
                                continue
                            name, scale = GAP_SCALES.get(metric, (metric, float))
                            key = (int(tier), name, record["round"])
                            gap = scale(value) - scale(other[tier][metric])
                            cells.setdefault(key, []).append(gap)
            out += [
                Gap(
                    method,
                    reference,
                    tier,
                    metric,
                    round_,
                    statistics.fmean(found),
                    statistics.stdev(found) if len(found) > 1 else 0.0,
                    len(found),
                )
                for (tier, metric, round_), found in sorted(cells.items())
            ]
    return out


def gap_table(found: Sequence[Gap], labels: dict[str, str] | None = None) -> str:
    """Markdown, a table per reference and metric: a row per method, a column per tier, each cell
    the gap at the start and at the end of the trend window (the last quarter of the rounds)."""
    labels = labels or {}
    blocks = []
    for reference, metric in reference_groups(found):
        sel = [g for g in found if g.reference == reference and g.metric == metric]
        tiers = sorted({g.tier for g in sel})
        grid = []
        for method in dict.fromkeys(g.method for g in sel):
            mine = [g for g in sel if g.method == method]
            start_round = window_start(sorted({g.round for g in mine}))
            if start_round is None:
                continue
            end_round = max(g.round for g in mine)
            at = {(g.tier, g.round): g for g in mine}
            cells = {
                tier: f"{at[(tier, start_round)].mean:+.3f} → {at[(tier, end_round)].mean:+.3f}"
                for tier in tiers
                if (tier, start_round) in at and (tier, end_round) in at
            }
            seeds = min(g.seeds for g in mine if g.round == end_round)
            grid.append(([method, f"{start_round} → {end_round} (n = {seeds})"], cells))
        if grid:
            caption = (
                f"Gap to {reference}, each method minus {reference} in "
                f"{labels.get(metric, metric)}, mean over seeds, at the start and the end of the "
                "last quarter of the rounds (whether the difference is closing or growing):"
            )
            blocks.append(caption + "\n\n" + tier_table("method", tiers, grid, columns=["rounds"]))
    return "\n\n".join(blocks)


def plot_gaps(found: Sequence[Gap], out_dir: Path) -> list[Path]:
    """One PNG per reference and metric (``gaps_<metric>[_vs_<reference>].png``): the gap per
    round, a panel per tier (each its own scale: the gaps of a low tier to a truncated reference
    dwarf the top tier's), a line per method with a band of one std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    paths = []
    first_reference = found[0].reference if found else None
    for reference, metric in reference_groups(found):
        sel = [g for g in found if g.reference == reference and g.metric == metric]
        tiers = sorted({g.tier for g in sel})
        methods = list(dict.fromkeys(g.method for g in sel))
        colors = method_colors(methods)
        fig, axes = plt.subplots(1, len(tiers), figsize=(3.4 * len(tiers), 3.2), squeeze=False)
        for ax, tier in zip(axes[0], tiers, strict=True):
            for method in methods:
                curve = sorted(
                    (g.round, g.mean, g.std) for g in sel if g.method == method and g.tier == tier
                )
                if not curve:
                    continue
                rounds, means, stds = zip(*curve, strict=True)
                ax.plot(rounds, means, marker=".", label=method, color=colors[method])
                ax.fill_between(
                    rounds,
                    [m - s for m, s in zip(means, stds, strict=True)],
                    [m + s for m, s in zip(means, stds, strict=True)],
                    color=colors[method],
                    alpha=0.15,
                    linewidth=0,
                )
            ax.axhline(0.0, color="black", linewidth=0.8)
            ax.set_title(f"rank {tier}")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("round")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(f"{METRIC_LABELS.get(metric, metric)}\nminus {reference}")
        axes[0][-1].legend(fontsize=7)
        fig.suptitle(f"gap to {reference} per round (mean ± std over seeds)", fontsize=9)
        path = figure_path(out_dir, "gaps", metric, reference, first_reference)
        paths.append(save_figure(fig, path, dpi=100))
    return paths
