"""The plots of a comparison: final metric per tier (bars, a bar per method) and the metric per
round (a panel per tier, a line per method), with the privacy spent in the title under DP."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prelort.runtime.outputs import METRIC_LABELS, method_colors, save_figure


def plot_rounds(
    curves: Sequence[dict[str, Any]],
    methods: Sequence[str],
    out_dir: Path,
    note: str | None = None,
) -> list[Path]:
    """One PNG per metric: the metric per round (mean over seeds, ``Comparison.round_rows``), a
    panel per tier, a line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    points: dict[tuple[str, int, str], list[tuple[int, float]]] = {}
    for row in curves:
        key = (row["metric"], row["tier"], row["method"])
        points.setdefault(key, []).append((row["round"], row["mean"]))
    paths = []
    colors = method_colors(methods)
    for metric in sorted({k[0] for k in points}):
        tiers = sorted({k[1] for k in points if k[0] == metric})
        fig, axes = plt.subplots(
            1, len(tiers), figsize=(3.2 * len(tiers), 3.2), sharey=True, squeeze=False
        )
        for ax, tier in zip(axes[0], tiers, strict=True):
            for method in methods:
                curve = sorted(points.get((metric, tier, method), []))
                if curve:
                    ax.plot(
                        [r for r, _ in curve],
                        [mean for _, mean in curve],
                        marker=".",
                        label=method,
                        color=colors[method],
                    )
            ax.set_title(f"rank {tier}")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("round")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(METRIC_LABELS.get(metric, metric))
        axes[0][-1].legend(fontsize=7)
        if note:
            fig.suptitle(note, fontsize=9)
        paths.append(save_figure(fig, out_dir / f"rounds_{metric}.png", dpi=100))
    return paths


def plot_comparison(
    rows: Sequence[dict[str, Any]], out_dir: Path, note: str | None = None
) -> list[Path]:
    """One PNG per metric: grouped bars of the final value per tier, a bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for metric in sorted({r["metric"] for r in rows}):
        sel = [r for r in rows if r["metric"] == metric]
        tiers = sorted({r["tier"] for r in sel})
        methods = list(dict.fromkeys(r["method"] for r in sel))
        width = 0.8 / len(methods)
        colors = method_colors(methods)
        fig, ax = plt.subplots(figsize=(7, 4))
        for m, method in enumerate(methods):
            xs, ys, es = [], [], []
            for i, t in enumerate(tiers):
                match = [r for r in sel if r["method"] == method and r["tier"] == t]
                if match:
                    xs.append(i + (m - (len(methods) - 1) / 2) * width)
                    ys.append(match[0]["mean"])
                    es.append(match[0]["std"])
            ax.bar(xs, ys, width, yerr=es, capsize=3, label=method, color=colors[method])
        ax.set_xticks(range(len(tiers)), [f"rank {t}" for t in tiers])
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        title = f"final {METRIC_LABELS.get(metric, metric)} per rank tier"
        ax.set_title(title + (f"\n{note}" if note else ""), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
        paths.append(save_figure(fig, out_dir / f"compare_{metric}.png"))
    return paths
