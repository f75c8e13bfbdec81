"""A run's files: metrics.json, metrics.csv, one PNG per metric, and the global adapter."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from prelort.adapters.state import AdapterState
from prelort.errors import DataError
from prelort.federation.records import RoundRecord, TrafficRecord
from prelort.io import atomic_write_bytes, atomic_write_text, save_adapter, write_json
from prelort.runtime.checkpoint import adapter_metadata
from prelort.runtime.result import SimulationResult

EXAMPLES_NAME = "examples.json"  # each test example's final score per tier and metric
METRIC_LABELS = {
    "accuracy": "accuracy",
    "perplexity": "perplexity",
    "rouge_l": "ROUGE-L",
    "nll": "NLL per target token (nats)",
    "log_perplexity": "log perplexity (nats per target token)",
}


def metric_rows(rounds: Iterable[RoundRecord]) -> list[dict[str, Any]]:
    """Long-format rows ``round, tier, metric, value`` of the per-round records."""
    return [
        {"round": rec["round"], "tier": int(tier), "metric": name, "value": value}
        for rec in rounds
        for tier, metrics in rec["tiers"].items()
        for name, value in metrics.items()
    ]


def csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def method_colors(methods: Sequence[str]) -> dict[str, Any]:
    """A distinct colour per method: matplotlib's default cycle repeats after ten, and a
    comparison with its peers, ablations and references has more (two methods then read as one)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {method: cmap(i % cmap.N) for i, method in enumerate(methods)}


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Render a matplotlib figure to PNG, write it atomically, close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


TIER_MARKERS = ("o", "s", "^", "D", "v", "P")
TIER_DASHES = ("-", "--", "-.", ":")


def plot_per_round(rounds: Sequence[RoundRecord], title: str, out_dir: Path) -> list[Path]:
    """One PNG per metric: the metric per round, a line per tier."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = metric_rows(rounds)
    paths = []
    for metric in sorted({r["metric"] for r in rows}):
        fig, ax = plt.subplots(figsize=(6, 4))
        tiers = sorted({r["tier"] for r in rows})
        for k, tier in enumerate(tiers):
            points = [
                (r["round"], r["value"])
                for r in rows
                if r["metric"] == metric and r["tier"] == tier
            ]
            # tiers with equal values (a method without an adapter, or a collapsed rank) would
            # hide each other: each gets its own marker, dash and a shrinking marker size
            ax.plot(
                *zip(*points, strict=True),
                marker=TIER_MARKERS[k % len(TIER_MARKERS)],
                linestyle=TIER_DASHES[k % len(TIER_DASHES)],
                markersize=9 - 1.5 * min(k, 4),
                label=f"rank {tier}",
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
        ax.set_xlabel("round")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.set_title(f"{title}: {METRIC_LABELS.get(metric, metric)} per tier")
        ax.grid(alpha=0.3)
        ax.legend()
        paths.append(save_figure(fig, out_dir / f"{metric}.png"))
    return paths


def plot_segments(traffic: Sequence[TrafficRecord], title: str, out_dir: Path) -> Path | None:
    """``segments.png``: each rank segment's share of the adapter's energy per round, stacked.

    A band that swallows the plot shows rank collapse (all signal in the first segment); bands
    that stay even mean a truncation discards most of the update.
    """
    records = [r for r in traffic if r.get("segments")]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    xs = [r["round"] for r in records]
    bounds = [(s["lo"], s["hi"]) for s in records[-1]["segments"]]
    shares = [[r["segments"][i]["share"] for r in records] for i in range(len(bounds))]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.stackplot(xs, shares, labels=[f"ranks {lo}-{hi}" for lo, hi in bounds])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("share of ||s B A||^2")
    ax.set_ylim(0, 1)
    ax.set_title(f"{title}: energy per rank segment")
    ax.legend(fontsize=8, loc="upper left")
    return save_figure(fig, out_dir / "segments.png")


def final_tiers(metrics: dict[str, Any]) -> dict[str, Any]:
    """A metrics.json's final metrics per tier; empty while the run has not finished."""
    return metrics.get("final", {}).get("tiers") or {}


def read_metrics(path: Path) -> dict[str, Any]:
    """A run's metrics.json, checked for what its readers (summarize, calibrate, benchmarks) need.

    Raises:
        DataError: not JSON, or without the run's config and client lists.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable metrics file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise DataError(f"{path}: not a run's metrics file (no config); was it written by prelort?")
    missing = [k for k in ("client_ranks", "client_examples", "rounds") if k not in data]
    if final_tiers(data) and missing:
        raise DataError(f"{path}: a finished run's metrics file without {', '.join(missing)}")
    return data


def write_progress(result: SimulationResult, out_dir: Path) -> None:
    """metrics.json and metrics.csv so far (called after every evaluated round)."""
    write_json(out_dir / "metrics.json", result.to_json())
    rows = metric_rows(result.rounds)
    atomic_write_text(out_dir / "metrics.csv", csv_text(rows, ["round", "tier", "metric", "value"]))


CALIBRATED_NAME = "calibrated.safetensors"  # the final adapter with the calibration round's heads


def save_calibrated(
    path: Path, state: AdapterState, config: dict, tiers: list[int], **extra: str
) -> None:
    """An adapter with one calibrated head per tier (``<name>@<tier>`` keys), under the metadata
    of every saved adapter with ``head`` set to say so."""
    save_adapter(path, state, {**adapter_metadata(config, tiers), "head": "per-tier", **extra})


def write_outputs(result: SimulationResult, out_dir: Path) -> dict[str, Path]:
    """Every file of a finished run; returns them by kind."""
    write_progress(result, out_dir)
    config = result.config
    tiers = sorted({int(t) for t in result.final})
    save_adapter(
        out_dir / "adapter.safetensors", result.global_state, adapter_metadata(config, tiers)
    )
    title = f"{config['method']} on {config['task']}"
    budget = result.privacy_budget()
    if budget and budget.get("epsilon") is not None:  # the privacy a reader must see beside it
        title += f" (DP ε = {budget['epsilon']:.2f}, δ = {budget['delta']:.2g})"
    plots = plot_per_round(result.rounds, title, out_dir)
    segments = plot_segments(result.traffic, title, out_dir)
    plots += [segments] if segments is not None else []
    files = {
        "metrics_json": out_dir / "metrics.json",
        "metrics_csv": out_dir / "metrics.csv",
        "adapter": out_dir / "adapter.safetensors",
    }
    if result.calibrated_state:
        files["calibrated"] = out_dir / CALIBRATED_NAME
        save_calibrated(files["calibrated"], result.calibrated_state, config, tiers)
    files.update({f"plot_{p.stem}": p for p in plots})
    if result.samples:
        write_json(out_dir / "samples.json", result.samples)
        files["samples"] = out_dir / "samples.json"
    if result.examples:
        write_json(out_dir / EXAMPLES_NAME, {"tiers": result.examples})
        files["examples"] = out_dir / EXAMPLES_NAME
    return files


def final_table(result: SimulationResult) -> str:
    """A Markdown table of the final metrics: a row per tier."""
    metrics = sorted({m for tier in result.final.values() for m in tier})
    lines = ["| rank tier | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for tier, values in sorted(result.final.items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {tier} | " + " | ".join(f"{values[m]:.4f}" for m in metrics) + " |")
    return "\n".join(lines)


def format_round(method: str, record: dict[str, Any]) -> str:
    """One line per round: ``prelort round 3: loss 1.234 | r2 acc 0.512 | r4 ...``."""
    parts = [f"{method} round {record['round']}: loss {record['train_loss']:.3f}"]
    for tier, metrics in record["tiers"].items():
        values = " ".join(f"{_short(k)} {v:.4g}" for k, v in metrics.items())
        parts.append(f"r{tier} {values}")
    return " | ".join(parts)


def _short(metric: str) -> str:
    return {"accuracy": "acc", "perplexity": "ppl", "rouge_l": "rougeL"}.get(metric, metric)
