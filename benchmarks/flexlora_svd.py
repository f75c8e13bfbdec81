"""FlexLoRA's re-factorisation: QR of the stacked factors + SVD of the small core, vs a dense SVD.

Prints, for layer sizes of the packaged models and of a 7B-class model, the time of both ways and
their ratio, measured side by side in one run, and the largest difference of the rank-R results.

    python benchmarks/flexlora_svd.py [--clients 8] [--ranks 2,4,8,16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch

from prelort.aggregation import ClientUpdate, aggregate_flexlora
from prelort.aggregation.flexlora import low_rank_svd, stacked_factors


def dense_flexlora(updates, module, weights, scale, rank):
    dense = sum(
        w * scale * u.state[module + ".lora_b"].double() @ u.state[module + ".lora_a"].double()
        for w, u in zip(weights.tolist(), updates, strict=True)
    )  # (out, in)
    u, s, vh = torch.linalg.svd(dense, full_matrices=False)
    return u[:, :rank], s[:rank], vh[:rank]


def factored_flexlora(updates, module, weights, scale, rank):
    b, a = stacked_factors(updates, module, weights, scale)  # (out, sum r), (sum r, in)
    return low_rank_svd(b, a, rank)


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--ranks", default="2,4,8,16")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ladder = [int(r) for r in args.ranks.split(",")]
    max_rank, scale = max(ladder), 2.0
    g = torch.Generator().manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clients} clients, "
        f"ranks {ladder} cycled, R = {max_rank}, float64"
    )
    print("| layer (out x in) | dense SVD ms | QR + core SVD ms | speed-up | max |diff| of s·B·A |")
    print("|---|---|---|---|---|")
    for out_f, in_f, label in [
        (384, 384, "MiniLM q/v"),
        (576, 576, "SmolLM2-135M q"),
        (2048, 2048, "1B-class"),
        (4096, 4096, "7B-class"),
    ]:
        updates = []
        for k in range(args.clients):
            r = ladder[k % len(ladder)]
            state = {
                "m.lora_a": torch.randn(r, in_f, generator=g) * 0.05,
                "m.lora_b": torch.randn(out_f, r, generator=g) * 0.05,
            }
            updates.append(ClientUpdate(k, state, r, 100 + k))
        weights = torch.tensor([u.num_examples for u in updates], dtype=torch.float64)
        weights = weights / weights.sum()
        t_dense, (ud, sd, vd) = best_of(
            partial(dense_flexlora, updates, "m", weights, scale, max_rank), args.repeats
        )
        t_fact, (uf, sf, vf) = best_of(
            partial(factored_flexlora, updates, "m", weights, scale, max_rank), args.repeats
        )
        diff = float(((uf * sf) @ vf - (ud * sd) @ vd).abs().max())
        print(
            f"| {out_f} x {in_f} ({label}) | {1000 * t_dense:.1f} | {1000 * t_fact:.1f} | "
            f"{t_dense / t_fact:.1f}x | {diff:.1e} |"
        )
    # the library entry point, for completeness: one call on the largest size above
    glob = {"m.lora_a": torch.zeros(max_rank, in_f), "m.lora_b": torch.zeros(out_f, max_rank)}
    start = time.perf_counter()
    aggregate_flexlora(glob, updates, scale)
    print(
        f"\naggregate_flexlora on {out_f} x {in_f}: {1000 * (time.perf_counter() - start):.1f} ms"
    )


if __name__ == "__main__":
    main()
