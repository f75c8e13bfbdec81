"""Accuracy per true class of finished classification runs: which classes each tier learnt.

    python -m benchmarks.per_class RUN [RUN ...] [--metric accuracy] [--tiers 2,16] [--out FILE.csv]

A run's ``examples.json`` holds each test example's 0/1 score per tier; the test rows are the same
for every run and seed (``prelort.runtime.workbench.eval_subset``), so their labels come from the task
alone, without loading the model. A mean accuracy that swings over seeds is often whole classes
learnt in one seed and not in another (docs/RESULTS.md section 13); this table shows it.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

from prelort.config import config_from_mapping
from prelort.data.tasks import CLASSIFICATION
from prelort.errors import ConfigError
from prelort.runtime.outputs import EXAMPLES_NAME, read_metrics
from prelort.runtime.workbench import eval_subset, load_config_task
from prelort.simulation.paired import run_examples


def scored_labels(run: Path) -> tuple[list[int], tuple[str, ...]]:
    """(label id of each scored test example, class names) of a run, from its config."""
    config = config_from_mapping(read_metrics(run / "metrics.json")["config"])
    task = load_config_task(config)
    if task.kind != CLASSIFICATION:
        raise ConfigError(f"{run}: task {config.task!r} is not classification")
    rows = eval_subset(len(task.test), config.eval_examples)
    return [task.test.labels[i] for i in rows], task.label_names


def per_class(run: Path, metric: str = "accuracy") -> dict[str, dict[str, tuple[float, int]]]:
    """Per tier, per class name: (mean of ``metric`` over the class's test examples, their count).

    Raises:
        ConfigError: not a classification run, or its scores do not match its test rows.
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
    parser.add_argument("--metric", default="accuracy", help="a 0/1 per-example score")
    parser.add_argument("--tiers", help="comma-separated tiers to show (default: all)")
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
        print(f"| {key[0]}, rank {key[1]} | " + " | ".join(f"{cells[c]:.2f}" for c in names) + " |")
    if args.out is not None:
        with args.out.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["run", "tier", "class", "score", "n"])
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
