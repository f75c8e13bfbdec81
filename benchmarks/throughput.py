"""Throughput: training tokens per second of SmolLM2-135M with a bf16 and an fp32 base.

Plain LoRA steps at rank 16 and stacked nested steps (4 truncations) on verbalised BBC News
(128 tokens, batch 4); tokens are the non-padding tokens of the batches, every truncation's copy
counted once (the work a user asked for is one step over the batch).

    python -m benchmarks.throughput [--quick]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

import torch

from benchmarks.client_step import LADDER, MODES, batch_size, step_seconds
from prelort.config import config_from_mapping
from prelort.device import has_native_bf16
from prelort.runtime.workbench import build_workbench


def tokens_per_example(bench) -> float:
    targets = bench.train.target_ids or [[] for _ in bench.train.input_ids]
    rows = range(min(len(bench.train), 256))
    return statistics.fmean(len(bench.train.input_ids[i]) + len(targets[i]) for i in rows)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="MiniLM, one step (CI proves it runs)")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    model, steps = ("minilm-l6", 1) if args.quick else ("smollm2-135m", args.steps)
    modes = {k: MODES[k] for k in ("plain (off)", "all, stacked")}
    print(f"## Throughput: {model} training tokens/s ({torch.get_num_threads()} threads)")
    print("| base dtype | plain tokens/s | nested all (stacked) tokens/s |")
    print("|---|---|---|")
    dtypes = ["bfloat16", "float32"]
    if args.quick and not has_native_bf16(torch.device("cpu")):
        # emulated bf16 turns a proof that the script runs into minutes (PERFORMANCE section 6)
        print("| bfloat16 | skipped: no native bf16 on this CPU | |")
        dtypes.remove("bfloat16")
    for dtype in dtypes:
        settings = {"task": "bbc-news", "model": model, "dtype": dtype, "ranks": list(LADDER)}
        settings |= {"eval_examples": 8, "readout_examples": 0, "max_length": 128}
        bench = build_workbench(config_from_mapping(settings))
        tokens = tokens_per_example(bench) * batch_size(bench)
        seconds = step_seconds(bench, max(LADDER), modes, steps, 2)
        rates = [tokens / seconds[name] for name in modes]
        print(f"| {dtype} | {rates[0]:.0f} | {rates[1]:.0f} |")
    return {}


if __name__ == "__main__":
    main()
