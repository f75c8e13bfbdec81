"""Client step: nested training's cost over a plain LoRA step at the same rank.

A rank-16 client on the ladder 2/4/8/16 trains with each mode on the packaged models: ``off``
(plain LoRA, the reference), ``sample`` (one random truncation per step), ``all`` looped (one
forward and backward per truncation), ``all`` stacked (the truncations as masked copies of the
batch in one forward and backward, the default) and ``split`` (every truncation on its own share
of the batch's rows, one forward of the batch). Modes are timed in turns, best of the repeats,
so that a busy machine slows them alike. Each mode's floating-point operations per step are
counted too (``torch.utils.flop_counter``: matmuls and attention, forward and backward), so the
table shows how far a ratio of times follows the ratio of work.

    python -m benchmarks.client_step [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from prelort.adapters.state import get_state, set_state, slice_to_rank
from prelort.config import config_from_mapping
from prelort.runtime.workbench import Workbench, build_workbench
from prelort.training.local import LocalTrainingConfig, train_local

LADDER = (2, 4, 8, 16)
MODES = {
    "plain (off)": LocalTrainingConfig(nested="off"),
    "sample": LocalTrainingConfig(nested="sample"),
    "all, looped": LocalTrainingConfig(nested="all", stack_truncations=False),
    "all, stacked": LocalTrainingConfig(nested="all"),
    "split": LocalTrainingConfig(nested="split"),
}


def fresh_prefix(bench: Workbench, rank: int):
    """The rank-``rank`` prefix of a fresh adapter (seed 0), every mode's starting point."""
    bench.adapted.reset_parameters(torch.Generator().manual_seed(0))
    return slice_to_rank(get_state(bench.adapted), rank)


def local_step(
    bench: Workbench, rank: int, start, mode: LocalTrainingConfig, steps: int, seed: int
) -> None:
    """``steps`` optimizer steps of a rank-``rank`` client from the adapter ``start``."""
    set_state(bench.adapted, start)
    train_local(
        bench.adapted,
        bench.train,
        list(range(min(len(bench.train), 256))),
        bench.batch_kind,
        bench.tokenizer.pad_token_id,
        rank,
        LADDER,
        dataclasses.replace(mode, steps=steps, batch_size=batch_size(bench)),
        torch.Generator().manual_seed(seed),
    )


def step_seconds(
    bench: Workbench, rank: int, modes: dict[str, LocalTrainingConfig], steps: int, repeats: int
) -> dict[str, float]:
    """Best seconds per optimizer step of each mode (one warm-up step each first)."""
    start = fresh_prefix(bench, rank)
    best = dict.fromkeys(modes, float("inf"))
    for attempt in range(repeats + 1):
        for name, mode in modes.items():
            begin = time.perf_counter()
            local_step(bench, rank, start, mode, 1 if attempt == 0 else steps, attempt)
            if attempt > 0:  # the first pass warms caches and allocators
                best[name] = min(best[name], (time.perf_counter() - begin) / steps)
    return best


def step_flops(
    bench: Workbench, rank: int, modes: dict[str, LocalTrainingConfig]
) -> dict[str, int]:
    """Floating-point operations of one optimizer step of each mode (forward and backward)."""
    start = fresh_prefix(bench, rank)
    flops = {}
    for name, mode in modes.items():
        with FlopCounterMode(display=False) as counter:
            local_step(bench, rank, start, mode, 1, 1)
        flops[name] = counter.get_total_flops()
    return flops


def batch_size(bench: Workbench) -> int:
    return 16 if bench.objective.trains_head else 4


def run_model(settings: dict, steps: int, repeats: int) -> dict[str, float]:
    bench = build_workbench(config_from_mapping(settings))
    seconds = step_seconds(bench, max(LADDER), MODES, steps, repeats)
    tokens = settings.get("max_length") or "default"
    print(
        f"\n{settings['model']} on {settings['task']} ({bench.objective.name}), rank 16 of "
        f"{list(LADDER)}, batch {batch_size(bench)}, max_length {tokens}, {steps} steps x "
        f"best of {repeats}"
    )
    flops = step_flops(bench, max(LADDER), MODES)
    print("| mode | s/step | / plain | GFLOP/step | / plain | GFLOP/s |")
    print("|---|---|---|---|---|---|")
    plain_s, plain_f = seconds["plain (off)"], flops["plain (off)"]
    for name, s in seconds.items():
        print(
            f"| {name} | {s:.3f} | {s / plain_s:.2f} | {flops[name] / 1e9:.1f} | "
            f"{flops[name] / plain_f:.2f} | {flops[name] / 1e9 / s:.0f} |"
        )
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
