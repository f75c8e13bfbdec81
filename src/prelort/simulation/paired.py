"""Which differences between methods are real: paired bootstrap intervals over examples and seeds.

Every method of a comparison is scored on the same test examples (one subset per task, seeded) and,
for a seed, from the same partitions, ranks and initial adapter. So the difference between two
methods is measured example by example: for each tier and metric, ``D[s, i]`` is method minus
reference on example i under seed s. Its mean is resampled ``RESAMPLES`` times, drawing examples and
seeds with replacement (the same draw for both methods: paired), and the 2.5 and 97.5 percentiles
give the 95 % interval. A difference is *separated* only where that interval excludes zero.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from prelort.errors import DataError
from prelort.runtime.outputs import EXAMPLES_NAME, METRIC_LABELS, method_colors, save_figure
from prelort.simulation.tables import seed_labels, tier_table

if TYPE_CHECKING:
    from prelort.simulation.compare import Comparison

log = logging.getLogger(__name__)

RESAMPLES = 2000
LEVEL = 0.95
BOOTSTRAP_SEED = 0  # the same resamples every time a comparison is summarised
LOWER_IS_BETTER = frozenset({"nll"})  # per-example metrics where a negative difference is a gain


@dataclass(frozen=True)
class Difference:
    """``method`` minus ``reference`` on one tier's metric: the mean and its 95 % interval."""

    method: str
    reference: str
    tier: int
    metric: str
    mean: float
    low: float
    high: float
    examples: int
    seeds: int

    @property
    def separated(self) -> bool:
        """The interval excludes zero: the difference is not resampling noise."""
        return self.low > 0 or self.high < 0

    def to_row(self) -> dict[str, Any]:
        return {**self.__dict__, "separated": self.separated}


def paired_interval(
    diffs: torch.Tensor, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float, float]:
    """Mean of ``diffs`` (seeds, examples) and its bootstrap interval at ``LEVEL``.

    Each resample draws seeds and examples with replacement and averages the drawn cells.
    """
    seeds, examples = diffs.shape
    generator = torch.Generator().manual_seed(seed)
    drawn_seeds = torch.randint(seeds, (resamples, seeds), generator=generator)
    drawn_examples = torch.randint(examples, (resamples, examples), generator=generator)
    per_seed = diffs.double()[drawn_seeds]  # (B, seeds, examples)
    picked = per_seed.gather(2, drawn_examples[:, None, :].expand(-1, seeds, -1))
    means = picked.mean(dim=(1, 2))  # (B,)
    tail = (1 - LEVEL) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return float(diffs.double().mean()), float(low), float(high)


def run_examples(run_dir: Path) -> dict[str, dict[str, list[float]]] | None:
    """A finished run's per-example final scores (``examples.json``), or None if it has none.

    Raises:
        DataError: a file that is not JSON, or not ``{"tiers": {tier: {metric: [score, ...]}}}``.
    """
    path = run_dir / EXAMPLES_NAME
    if not path.is_file():
        return None
    try:
        tiers = json.loads(path.read_text(encoding="utf-8"))["tiers"]
        if not all(
            isinstance(scores, list) for metrics in tiers.values() for scores in metrics.values()
        ):
            raise TypeError("a metric's scores are not a list")
    except (
        OSError,
        UnicodeDecodeError,
        json.JSONDecodeError,
        KeyError,
        TypeError,
        AttributeError,
    ) as e:
        raise DataError(f"{path}: not a readable examples file ({type(e).__name__}: {e})") from None
    return tiers


def default_reference(methods: Sequence[str]) -> str:
    """The recommended method where it runs, else the first one."""
    from prelort.aggregation.registry import methods as registered

    recommended = [n for n, m in registered().items() if m.group == "recommended"]
    return next((m for m in methods if m in recommended), methods[0])


def paired_differences(comparison: Comparison, references: Sequence[str]) -> list[Difference]:
    """Every other method's difference to each of ``references`` per tier and per-example metric.

    ``write_comparison`` passes the recommended method by default. Several references give the
    paper's claim table in one pass (e.g. FedIT at the lowest rank, the lowest-rank clients alone,
    FedIT at the top rank). Only seeds both methods finished with per-example scores count; a
    method without any is left out.
    """
    scores = {
        (label, seed): run_examples(comparison.run_dir(label, seed))
        for label, seed in comparison.runs
    }
    out: list[Difference] = []
    for reference in references:
        for method in comparison.methods:
            if method != reference:
                out += _differences(comparison.seeds, scores, method, reference)
    return out


def _differences(
    seeds: Sequence[int],
    scores: dict[tuple[str, int], dict[str, dict[str, list[float]]] | None],
    method: str,
    reference: str,
) -> list[Difference]:
    shared = [s for s in seeds if scores.get((method, s)) and scores.get((reference, s))]
    runs = [scores[(m, s)] for s in shared for m in (method, reference)]
    if not runs:
        return []
    out, unpaired = [], set()
    for tier in sorted(set.intersection(*(set(run) for run in runs)), key=int):
        for metric in sorted(set.intersection(*(set(run[tier]) for run in runs))):
            counts = {len(run[tier][metric]) for run in runs}
            if len(counts) > 1:  # scored on other test examples (another --eval-examples)
                unpaired |= counts
                continue
            rows = [
                torch.tensor(scores[(method, s)][tier][metric])
                - torch.tensor(scores[(reference, s)][tier][metric])
                for s in shared
            ]
            mean, low, high = paired_interval(torch.stack(rows))
            out.append(
                Difference(
                    method, reference, int(tier), metric, mean, low, high, len(rows[0]), len(shared)
                )
            )
    if unpaired:
        log.warning(
            "%s against %s: scored on %s test examples; only scores of the same examples pair, "
            "so their differences are left out",
            method,
            reference,
            " and ".join(map(str, sorted(unpaired))),
        )
    return out


def difference_table(diffs: Sequence[Difference]) -> str:
    """Markdown: a table per metric, a row per method, a column per tier; ``*`` marks separated."""
    if not diffs:
        return ""
    blocks = []
    for reference, metric in reference_groups(diffs):
        sel = [d for d in diffs if d.metric == metric and d.reference == reference]
        tiers = sorted({d.tier for d in sel})
        first = sel[0]
        # A method pairs with the reference only over the seeds both ran, so rows can differ.
        seed_counts = {d.method: d.seeds for d in sel}
        labels = seed_labels(seed_counts)
        uniform = len(set(seed_counts.values())) == 1
        seeds = f"{first.seeds} seed(s)" if uniform else "the seeds both ran (n per row)"
        caption = (
            f"Difference in {METRIC_LABELS.get(metric, metric)} to {first.reference}, 95 % paired "
            f"bootstrap interval over {first.examples} test examples x {seeds} "
            f"({RESAMPLES} resamples); * = the interval excludes 0"
            f"{'; lower is better' if metric in LOWER_IS_BETTER else ''}:"
        )
        cells: dict[str, dict[int, str]] = {}
        for d in sel:
            cells.setdefault(d.method, {})[d.tier] = (
                f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]{' *' if d.separated else ''}"
            )
        grid = [([labels[method]], by_tier) for method, by_tier in cells.items()]
        blocks.append(caption + "\n\n" + tier_table("method", tiers, grid))
    return "\n\n".join(blocks)


def plot_differences(diffs: Sequence[Difference], out_dir: Path) -> list[Path]:
    """One PNG per metric: each method's difference to the reference per tier, with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    first_reference = diffs[0].reference if diffs else None
    for reference, metric in reference_groups(diffs):
        sel = [d for d in diffs if d.metric == metric and d.reference == reference]
        tiers = sorted({d.tier for d in sel})
        methods = list(dict.fromkeys(d.method for d in sel))
        width = 0.8 / len(methods)
        colors = method_colors(methods)
        fig, ax = plt.subplots(figsize=(8.5, 4))
        for m, method in enumerate(methods):
            points = [d for t in tiers for d in sel if d.method == method and d.tier == t]
            xs = [tiers.index(d.tier) + (m - (len(methods) - 1) / 2) * width for d in points]
            ys = [d.mean for d in points]
            errors = [[d.mean - d.low for d in points], [d.high - d.mean for d in points]]
            ax.errorbar(xs, ys, yerr=errors, fmt="o", capsize=3, label=method, color=colors[method])
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(tiers)), [f"rank {t}" for t in tiers])
        ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} minus {sel[0].reference}")
        ax.set_title("paired differences, 95 % bootstrap intervals", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # off the points
        path = figure_path(out_dir, "differences", metric, reference, first_reference)
        paths.append(save_figure(fig, path))
    return paths


def figure_path(
    out_dir: Path, kind: str, metric: str, reference: str, first_reference: str | None
) -> Path:
    """``<kind>_<metric>.png`` for the first reference, ``<kind>_<metric>_vs_<reference>.png`` for
    each further one, so a single-reference summary keeps the plain names."""
    suffix = "" if reference == first_reference else f"_vs_{reference}"
    return out_dir / f"{kind}_{metric}{suffix}.png"


def reference_groups(diffs: Sequence[Any]) -> list[tuple[str, str]]:
    """(reference, metric) pairs in the references' order, metrics sorted within each: one table or
    plot each. ``diffs``: anything with a ``reference`` and a ``metric`` (differences, gaps)."""
    references = list(dict.fromkeys(d.reference for d in diffs))
    return [
        (r, m) for r in references for m in sorted({d.metric for d in diffs if d.reference == r})
    ]
