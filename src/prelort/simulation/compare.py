"""Methods x seeds on identical partitions and rank assignments, summarised as mean +- std."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prelort.aggregation import get_method
from prelort.config import SimulationConfig
from prelort.io import atomic_write_text, write_json
from prelort.runtime.outputs import METRIC_LABELS, csv_text
from prelort.runtime.result import SimulationResult
from prelort.simulation.convergence import gap_table, gaps, plot_gaps, trend_table, trends
from prelort.simulation.executors import run_in_processes, run_in_turn
from prelort.simulation.paired import (
    default_reference,
    difference_table,
    paired_differences,
    plot_differences,
)
from prelort.simulation.plots import plot_comparison, plot_rounds
from prelort.simulation.tables import (
    REFERENCE,
    cost_table,
    markdown_table,
    reference_note,
)


@dataclass
class Comparison:
    """Results of every (method, seed) run of a comparison."""

    base: SimulationConfig
    methods: list[str]
    seeds: list[int]
    runs: dict[tuple[str, int], SimulationResult] = field(default_factory=dict)
    unfinished: list[str] = field(default_factory=list)
    # Where each run's folder is, for comparisons pooled from several compare folders; a run not
    # named here lives at ``<base.out>/<label>-seed<S>``.
    run_dirs: dict[tuple[str, int], Path] = field(default_factory=dict)

    def run_dir(self, label: str, seed: int) -> Path:
        """The folder of one run: its metrics.json, examples.json and adapter."""
        return self.run_dirs.get((label, seed), self.base.out / f"{label}-seed{seed}")

    def summary_rows(self) -> list[dict[str, Any]]:
        """One row per method, tier and metric: mean and std of the final value over seeds."""
        rows = []
        for method in self.methods:
            results = [self.runs[(method, s)] for s in self.seeds if (method, s) in self.runs]
            if not results:
                continue
            for tier in sorted(results[0].final, key=int):
                for metric in sorted(results[0].final[tier]):
                    values = [r.final[tier][metric] for r in results]
                    rows.append(
                        {
                            "method": method,
                            "tier": int(tier),
                            "metric": metric,
                            "mean": statistics.fmean(values),
                            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                            "seeds": len(values),
                            "wall_seconds": statistics.fmean(r.wall_seconds for r in results),
                        }
                    )
        return rows

    def round_rows(self) -> list[dict[str, Any]]:
        """One row per method, tier, metric and evaluated round: mean and std over the seeds that
        evaluated that round, the curves a comparison is plotted from."""
        values: dict[tuple[str, int, str, int], list[float]] = {}
        for method in self.methods:
            for seed in self.seeds:
                result = self.runs.get((method, seed))
                for record in result.rounds if result else ():
                    for tier, metrics in record["tiers"].items():
                        for metric, value in metrics.items():
                            key = (method, int(tier), metric, record["round"])
                            values.setdefault(key, []).append(value)
        return [
            {
                "method": method,
                "tier": tier,
                "metric": metric,
                "round": round_,
                "mean": statistics.fmean(found),
                "std": statistics.stdev(found) if len(found) > 1 else 0.0,
                "seeds": len(found),
            }
            for (method, tier, metric, round_), found in sorted(
                values.items(), key=lambda item: (self.methods.index(item[0][0]), *item[0][1:])
            )
        ]

    def cost_rows(self) -> list[dict[str, Any]]:
        """One row per method: bytes up / down and server aggregation time per round, wall time."""
        rows = []
        for method in self.methods:
            results = [self.runs[(method, s)] for s in self.seeds if (method, s) in self.runs]
            traffic = [t for r in results for t in r.traffic]
            if not traffic:
                continue
            rows.append(
                {
                    "method": method,
                    "bytes_up_per_round": statistics.fmean(t["bytes_up"] for t in traffic),
                    "bytes_down_per_round": statistics.fmean(t["bytes_down"] for t in traffic),
                    "aggregation_ms_per_round": 1000
                    * statistics.fmean(t["aggregation_seconds"] for t in traffic),
                    "wall_seconds": statistics.fmean(r.wall_seconds for r in results),
                    **privacy_spent(results),
                }
            )
        return rows

    def privacy_note(self) -> str | None:
        """The runs' client-level (ε, δ) in a few words, for titles; None without DP."""
        spent = [privacy_spent([r]) for r in self.runs.values()]
        epsilons = sorted({p["epsilon"] for p in spent if p.get("epsilon") is not None})
        if not epsilons:
            return None
        delta = next(p["delta"] for p in spent if p.get("epsilon") is not None)
        shown = (
            f"{epsilons[0]:.2f}" if len(epsilons) == 1 else f"{epsilons[0]:.2f}-{epsilons[-1]:.2f}"
        )
        return f"client-level DP: ε = {shown} at δ = {delta:.2g}"


def privacy_spent(results: Sequence[SimulationResult]) -> dict[str, Any]:
    """``{"epsilon", "delta"}`` of the runs' DP after their last round (the largest ε over
    seeds); empty without DP."""
    budgets = [b for r in results if (b := r.privacy_budget()) and b.get("epsilon") is not None]
    if not budgets:
        return {}
    worst = max(budgets, key=lambda b: b["epsilon"])
    return {"epsilon": worst["epsilon"], "delta": worst["delta"]}


def run_variants(
    methods: Sequence[str], heads: Sequence[str] | None, reference: bool
) -> list[tuple[str, str, str | None]]:
    """``(label, method, head)`` of every run of a seed.

    With several ``heads`` every method runs once per head mode, labelled ``<method>-<head>-head``;
    ``reference`` appends the no-adapter row (shared head: its tiers are one model).
    """
    variants: list[tuple[str, str, str | None]] = []
    for method in methods:
        if method == REFERENCE:
            continue
        if heads and len(heads) > 1:
            variants += [(f"{method}-{h}-head", method, h) for h in heads]
        else:
            variants.append((method, method, heads[0] if heads else None))
    if reference or REFERENCE in methods:
        variants.append((REFERENCE, REFERENCE, None))
    return variants


def compared_nested(nested: str | None, method: str) -> str | None:
    """The ``nested`` setting of a comparison, for one of its methods: a mode chosen for the
    comparison (``--nested sample`` to afford nested training) reaches only the methods that
    train nested; the others (FlexLoRA, zero-padding, the peers) keep training plain, as they are
    defined. Ask one method for nested training with ``prelort simulate --nested``."""
    return nested if get_method(method).nested != "off" else None


def run_comparison(
    base: SimulationConfig,
    methods: Sequence[str],
    seeds: Sequence[int],
    progress: bool = True,
    on_run: Callable[[str, int, SimulationResult], None] | None = None,
    heads: Sequence[str] | None = None,
    reference: bool = False,
    jobs: int = 1,
) -> Comparison:
    """Run every method with every seed (in turn, one workbench of task + model serves all).

    Each run of a seed uses the same partition, rank assignment and initial adapter whatever the
    method, because all of them derive from the seed alone.

    Args:
        heads: head modes to run every method with (None: each method's default).
        reference: add the no-adapter reference row (frozen base + head, or zero-shot).
        jobs: runs side by side in worker processes (``prelort.simulation.executors``), each
            with its share of the cores; 1 runs them one after another in this process.
    """
    variants = run_variants(methods, heads, reference)
    comparison = Comparison(base, [label for label, *_ in variants], list(seeds))
    runs = [
        (
            label,
            seed,
            base.replace(
                method=method,
                seed=seed,
                head=head or base.head,
                nested=compared_nested(base.nested, method),
                out=base.out / f"{label}-seed{seed}",
            ),
        )
        for seed in seeds
        for label, method, head in variants
    ]
    if jobs > 1 and len(runs) > 1:
        finished = run_in_processes(runs, min(jobs, len(runs)), progress)
    else:
        finished = run_in_turn(runs, progress)
    for label, seed, result in finished:
        comparison.runs[(label, seed)] = result
        if on_run is not None:
            on_run(label, seed, result)
    return comparison


def write_comparison(
    comparison: Comparison,
    out_dir: Path,
    references: Sequence[str] | None = None,
    rounds_from: int = 0,
) -> dict[str, Path]:
    """summary.md, summary.csv, summary.json, differences.csv, trends.csv, rounds.csv, gaps.csv
    and the comparison plots.

    Args:
        references: the methods the others' paired differences and gaps per round are measured
            against, each in turn (default: the recommended one where it ran, else the first).
        rounds_from: the first round the per-round plots draw (the CSVs hold them all).
    """
    rows = comparison.summary_rows()
    costs = comparison.cost_rows()
    note = reference_note(rows)
    privacy = comparison.privacy_note()
    references = (
        list(references or [default_reference(comparison.methods)])
        if len(comparison.methods) > 1
        else []
    )
    diffs = paired_differences(comparison, references) if references else []
    moves = trends(comparison)
    trend_rows = [t.to_row() for t in moves]
    distances = gaps(comparison, references)
    table = markdown_table(rows) + ("\n\n" + note if note else "")
    table += "\n\n" + difference_table(diffs) if diffs else ""
    table += "\n\n" + trend_table(moves, METRIC_LABELS) if moves else ""
    gap_text = gap_table(distances, METRIC_LABELS)
    table += "\n\n" + gap_text if gap_text else ""
    table += "\n\n" + cost_table(costs)
    if privacy:
        table += f"\n\n{privacy} (RDP accountant; per run: metrics.json `privacy`)."
    atomic_write_text(out_dir / "summary.md", table + "\n")
    columns = ["method", "tier", "metric", "mean", "std", "seeds", "wall_seconds"]
    atomic_write_text(out_dir / "summary.csv", csv_text(rows, columns))
    write_json(
        out_dir / "summary.json",
        {
            "config": comparison.base.to_dict(),
            "methods": comparison.methods,
            "seeds": comparison.seeds,
            "rows": rows,
            "costs": costs,
            "differences": [d.to_row() for d in diffs],
            "trends": trend_rows,
        },
    )
    if trend_rows:
        atomic_write_text(out_dir / "trends.csv", csv_text(trend_rows, [*trend_rows[0]]))
    curves = comparison.round_rows()
    if curves:
        atomic_write_text(out_dir / "rounds.csv", csv_text(curves, [*curves[0]]))
    if distances:
        gap_rows = [dataclasses.asdict(g) for g in distances]
        atomic_write_text(out_dir / "gaps.csv", csv_text(gap_rows, [*gap_rows[0]]))
    if diffs:
        columns = [*diffs[0].to_row()]
        atomic_write_text(
            out_dir / "differences.csv", csv_text([d.to_row() for d in diffs], columns)
        )
    atomic_write_text(
        out_dir / "costs.csv",
        csv_text(
            costs,
            [
                "method",
                "bytes_up_per_round",
                "bytes_down_per_round",
                "aggregation_ms_per_round",
                "wall_seconds",
                "epsilon",
                "delta",
            ],
        ),
    )
    plots = plot_comparison(rows, out_dir, privacy) + plot_rounds(
        [c for c in curves if c["round"] >= rounds_from], comparison.methods, out_dir, privacy
    )
    plots += plot_differences(diffs, out_dir) if diffs else []
    late = [g for g in distances if g.round >= rounds_from]
    plots += plot_gaps(late, out_dir) if late else []
    return {
        "summary_md": out_dir / "summary.md",
        "summary_csv": out_dir / "summary.csv",
        **{p.stem: p for p in plots},
    }
