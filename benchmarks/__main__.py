"""Every benchmark in one run; ends with one ``name: value`` line per headline figure.

    python -m benchmarks [--quick] [--only aggregation,client_step,...]

``--quick`` runs each at toy size (CI proves they work; the figures mean nothing then).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from benchmarks import (
    aggregation,
    client_step,
    evaluation,
    gpu,
    memory,
    ordered_refactor,
    scale,
    throughput,
    wire,
)

BENCHMARKS = {
    "aggregation": aggregation,
    "ordered_refactor": ordered_refactor,
    "client_step": client_step,
    "evaluation": evaluation,
    "wire": wire,
    "memory": memory,
    "scale": scale,
    "throughput": throughput,
    "gpu": gpu,  # one line and nothing else where torch sees no CUDA device
}
HEADLINES = (
    "agg_prelort_vs_memcpy",
    "agg_recommended_vs_memcpy",
    "agg_flexlora_vs_prelort",
    "nested_sample_step_vs_plain",
    "nested_all_step_vs_plain",
    "eval_bf16_vs_fp32",
    "memory_100_vs_1_clients",
    "clients_1000_minutes",
    "gpu_parity_max_abs_diff",
    "gpu_plain_vs_peft",
    "gpu_all_stacked_vs_T_plain",
    "gpu_agg_vs_memcpy",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma list of benchmarks")
    args = parser.parse_args()
    chosen = args.only.split(",")
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"--only: unknown {unknown}; choose from {', '.join(BENCHMARKS)}")
    print(
        f"# prelort benchmarks: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
        + (" (quick: toy sizes)" if args.quick else "")
    )
    figures: dict[str, float] = {}
    for name in chosen:
        start = time.perf_counter()
        figures |= BENCHMARKS[name].main(["--quick"] if args.quick else [])
        print(f"({name}: {time.perf_counter() - start:.0f} s)\n")
    for name in HEADLINES:
        if name in figures:
            print(f"{name}: {figures[name]:.3g}")


if __name__ == "__main__":
    main()
