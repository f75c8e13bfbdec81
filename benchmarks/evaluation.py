"""Evaluation: every tier one after another against every tier in one stacked pass; and the
scoring forwards in fp32 against bf16 autocast (``eval_dtype``).

The global adapter is scored at each of the 4 tiers on the same test rows. ``one after another``
is what ``evaluate_tiers`` does (a forward per tier); ``stacked`` runs the tiers as masked copies
of the batch in one forward (``NestedLoRAModel.truncations``, as the ``all`` training step does).
Both give the same logits (the maximum difference is printed); timed in turns, best of the
repeats. The second table times ``head_outputs`` (what evaluation, the readout and the
calibration round run) at the top tier with ``eval_dtype`` auto and bfloat16, with the largest
difference of the head's input features relative to their largest magnitude.

    python -m benchmarks.evaluation [--quick]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch

from benchmarks.client_step import LADDER
from prelort.config import config_from_mapping
from prelort.data.encoding import classification_batch
from prelort.evaluation.readout import head_outputs
from prelort.runtime.workbench import build_workbench


@torch.inference_mode()
def tier_logits(adapted, batch, stacked: bool) -> torch.Tensor:
    """(tiers * rows, classes): the batch's logits at every tier of ``LADDER``."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    if not stacked:
        logits = []
        for tier in LADDER:
            adapted.set_active_rank(tier)
            logits.append(adapted.model(**inputs).logits)
        return torch.cat(logits)
    rows = inputs["input_ids"].shape[0]
    with adapted.truncations(LADDER, rows):
        return adapted.model(**{k: v.repeat(len(LADDER), 1) for k, v in inputs.items()}).logits


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small batch (CI proves it runs)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    sizes, repeats = ((4,), 1) if args.quick else ((8, 32), args.repeats)
    settings = {"task": "bbc-news", "model": "minilm-l6", "ranks": list(LADDER)}
    bench = build_workbench(config_from_mapping({**settings, "eval_examples": max(sizes)}))
    adapted = bench.adapted
    adapted.reset_parameters(torch.Generator().manual_seed(0))
    for layer in adapted.layers.values():  # a non-zero adapter, so every tier differs
        torch.nn.init.normal_(layer.lora_b, std=0.02, generator=torch.Generator().manual_seed(1))
    adapted.model.eval()
    print(
        f"## Evaluation: minilm-l6, {len(LADDER)} tiers, {torch.get_num_threads()} threads, "
        f"best of {repeats}"
    )
    print(
        "| batch (rows x tokens) | one after another s | stacked s | stacked / one after another "
        "| max abs logit diff |"
    )
    print("|---|---|---|---|---|")
    for rows in sizes:
        batch = classification_batch(bench.test, list(range(rows)), bench.tokenizer.pad_token_id)
        diff = (tier_logits(adapted, batch, False) - tier_logits(adapted, batch, True)).abs().max()
        best = {False: float("inf"), True: float("inf")}
        for _ in range(repeats):
            for stacked in best:
                begin = time.perf_counter()
                tier_logits(adapted, batch, stacked)
                best[stacked] = min(best[stacked], time.perf_counter() - begin)
        shape = "x".join(str(n) for n in batch["input_ids"].shape)
        print(
            f"| {shape} | {best[False]:.3f} | {best[True]:.3f} | {best[True] / best[False]:.2f} "
            f"| {diff:.1e} |"
        )
    return {"eval_bf16_vs_fp32": scoring_precision(bench, sizes, repeats)}


def scoring_precision(bench, sizes: Sequence[int], repeats: int) -> float:
    """Print fp32 against bf16-autocast scoring; return the bf16 / fp32 time of the largest batch."""
    adapted, pad = bench.adapted, bench.tokenizer.pad_token_id
    adapted.set_active_rank(LADDER[-1])
    print(
        "\n| scoring rows | eval_dtype auto (fp32) s | bfloat16 s | bf16 / fp32 | max rel feature diff |"
    )
    print("|---|---|---|---|---|")
    ratio = float("nan")
    for rows in sizes:
        best, features = {}, {}
        for _ in range(repeats):
            for dtype in (None, torch.bfloat16):
                adapted.eval_autocast_dtype = dtype
                begin = time.perf_counter()
                features[dtype] = head_outputs(adapted, bench.test, range(rows), pad, rows).features
                best[dtype] = min(best.get(dtype, float("inf")), time.perf_counter() - begin)
        adapted.eval_autocast_dtype = None
        diff = (features[None] - features[torch.bfloat16]).abs().max() / features[None].abs().max()
        ratio = best[torch.bfloat16] / best[None]
        print(
            f"| {rows} | {best[None]:.3f} | {best[torch.bfloat16]:.3f} | {ratio:.2f} | {diff:.1e} |"
        )
    return ratio


if __name__ == "__main__":
    main()
