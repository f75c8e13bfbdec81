"""Memory: peak resident memory of ``prelort simulate`` with 1, 10 and 100 clients.

The base model is loaded once and shared by every client; per client the run keeps only its rows
of the training data and, within a round, its reply. So memory should hardly grow with clients.
Each run is a fresh process (one round, one local step per client, BBC News), on a tiny random
BERT and on the packaged MiniLM. Ranks are listed 16, 8, 4, 2 so that the single client of the
1-client run has rank 16 and trains all four truncations, the heaviest client step of every run:
the runs then differ in their number of clients only.

    python -m benchmarks.memory [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks.runs import simulate, tiny_model


def flags(model: str, clients: int) -> list[str]:
    return [
        *("--model", model, "--task", "bbc-news", "--clients", str(clients), "--rounds", "1"),
        *("--ranks", "16,8,4,2"),
        *("--local-steps", "1", "--batch-size", "8", "--partition", "iid"),
        *("--eval-examples", "32", "--readout-examples", "0"),
    ]


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 1 and 10 clients")
    args = parser.parse_args(argv)
    counts = (1, 10) if args.quick else (1, 10, 100)
    print("## Memory: peak RSS of prelort simulate (1 round, 1 local step per client)")
    print("| model | " + " | ".join(f"{n} clients MB" for n in counts) + f" | {counts[-1]} / 1 |")
    print("|---|" + "---|" * (len(counts) + 1))
    headline: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = {"tiny BERT": str(tiny_model(Path(tmp) / "tiny"))}
        if not args.quick:
            models["minilm-l6"] = "minilm-l6"
        for label, model in models.items():
            peaks = [simulate(flags(model, n), Path(tmp) / f"run{n}").peak_mb for n in counts]
            ratio = peaks[-1] / peaks[0]
            print(f"| {label} | " + " | ".join(f"{p:.0f}" for p in peaks) + f" | {ratio:.3f} |")
            headline["memory_100_vs_1_clients"] = ratio  # the last model: MiniLM in a full run
    return headline


if __name__ == "__main__":
    for name, value in main().items():
        print(f"{name}: {value:.3f}")
