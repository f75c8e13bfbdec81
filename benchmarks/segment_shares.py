"""Where a method's global adapter keeps its energy, round by round: each rank segment's share.

    python -m benchmarks.segment_shares RUN [RUN ...] [--csv FILE] [--plot FILE.png] [--per-step]

Every round's record (``traffic`` in a run's metrics.json) holds each rank segment's share of the
global adapter's energy ``||s B A||^2`` and the ranks its clients trained at. This pools a method's
seeds (run folders ``<method>-seed<S>``) and reports per round the mean share outside the first
segment and the mean client rank. A share that falls to 0 is rank collapse: every tier then serves
the first segment alone, whatever the clients' ranks (zero-padding's dilution, HetLoRA's pruning
that follows it; docs/RESULTS.md section 39). ``--per-step`` prints each segment's norm per round
and that norm over the square of the round's step factor (``lr_schedule``): on a decaying step, a
segment that only holds what one round's steps put there (its factors each at a level set by the
step) keeps that ratio flat, where a segment that accumulates grows (section 47).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from prelort.errors import DataError
from prelort.runtime.outputs import method_colors, read_metrics, save_figure
from prelort.training.schedule import round_lr_factor


def run_shares(run: Path) -> dict[int, tuple[float, float]]:
    """Per round of one run: (energy share outside the first rank segment, mean client rank).

    Raises:
        DataError: no metrics.json, or rounds without segment records (an adapter-less method).
    """
    path = run / "metrics.json"
    if not path.is_file():
        raise DataError(f"{run}: no metrics.json; give finished or running run folders")
    traffic = json.loads(path.read_text("utf-8")).get("traffic", [])
    rows = {
        t["round"]: (1.0 - t["segments"][0]["share"], statistics.fmean(t["ranks"]))
        for t in traffic
        if t.get("segments") and t.get("ranks")
    }
    if not rows:
        raise DataError(f"{run}: no round records rank segments (a method without an adapter?)")
    return rows


def norms_per_step(run: Path) -> list[dict]:
    """Per round and rank segment of one run: the segment's norm, the round's step factor and
    norm / factor²."""
    metrics = read_metrics(run / "metrics.json")
    schedule = metrics["config"].get("lr_schedule", "constant")
    rows = []
    for t in metrics.get("traffic", []):
        factor = round_lr_factor(schedule, t["round"], metrics["config"]["rounds"])
        for segment in t.get("segments") or []:
            rows.append(
                {
                    "run": run.name,
                    "round": t["round"],
                    "segment": f"{segment['lo'] + 1}-{segment['hi']}",
                    "norm": segment["norm"],
                    "step_factor": factor,
                    "norm_per_step_squared": segment["norm"] / factor**2,
                }
            )
    return rows


def method_shares(runs: Sequence[Path]) -> dict[str, dict[int, list[tuple[float, float]]]]:
    """Per method (the run folder's name before ``-seed``), per round: every seed's pair."""
    pooled: dict[str, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        method = run.name.rpartition("-seed")[0] or run.name
        for round_index, pair in run_shares(run).items():
            pooled[method][round_index].append(pair)
    return pooled


def rows_of(pooled: dict[str, dict[int, list[tuple[float, float]]]]) -> list[dict]:
    """One CSV row per method and round: mean and spread over seeds."""
    rows = []
    for method, rounds in pooled.items():
        for round_index in sorted(rounds):
            outside = [p[0] for p in rounds[round_index]]
            ranks = [p[1] for p in rounds[round_index]]
            rows.append(
                {
                    "method": method,
                    "round": round_index,
                    "seeds": len(outside),
                    "share_outside_first": statistics.fmean(outside),
                    "min": min(outside),
                    "max": max(outside),
                    "mean_client_rank": statistics.fmean(ranks),
                }
            )
    return rows


def plot(rows: list[dict], out: Path) -> Path:
    """Share outside the first segment per round (log scale), a line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    colors = method_colors(methods)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    floor = 1e-5  # a share of exactly 0 (pruned away) drawn at the floor of the log axis
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        xs = [r["round"] for r in mine]
        ax.plot(
            xs,
            [max(r["share_outside_first"], floor) for r in mine],
            marker="o",
            color=colors[method],
            label=method,
        )
        ax.fill_between(
            xs,
            [max(r["min"], floor) for r in mine],
            [max(r["max"], floor) for r in mine],
            color=colors[method],
            alpha=0.15,
        )
    ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.set_ylabel("energy share outside the first rank segment")
    ax.set_title("where the global adapter keeps its update (band: seed range)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (<method>-seed<S>)")
    parser.add_argument("--rounds", help="comma-separated rounds to print (default: all)")
    parser.add_argument("--csv", type=Path, help="write every round's row as CSV")
    parser.add_argument("--plot", type=Path, help="draw the shares per round (PNG)")
    parser.add_argument(
        "--per-step", action="store_true", help="also each segment's norm over the step squared"
    )
    args = parser.parse_args(argv)
    rows = rows_of(method_shares(args.runs))
    wanted = None if args.rounds is None else {int(r) for r in args.rounds.split(",")}
    print(
        "| method | round | seeds | share outside the first segment (min–max) | mean client rank |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        if wanted is None or r["round"] in wanted:
            print(
                f"| {r['method']} | {r['round']} | {r['seeds']} | {r['share_outside_first']:.4f} "
                f"({r['min']:.4f}–{r['max']:.4f}) | {r['mean_client_rank']:.1f} |"
            )
    if args.per_step:
        print("\n| run | round | ranks | norm | step factor | norm / step factor² |")
        print("|---|---|---|---|---|---|")
        for run in args.runs:
            for r in norms_per_step(run):
                if wanted is None or r["round"] in wanted:
                    print(
                        f"| {r['run']} | {r['round']} | {r['segment']} | {r['norm']:.3g} | "
                        f"{r['step_factor']:.3f} | {r['norm_per_step_squared']:.3g} |"
                    )
    if args.csv is not None:
        with args.csv.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if args.plot is not None:
        print(f"wrote {plot(rows, args.plot)}")


if __name__ == "__main__":
    main()
