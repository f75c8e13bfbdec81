"""summary.md's tables: a row per method, a column per rank tier, and the cost per method.

The result table, the paired-difference table and the trend table differ only in their cells, their
caption and the columns before the tiers; ``tier_table`` builds the grid they share.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prelort.runtime.outputs import METRIC_LABELS

REFERENCE = "no-adapter"  # the row every comparison measures the adapters against
MISSING = "–"  # a tier the method has no figure for (its ranks stop below it, or a metric it lacks)


def seed_labels(seeds: Mapping[str, int]) -> dict[str, str]:
    """Row labels per method: the name, with ``(n = k)`` where the methods' seed counts differ
    (runs pooled from several folders, or a method pairing with a reference on fewer seeds)."""
    uneven = len(set(seeds.values())) > 1
    return {m: f"{m} (n = {k})" if uneven else m for m, k in seeds.items()}


def tier_table(
    corner: str,
    tiers: Sequence[int],
    rows: Iterable[tuple[Sequence[str], Mapping[int, str]]],
    columns: Sequence[str] = (),
) -> str:
    """Markdown: the header ``corner | *columns | rank t…``, then a line per row.

    Each row is its leading cells (one for ``corner``, one per ``columns``) and its cell per tier;
    a tier the row lacks shows ``MISSING``.
    """
    lead = [corner, *columns]
    lines = [
        "| " + " | ".join([*lead, *(f"rank {t}" for t in tiers)]) + " |",
        "|" + "---|" * (len(lead) + len(tiers)),
    ]
    for leading, cells in rows:
        if len(leading) != len(lead):
            raise ValueError(
                f"a row has {len(leading)} leading cells for the {len(lead)} columns {lead}"
            )
        lines.append("| " + " | ".join([*leading, *(cells.get(t, MISSING) for t in tiers)]) + " |")
    return "\n".join(lines)


def cost_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: communication and server time per round, wall time and, under DP, the (ε, δ)
    each method's run spent, per method."""
    dp = any(r.get("epsilon") is not None for r in rows)
    head = "| method | MB up / round | MB down / round | aggregation ms / round | wall s / run |"
    lines = [head + (" ε (δ) |" if dp else ""), "|---|---|---|---|---|" + ("---|" if dp else "")]
    for r in rows:
        line = (
            f"| {r['method']} | {r['bytes_up_per_round'] / 1e6:.3f} | "
            f"{r['bytes_down_per_round'] / 1e6:.3f} | {r['aggregation_ms_per_round']:.1f} | "
            f"{r['wall_seconds']:.0f} |"
        )
        if dp:
            spent = r.get("epsilon")
            line += " - |" if spent is None else f" {spent:.2f} ({r['delta']:.2g}) |"
        lines.append(line)
    return "\n".join(lines)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A table per metric: a row per method, a column per tier, cells ``mean ± std``."""
    blocks = []
    for metric in sorted({r["metric"] for r in rows}):
        sel = [r for r in rows if r["metric"] == metric]
        cells: dict[str, dict[int, str]] = {}
        for r in sel:
            cells.setdefault(r["method"], {})[r["tier"]] = (
                f"{r['mean']:.4f} ± {r['std']:.4f}" if r["seeds"] > 1 else f"{r['mean']:.4f}"
            )
        tiers = sorted({r["tier"] for r in sel})
        labels = seed_labels({r["method"]: r["seeds"] for r in sel})
        grid = [([labels[method]], by_tier) for method, by_tier in cells.items()]
        blocks.append(tier_table(METRIC_LABELS.get(metric, metric), tiers, grid))
    return "\n\n".join(blocks)


def reference_note(rows: Sequence[dict[str, Any]], margin: float = 0.02) -> str:
    """How much the adapters add over the no-adapter row, per metric; a warning when it is little.

    Returns "" without a reference row.
    """
    notes = []
    for metric in sorted({r["metric"] for r in rows}):
        sel = [r for r in rows if r["metric"] == metric]
        ref = [r["mean"] for r in sel if r["method"] == REFERENCE]
        others = [r["mean"] for r in sel if r["method"] != REFERENCE]
        if not ref or not others:
            continue
        lower_better = metric == "perplexity"
        best = min(others) if lower_better else max(others)
        gain = (ref[0] - best) if lower_better else (best - ref[0])
        relative = gain / ref[0] if lower_better else gain
        label = METRIC_LABELS.get(metric, metric)
        note = f"{label}: no adapter {ref[0]:.4f}, best adapter tier {best:.4f} (gain {gain:+.4f})"
        if relative < margin:
            note += (
                "; the adapters add little over the frozen base here, so this task says little"
                " about the methods"
            )
        notes.append(note)
    return "\n".join(f"- {n}" for n in notes)
