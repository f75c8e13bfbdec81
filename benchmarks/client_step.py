"""Client step: nested training's cost over a plain LoRA step at the same rank.

A rank-16 client on the ladder 2/4/8/16 trains with each mode on the packaged models: ``off``
(plain LoRA, the reference), ``sample`` (one random truncation per step), ``all`` looped (one
forward and backward per truncation), ``all`` stacked (the truncations as masked copies of the
batch in one forward and backward, the default) and ``split`` (every truncation on its own share
of the batch's rows, one forward of the batch). Modes are timed in turns, best of the repeats,
so that a busy machine slows them alike.

    python -m benchmarks.client_step [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence

import torch

from prelort.adapters.state import get_state, set_state, slice_to_rank
from prelort.config import config_from_mapping
from prelort.simulation.workbench import Workbench, build_workbench
from prelort.training.local import LocalTrainingConfig, train_local

LADDER = (2, 4, 8, 16)
MODES = {
    "plain (off)": LocalTrainingConfig(nested="off"),
    "sample": LocalTrainingConfig(nested="sample"),
    "all, looped": LocalTrainingConfig(nested="all", stack_truncations=False),
    "all, stacked": LocalTrainingConfig(nested="all"),
    "split": LocalTrainingConfig(nested="split"),
}


def step_seconds(
    bench: Workbench, rank: int, modes: dict[str, LocalTrainingConfig], steps: int, repeats: int
) -> dict[str, float]:
    """Best seconds per optimizer step of each mode (one warm-up step each first)."""
    adapted = bench.adapted
    adapted.reset_parameters(torch.Generator().manual_seed(0))
    start = slice_to_rank(get_state(adapted), rank)
    rows = list(range(min(len(bench.train), 256)))
    best = dict.fromkeys(modes, float("inf"))
    for attempt in range(repeats + 1):
        for name, mode in modes.items():
            set_state(adapted, start)
            config = dataclasses.replace(mode, steps=1 if attempt == 0 else steps)
            begin = time.perf_counter()
            train_local(
                adapted,
                bench.train,
                rows,
                bench.batch_kind,
                bench.tokenizer.pad_token_id,
                rank,
                LADDER,
                dataclasses.replace(config, batch_size=batch_size(bench)),
                torch.Generator().manual_seed(attempt),
            )
            if attempt > 0:  # the first pass warms caches and allocators
                best[name] = min(best[name], (time.perf_counter() - begin) / steps)
    return best


def batch_size(bench: Workbench) -> int:
    return 4 if bench.objective != "head" else 16


def run_model(settings: dict, steps: int, repeats: int) -> dict[str, float]:
    bench = build_workbench(config_from_mapping(settings))
    seconds = step_seconds(bench, max(LADDER), MODES, steps, repeats)
    tokens = settings.get("max_length") or "default"
    print(
        f"\n{settings['model']} on {settings['task']} ({bench.objective}), rank 16 of "
        f"{list(LADDER)}, batch {batch_size(bench)}, max_length {tokens}, {steps} steps x "
        f"best of {repeats}"
    )
    print("| mode | s/step | / plain |")
    print("|---|---|---|")
    for name, s in seconds.items():
        print(f"| {name} | {s:.3f} | {s / seconds['plain (off)']:.2f} |")
    looped, stacked = seconds["all, looped"], seconds["all, stacked"]
    print(f"stacked over looped: {stacked / looped:.2f} (4 truncations; naive = 4 x plain)")
    return seconds


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps (CI proves it runs)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    steps, repeats = (1, 1) if args.quick else (args.steps, args.repeats)
    print(f"## Client step (torch {torch.__version__}, {torch.get_num_threads()} threads)")
    base = {"ranks": list(LADDER), "eval_examples": 8, "readout_examples": 0}
    minilm = run_model({**base, "task": "bbc-news", "model": "minilm-l6"}, steps, repeats)
    headline = {
        "nested_sample_step_vs_plain": minilm["sample"] / minilm["plain (off)"],
        "nested_all_step_vs_plain": minilm["all, stacked"] / minilm["plain (off)"],
    }
    if not args.quick:
        run_model(
            {**base, "task": "bbc-news", "model": "smollm2-135m", "max_length": 128},
            steps,
            repeats,
        )
    return headline


if __name__ == "__main__":
    for name, value in main().items():
        print(f"{name}: {value:.2f}")
