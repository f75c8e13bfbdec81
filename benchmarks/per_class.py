"""Scores per true class of finished runs: which classes (or, on generation, which groups) each tier learnt.

    python -m benchmarks.per_class RUN [RUN ...] [--metric accuracy] [--tiers 2,16] [--holders]
        [--out FILE.csv]

A run's ``examples.json`` holds each test example's score per tier (0/1 accuracy on classification;
NLL per target token and ROUGE-L on generation); the test rows are the same for every run and seed
(``prelort.runtime.workbench.scored_rows``), so their labels come from the task alone, without
loading the model. On generation a row's label is its partition group: on BBC headlines the
article's category, by which the Dirichlet split skews the clients. A mean accuracy that swings over
seeds is often whole classes learnt in one seed and not in another (docs/RESULTS.md section 13);
this table shows it. ``--holders`` adds, per run, how many training rows of each class the clients
of each rank hold (the run's partition, rebuilt from its settings): where a low tier gains from
high-rank clients, whether it gains most on what they hold.
"""

from __future__ import annotations

import argparse
import csv
import functools
from collections.abc import Sequence
from pathlib import Path

from prelort.config import SimulationConfig, config_from_mapping
from prelort.data.tasks import TaskData
from prelort.errors import ConfigError
from prelort.federation.plan import build_plan
from prelort.runtime.outputs import EXAMPLES_NAME, read_metrics
from prelort.runtime.workbench import load_config_task, scored_rows
from prelort.simulation.paired import run_examples


@functools.cache  # --holders reads each run twice; its task is loaded once
def run_task(run: Path) -> tuple[dict, SimulationConfig, TaskData]:
    """A finished run's metrics.json, its settings and its task (loaded again, without the model)."""
    metrics = read_metrics(run / "metrics.json")
    config = config_from_mapping(metrics["config"])
    return metrics, config, load_config_task(config)


def scored_labels(run: Path) -> tuple[list[int], tuple[str, ...]]:
    """(label or group id of each scored test example, their names) of a run, from its config.

    Raises:
        ConfigError: a record re-scored on held-out rows that does not state its source's sample.
    """
    metrics, config, task = run_task(run)
    held_out = bool((metrics.get("rescored") or {}).get("held_out"))
    if held_out:
        # its config states how many rows it scored; which ones follow from its source's sample
        source = metrics["rescored"].get("source_eval_examples")
        if source is None:
            raise ConfigError(
                f"{run}: re-scored on held-out rows without source_eval_examples; re-score it with "
                "benchmarks.rescore --held-out to record it"
            )
        config = config.replace(eval_examples=source)
    rows, _ = scored_rows(task, config, held_out)
    return [task.test.labels[i] for i in rows], task.label_names


def rows_by_rank(run: Path) -> dict[str, dict[int, int]]:
    """Per class name, the training rows of that class the run's clients of each rank held."""
    metrics, config, task = run_task(run)
    plan = build_plan(config, task.train.labels, metrics["client_ranks"])
    held = {name: dict.fromkeys(sorted(set(plan.client_ranks)), 0) for name in task.label_names}
    for rank, rows in zip(plan.client_ranks, plan.client_rows, strict=True):
        for row in rows:
            held[task.label_names[task.train.labels[row]]][rank] += 1
    return held


def per_class(run: Path, metric: str = "accuracy") -> dict[str, dict[str, tuple[float, int]]]:
    """Per tier, per class name: (mean of ``metric`` over the class's test examples, their count).

    Raises:
        ConfigError: no examples.json, or its scores do not match its test rows.
    """
    labels, names = scored_labels(run)
    tiers = run_examples(run)
    if tiers is None:
        raise ConfigError(f"{run}: no {EXAMPLES_NAME}; give the folder of a finished run")
    table: dict[str, dict[str, tuple[float, int]]] = {}
    for tier, scores in tiers.items():
        if metric not in scores:
            continue
        if len(scores[metric]) != len(labels):
            raise ConfigError(
                f"{run}: {len(scores[metric])} scores at tier {tier} for {len(labels)} test examples"
            )
        table[tier] = {}
        for label, name in enumerate(names):
            mine = [s for s, y in zip(scores[metric], labels, strict=True) if y == label]
            if mine:
                table[tier][name] = (sum(mine) / len(mine), len(mine))
    return table


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (<method>-seed<S>)")
    parser.add_argument(
        "--metric", default="accuracy", help="a per-example score: accuracy, nll, rouge_l"
    )
    parser.add_argument("--tiers", help="comma-separated tiers to show (default: all)")
    parser.add_argument(
        "--holders", action="store_true", help="also the training rows per class and client rank"
    )
    parser.add_argument("--out", type=Path, help="also write the rows as CSV")
    args = parser.parse_args(argv)
    wanted = None if args.tiers is None else set(args.tiers.split(","))
    rows = []
    for run in args.runs:
        for tier, classes in per_class(run, args.metric).items():
            if wanted is None or tier in wanted:
                for name, (score, n) in classes.items():
                    rows.append(
                        {"run": run.name, "tier": tier, "class": name, "score": score, "n": n}
                    )
    names = list(dict.fromkeys(r["class"] for r in rows))
    counts = {r["class"]: r["n"] for r in rows}
    print(
        f"| {args.metric} per true class | "
        + " | ".join(f"{c} (n={counts[c]})" for c in names)
        + " |"
    )
    print("|---|" + "---|" * len(names))
    for key in dict.fromkeys((r["run"], r["tier"]) for r in rows):
        cells = {r["class"]: r["score"] for r in rows if (r["run"], r["tier"]) == key}
        shown = " | ".join(f"{cells[c]:.3f}" for c in names)
        print(f"| {key[0]}, rank {key[1]} | {shown} |")
    if args.holders:
        print(f"\n| training rows per class, by client rank | {' | '.join(names)} |")
        print("|---|" + "---|" * len(names))
        for run in args.runs:
            held = rows_by_rank(run)
            for rank in next(iter(held.values())):
                shown = " | ".join(str(held[c][rank]) for c in names)
                print(f"| {run.name}, clients of rank {rank} | {shown} |")
    if args.out is not None:
        with args.out.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["run", "tier", "class", "score", "n"])
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
