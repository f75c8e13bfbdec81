"""Server aggregation: every method's rule against a memcpy of the bytes the clients uploaded.

For LoRA shapes of SmolLM2-135M (30 layers, q and v) and of a 7B model (32 layers, q, k, v and o
of 4096 x 4096), random factors (no weights), ranks cycled over the ladder, 10 and 100 clients:
the time of one round's aggregation by each method and of copying the same uploaded tensors once.
PreLort's rule reads each uploaded number once, so memory bandwidth is its limit.

FlexLoRA (QR + SVD per module) and FLoRA (a dense product per module) cost the same for every
module of a shape; where a case has more modules than ``--dense-modules`` they are timed on that
many modules and scaled to all, and the table says so.

    python -m benchmarks.aggregation [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from prelort.adapters.state import LORA_A, LORA_B, MERGED, AdapterState
from prelort.aggregation import AggregationContext, ClientUpdate, get_method
from prelort.config import RECOMMENDED_METHOD

METHODS = ("prelort", RECOMMENDED_METHOD, "zeropad", "hetlora", "flexlora", "flora")
DENSE = ("flexlora", "flora")  # the methods timed on a subset of modules and scaled


@dataclass(frozen=True)
class Shapes:
    """One model's adapted modules, all of one (out, in) shape."""

    name: str
    layers: int
    projections: tuple[str, ...]
    out_features: int
    in_features: int

    @property
    def modules(self) -> list[str]:
        return [f"layers.{i}.{p}" for i in range(self.layers) for p in self.projections]


SMOLLM2 = Shapes("SmolLM2-135M q,v", 30, ("q_proj", "v_proj"), 576, 576)
LLM_7B = Shapes("7B q,k,v,o", 32, ("q_proj", "k_proj", "v_proj", "o_proj"), 4096, 4096)
QUICK = Shapes("toy", 2, ("q", "v"), 64, 64)


def random_updates(
    modules: Sequence[str], shape: tuple[int, int], ladder: Sequence[int], clients: int
) -> tuple[AdapterState, list[ClientUpdate]]:
    """A rank-R global state and ``clients`` updates whose ranks cycle over ``ladder``."""
    out_f, in_f = shape
    max_rank = max(ladder)
    g = torch.Generator().manual_seed(0)

    def factors(rank: int) -> AdapterState:
        state: AdapterState = {}
        for m in modules:
            state[m + LORA_A] = torch.randn(rank, in_f, generator=g) * 0.05
            state[m + LORA_B] = torch.randn(out_f, rank, generator=g) * 0.05
        return state

    updates = [
        ClientUpdate(k, factors(ladder[k % len(ladder)]), ladder[k % len(ladder)], 50 + k)
        for k in range(clients)
    ]
    return factors(max_rank), updates


def memcpy(updates: Sequence[ClientUpdate]) -> Callable[[], None]:
    """Copy every uploaded tensor once into a preallocated buffer of its key and shape.

    Clients of one rank share buffers so that 100 clients of a 7B model need not hold their
    uploads twice; every buffer is far larger than the caches, so each copy still goes to memory.
    """
    buffers = {(key, t.shape): torch.empty_like(t) for u in updates for key, t in u.state.items()}

    def run() -> None:
        for u in updates:
            for key, t in u.state.items():
                buffers[key, t.shape].copy_(t)

    return run


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def time_method(
    method: str,
    shapes: Shapes,
    modules: Sequence[str],
    global_state: AdapterState,
    updates: Sequence[ClientUpdate],
    ladder: Sequence[int],
    repeats: int,
) -> float:
    """Seconds of one aggregation over ``modules``, scaled to all of ``shapes.modules``."""
    keep = {m + s for m in modules for s in (LORA_A, LORA_B)}
    sub_global = {k: v for k, v in global_state.items() if k in keep}
    sub_updates = [
        ClientUpdate(
            u.client_id, {k: v for k, v in u.state.items() if k in keep}, u.rank, u.num_examples
        )
        for u in updates
    ]
    fresh = None
    if method == "flora":
        fresh = dict(sub_global)
        for m in modules:
            sub_global[m + MERGED] = torch.zeros(shapes.out_features, shapes.in_features)
    context = AggregationContext(ladder=tuple(ladder), scale=2.0, fresh_state=fresh)
    rule = get_method(method).rule(context)
    seconds = best_seconds(lambda: rule(sub_global, sub_updates), repeats)
    return seconds * len(shapes.modules) / len(modules)


def available_bytes() -> int:
    """MemAvailable of /proc/meminfo (Linux); a large number elsewhere."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 50


def fitting(shapes: Shapes, ladder: Sequence[int], clients: int) -> Shapes:
    """``shapes`` with fewer layers when all the uploads would take over half the free memory.

    Every rule's time is a sum over modules of equal shape, so the ratios do not change; the
    table says how many layers ran.
    """
    mean_rank = sum(ladder[k % len(ladder)] for k in range(clients)) / clients
    per_layer = (
        clients
        * len(shapes.projections)
        * mean_rank
        * (shapes.in_features + shapes.out_features)
        * 4
    )
    layers = min(shapes.layers, max(1, int(available_bytes() / 2 // per_layer)))
    return dataclasses.replace(shapes, layers=layers)


def run_case(
    shapes: Shapes, ladder: Sequence[int], clients: int, repeats: int, dense_modules: int
) -> dict[str, float]:
    """Print one case's table; returns seconds per method and for the memcpy."""
    full_layers = shapes.layers
    shapes = fitting(shapes, ladder, clients)
    modules = shapes.modules
    global_state, updates = random_updates(
        modules, (shapes.out_features, shapes.in_features), ladder, clients
    )
    uploaded = sum(t.numel() * t.element_size() for u in updates for t in u.state.values())
    seconds = {"memcpy": best_seconds(memcpy(updates), repeats)}
    for method in METHODS:
        subset = modules[:dense_modules] if method in DENSE else modules
        seconds[method] = time_method(
            method, shapes, subset, global_state, updates, ladder, 1 if method in DENSE else repeats
        )
    fewer = (
        f" ({shapes.layers} of {full_layers} layers: all would take over half the free memory)"
        if shapes.layers < full_layers
        else ""
    )
    print(
        f"\n{shapes.name}: {len(modules)} modules of {shapes.out_features} x {shapes.in_features}, "
        f"ranks {list(ladder)}, {clients} clients, {uploaded / 1e9:.3f} GB uploaded{fewer}"
    )
    print("| rule | ms | / memcpy | / prelort |")
    print("|---|---|---|---|")
    for name, s in seconds.items():
        scaled = (
            f" (timed on {dense_modules} of {len(modules)} modules, scaled)"
            if name in DENSE and dense_modules < len(modules)
            else ""
        )
        print(
            f"| {name}{scaled} | {s * 1e3:.1f} | {s / seconds['memcpy']:.2f} | "
            f"{s / seconds['prelort']:.2f} |"
        )
    return seconds


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run every case; returns the headline figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes (CI proves it runs)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dense-modules", type=int, default=2)
    parser.add_argument("--headline", action="store_true", help="only the 7B, 100-client case")
    args = parser.parse_args(argv)
    print(f"## Server aggregation (torch {torch.__version__}, {torch.get_num_threads()} threads)")
    if args.quick:
        cases = [(QUICK, (2, 4, 8, 16), 10), (QUICK, (8, 16, 32, 64), 100)]
    else:
        cases = [
            (shapes, ladder, clients)
            for shapes in (SMOLLM2, LLM_7B)
            for ladder in ((2, 4, 8, 16), (8, 16, 32, 64))
            for clients in (10, 100)
        ]
    if args.headline:
        cases = [(LLM_7B, (8, 16, 32, 64), 100)]
    headline: dict[str, float] = {}
    for shapes, ladder, clients in cases:
        seconds = run_case(shapes, ladder, clients, args.repeats, args.dense_modules)
        if (shapes is LLM_7B or args.quick) and max(ladder) == 64 and clients == 100:
            headline["agg_prelort_vs_memcpy"] = seconds["prelort"] / seconds["memcpy"]
            headline["agg_recommended_vs_memcpy"] = seconds[RECOMMENDED_METHOD] / seconds["memcpy"]
            headline["agg_flexlora_vs_prelort"] = seconds["flexlora"] / seconds["prelort"]
    return headline


if __name__ == "__main__":
    for name, value in main().items():
        print(f"{name}: {value:.2f}")
