"""Scale: a cross-device federation of 1,000 clients, 10 per round, on this machine.

20 Newsgroups (11,314 training posts, about 11 per client) on the packaged MiniLM, ranks cycled
over 2/4/8/16, 100 rounds of one local step of 8 posts (every client trains about once), evaluated at every
tier every 25 rounds. Prints the wall time and how it splits between training, aggregation and
evaluation (``phase_seconds`` of metrics.json).

    python -m benchmarks.scale [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks.runs import simulate, tiny_model


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 20 clients, 2 rounds")
    parser.add_argument("--out", type=Path, default=None, help="keep the run here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "scale"
        if args.quick:
            model, task, clients, rounds, every = (
                str(tiny_model(Path(tmp) / "m")),
                "bbc-news",
                20,
                2,
                1,
            )
        else:
            model, task, clients, rounds, every = "minilm-l6", "20newsgroups", 1000, 100, 25
        run = simulate(
            [
                *("--model", model, "--task", task, "--clients", str(clients)),
                *("--clients-per-round", "10", "--rounds", str(rounds), "--local-steps", "1"),
                *("--batch-size", "8", "--partition", "iid", "--eval-every", str(every)),
                *("--eval-examples", "300", "--readout-examples", "0"),
            ],
            out,
        )
    phases = run.metrics["phase_seconds"]
    minutes = run.seconds / 60
    print(f"## Scale: {clients} clients, 10 per round, {rounds} rounds, {model} on {task}")
    print(
        f"wall {minutes:.1f} min (model and data loading included), peak RSS {run.peak_mb:.0f} MB"
    )
    print("| phase | s | share | s per round |")
    print("|---|---|---|---|")
    for phase, seconds in phases.items():
        print(f"| {phase} | {seconds:.1f} | {seconds / run.seconds:.2f} | {seconds / rounds:.2f} |")
    final = run.metrics["final"]["tiers"]
    print(
        "final accuracy per tier: "
        + ", ".join(f"r{t} {m['accuracy']:.3f}" for t, m in final.items())
    )
    return {"clients_1000_minutes": minutes}


if __name__ == "__main__":
    for name, value in main().items():
        print(f"{name}: {value:.2f}")
