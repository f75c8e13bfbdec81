"""GPU check: device parity, a bf16 federation, step throughput and memory at 1B, 7B aggregation.

Runs on a bare GPU machine with only torch, transformers, peft and accelerate (no flwr, no
bitsandbytes, no model wheels, no network), from the source tree: ``PYTHONPATH=src python -m
benchmarks.gpu``. Every model is a random Llama built on the spot; the data is a synthetic copy
task (the target repeats the prompt's first tokens), so the loss can fall. It reports:

1. parity: one federation (prelort, ranks 2/4/8/16, nested ``all``) of a tiny model in fp32 on the
   CPU and on the GPU, from the same initial weights: the largest difference of the global adapters
   (target: within 1e-4);
2. a bf16 federation on the GPU (16-bit base under autocast, fp32 adapters): its training loss per
   round (target: falls);
3. tokens/s and peak memory of one training step per rank on a ~1B Llama (TinyLlama-1.1B's shapes,
   bf16): PEFT's LoRA, our plain step, and our nested ``all`` looped, ``all`` stacked and ``split``
   steps (targets: plain >= 0.9 x PEFT; ``all`` <= 0.6 x truncations x plain);
4. 4-bit (NF4) against bf16 peak memory of the same step, where bitsandbytes is installed
   (target: <= 0.45);
5. the aggregation benchmark's 7B-shape case (32 layers of q, k, v, o at 4096 x 4096, 100 clients)
   on the GPU against a device memcpy of the same uploads (target: <= 2x).

Without CUDA it prints one line and stops. ``--device cpu --quick`` runs every part on the CPU at
toy sizes (the tests do, so the script cannot rot on machines without a GPU).

    PYTHONPATH=src python -m benchmarks.gpu [--quick] [--device cuda|cpu] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks.aggregation import LLM_7B, QUICK, best_seconds, memcpy, random_updates
from prelort.adapters.inject import NestedLoRAModel, inject_nested_lora
from prelort.adapters.state import get_state, set_state, slice_to_rank
from prelort.aggregation import AggregationContext, get_method
from prelort.data.encoding import EncodedSplit, causal_batch
from prelort.data.tasks import GENERATION
from prelort.device import autocast, state_to, synchronize, uses_autocast
from prelort.federation.client import client_step
from prelort.federation.server import ServerRules, initial_server_state, server_step
from prelort.training.local import LocalTrainingConfig, train_local

LADDER = (2, 4, 8, 16)
TARGETS = ("q_proj", "v_proj")
PAD, EOS = 0, 1
STEP_MODES = {
    "ours plain": LocalTrainingConfig(nested="off"),
    "all looped": LocalTrainingConfig(nested="all", stack_truncations=False),
    "all stacked": LocalTrainingConfig(nested="all"),
    "split": LocalTrainingConfig(nested="split"),
}


def llama_config(size: str) -> LlamaConfig:
    """A Llama of ``tiny`` (parity), ``small`` (bf16 federation) or ``1b`` (TinyLlama-1.1B) shape."""
    shapes = {
        "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, vocab_size=256),
        "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, vocab_size=512),
        "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                   num_attention_heads=32, num_key_value_heads=4, vocab_size=32000),
    }  # fmt: skip
    return LlamaConfig(
        **shapes[size], max_position_embeddings=2048, pad_token_id=PAD, eos_token_id=EOS
    )


def copy_task(vocab: int, rows: int, prompt_len: int, target_len: int, seed: int) -> EncodedSplit:
    """Random prompts whose target is their first ``target_len`` tokens, then eos."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(2, vocab) for _ in range(prompt_len)] for _ in range(rows)]
    targets = [p[:target_len] + [EOS] for p in prompts]
    return EncodedSplit(prompts, [0] * rows, targets, None)


def build_model(size: str, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A random Llama; the tiny ones are made on the CPU so both devices start from one init."""
    torch.manual_seed(seed)
    if size == "1b" and device.type == "cuda":
        with torch.device(device):
            return LlamaForCausalLM(llama_config(size)).to(dtype)
    return LlamaForCausalLM(llama_config(size)).to(device=device, dtype=dtype)


def adapt(model, device: torch.device, dtype: torch.dtype, max_rank: int = 16) -> NestedLoRAModel:
    adapted = inject_nested_lora(model, max_rank, alpha=2.0 * max_rank, target_modules=TARGETS)
    adapted.autocast_dtype = dtype if uses_autocast(device, dtype) else None
    adapted.reset_parameters(torch.Generator().manual_seed(0))
    return adapted


def federation(
    adapted: NestedLoRAModel, data: EncodedSplit, server_device: torch.device, rounds: int,
    clients: int = 4, steps: int = 3, lr: float = 5e-3,
) -> tuple[dict[str, torch.Tensor], list[float]]:  # fmt: skip
    """PreLort over ``rounds`` rounds, ranks cycled over the ladder; (global adapter, round losses)."""
    method = get_method("prelort")
    client_ranks = [LADDER[k % len(LADDER)] for k in range(clients)]
    fresh = get_state(adapted)
    context = AggregationContext(LADDER, adapted.scale, fresh)
    rules = ServerRules.for_run(method, context, client_ranks, device=server_device)
    server = initial_server_state(method, fresh, client_ranks)
    rows = [list(range(k, len(data), clients)) for k in range(clients)]
    train = LocalTrainingConfig(steps=steps, batch_size=8, lr=lr, nested="all")
    losses = []
    for round_index in range(1, rounds + 1):
        replies = [
            client_step(adapted, server.prefix(c), data, rows[c], GENERATION, PAD, LADDER, train,
                        c, 1000 * round_index + c)
            for c in range(clients)
        ]  # fmt: skip
        outcome = server_step(server, list(range(clients)), replies, rules)
        server = outcome.server
        losses.append(outcome.train_loss)
    return server.global_state, losses


def parity(device: torch.device, rounds: int) -> dict:
    """The same fp32 federation on the CPU and on ``device``: the largest adapter difference."""
    data = copy_task(256, 64, 24, 4, seed=0)
    cpu = torch.device("cpu")
    states = []
    for where in (cpu, device):
        adapted = adapt(build_model("tiny", where, torch.float32), where, torch.float32)
        states.append(federation(adapted, data, where, rounds)[0])
    diff = max(float((states[0][k] - states[1][k]).abs().max()) for k in states[0])
    return {"max_abs_diff": diff, "within_1e-4": diff <= 1e-4, "rounds": rounds}


def bf16_federation(device: torch.device, rounds: int, size: str = "small") -> dict:
    """A bf16 base under autocast with fp32 adapters: does the training loss fall?"""
    dtype = torch.bfloat16
    vocab = llama_config(size).vocab_size
    data = copy_task(vocab, 128, 48, 8, seed=1)
    adapted = adapt(build_model(size, device, dtype), device, dtype)
    adapter_dtypes = {str(p.dtype) for p in adapted.adapter_parameters()}
    _, losses = federation(adapted, data, device, rounds, steps=5)
    return {"round_losses": losses, "falls": losses[-1] < losses[0], "adapter": adapter_dtypes}


def timed_steps(run: Callable[[int], None], device: torch.device, steps: int) -> tuple[float, int]:
    """(seconds per step, peak bytes) of ``run(steps)`` after a warm-up step; best of two."""
    run(1)
    best = float("inf")
    for _ in range(2):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        synchronize(device)
        start = time.perf_counter()
        run(steps)
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / steps)
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0
    return best, peak


def peft_step_runner(model, data: EncodedSplit, rows: Sequence[int], device, dtype, rank: int):
    """PEFT's LoRA (rank, alpha 2 x 16) on ``model``; returns (run(steps), undo)."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=32, target_modules=list(TARGETS), lora_dropout=0.0)
    )
    params = [p for p in peft_model.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()  # fp32 master weights, as ours
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    use = dtype if uses_autocast(device, dtype) else None

    def run(steps: int) -> None:
        for _ in range(steps):
            batch = causal_batch(data, rows, PAD)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, use):
                loss = peft_model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()

    return run, peft_model


def our_step_runner(adapted: NestedLoRAModel, full, data, rows, rank: int, mode):
    """Our ``train_local`` at ``rank`` in ``mode``, from the rank-``rank`` prefix of ``full``."""
    prefix = slice_to_rank(full, rank)

    def run(steps: int) -> None:
        set_state(adapted, prefix)
        config = dataclasses.replace(mode, steps=steps, batch_size=len(rows), lr=1e-4)
        train_local(adapted, data, rows, GENERATION, PAD, rank, LADDER, config,
                    torch.Generator().manual_seed(0))  # fmt: skip

    return run


def step_table(device: torch.device, size: str, batch: int, length: int, steps: int) -> dict:
    """Tokens/s and peak memory per rank of PEFT's step and each of ours, one model."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    vocab = llama_config(size).vocab_size
    data = copy_task(vocab, batch, length - 9, 8, seed=2)
    rows = list(range(batch))
    tokens = batch * length
    model = build_model(size, device, dtype)
    table: dict[str, dict[str, dict]] = {}
    for rank in LADDER:
        run, peft_model = peft_step_runner(model, data, rows, device, dtype, rank)
        seconds, peak = timed_steps(run, device, steps)
        table.setdefault("peft", {})[str(rank)] = {"tokens_s": tokens / seconds, "peak": peak}
        model = peft_model.unload()  # the base back, without PEFT's layers
        del peft_model, run
    adapted = adapt(model, device, dtype)
    full = get_state(adapted)
    for name, mode in STEP_MODES.items():
        for rank in LADDER:
            run = our_step_runner(adapted, full, data, rows, rank, mode)
            seconds, peak = timed_steps(run, device, steps)
            table.setdefault(name, {})[str(rank)] = {"tokens_s": tokens / seconds, "peak": peak}
    return {"model": size, "batch": batch, "length": length, "dtype": str(dtype), "steps": table}


def quantized_memory(device: torch.device, size: str, batch: int, length: int) -> dict:
    """Peak memory of one plain rank-16 step, 4-bit NF4 base against bf16 (needs bitsandbytes)."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return {"skipped": "bitsandbytes is not installed"}
    if device.type != "cuda":
        return {"skipped": "peak memory is measured on CUDA only"}
    from prelort.models import quantization_config

    data = copy_task(llama_config(size).vocab_size, batch, length - 9, 8, seed=3)
    rows = list(range(batch))
    peaks = {}
    with tempfile.TemporaryDirectory() as folder:
        build_model(size, device, torch.bfloat16).save_pretrained(folder)
        for name, quant in (("bf16", None), ("4bit", quantization_config("4bit"))):
            torch.cuda.empty_cache()
            options = {"dtype": torch.bfloat16}
            if quant is not None:
                options.update(quantization_config=quant, device_map={"": str(device)})
            model = LlamaForCausalLM.from_pretrained(folder, **options).to(device)
            adapted = adapt(model, device, torch.bfloat16)
            full = get_state(adapted)
            run = our_step_runner(adapted, full, data, rows, 16, STEP_MODES["ours plain"])
            peaks[name] = timed_steps(run, device, 1)[1]
            del model, adapted, run
    return {"peak_bf16": peaks["bf16"], "peak_4bit": peaks["4bit"],
            "ratio": peaks["4bit"] / peaks["bf16"]}  # fmt: skip


def aggregation_vs_memcpy(device: torch.device, quick: bool, clients: int) -> dict:
    """One PreLort aggregation of 100 clients' 7B-shape uploads on ``device``, against a memcpy."""
    shapes = QUICK if quick else LLM_7B
    global_state, updates = random_updates(
        shapes.modules, (shapes.out_features, shapes.in_features), LADDER, clients
    )
    global_state = state_to(global_state, device)
    updates = [dataclasses.replace(u, state=state_to(u.state, device)) for u in updates]
    rule = get_method("prelort").rule(AggregationContext(LADDER, 2.0, global_state))
    copy = memcpy(updates)

    def best(fn: Callable[[], object]) -> float:
        fn()  # warm-up; then each timing waits for the device's queue to empty
        synchronize(device)
        return best_seconds(lambda: (fn(), synchronize(device)), 3)

    agg, mem = best(lambda: rule(global_state, updates)), best(copy)
    uploaded = sum(t.numel() * t.element_size() for u in updates for t in u.state.values())
    return {"shapes": shapes.name, "clients": clients, "uploaded_gb": uploaded / 2**30,
            "aggregate_s": agg, "memcpy_s": mem, "ratio": agg / mem}  # fmt: skip


def report(results: dict) -> None:
    p = results["parity"]
    print(f"## 1. CPU fp32 vs {results['device']} fp32, one federation of a tiny Llama")
    print(f"largest adapter difference after {p['rounds']} rounds: {p['max_abs_diff']:.2e} "
          f"(within 1e-4: {p['within_1e-4']})\n")  # fmt: skip
    f = results["bf16"]
    print("## 2. bf16 base (autocast), fp32 adapters: training loss per round")
    print(", ".join(f"{x:.3f}" for x in f["round_losses"]) + f" (falls: {f['falls']})\n")
    s = results["steps"]
    print(f"## 3. one training step per rank: {s['model']} Llama, {s['dtype']}, batch {s['batch']}"
          f" x {s['length']} tokens; tokens/s (peak GB)")  # fmt: skip
    modes = list(s["steps"])
    print("| rank | " + " | ".join(modes) + " | plain / PEFT | all stacked / (T x plain) |")
    print("|---" * (len(modes) + 3) + "|")
    for t, rank in enumerate(LADDER, start=1):
        cells = [s["steps"][m][str(rank)] for m in modes]
        shown = [f"{c['tokens_s']:.0f} ({c['peak'] / 2**30:.2f})" for c in cells]
        plain = s["steps"]["ours plain"][str(rank)]["tokens_s"]
        vs_peft = plain / s["steps"]["peft"][str(rank)]["tokens_s"]
        stacked = plain / s["steps"]["all stacked"][str(rank)]["tokens_s"] / t  # time ratio / T
        print(f"| {rank} | " + " | ".join(shown) + f" | {vs_peft:.2f} | {stacked:.2f} |")
    q = results["quantized"]
    print("\n## 4. 4-bit NF4 base against bf16: peak memory of a plain rank-16 step")
    if "skipped" in q:
        print(f"skipped: {q['skipped']}")
    else:
        print(f"bf16 {q['peak_bf16'] / 2**30:.2f} GB, 4-bit {q['peak_4bit'] / 2**30:.2f} GB, "
              f"ratio {q['ratio']:.2f} (target <= 0.45)")  # fmt: skip
    a = results["aggregation"]
    print(f"\n## 5. PreLort aggregation on {results['device']}: {a['shapes']}, {a['clients']} "
          f"clients, {a['uploaded_gb']:.2f} GB uploaded")  # fmt: skip
    print(f"aggregate {a['aggregate_s'] * 1e3:.1f} ms, device memcpy {a['memcpy_s'] * 1e3:.1f} ms,"
          f" ratio {a['ratio']:.2f} (target <= 2)")  # fmt: skip


def write_results(results: dict, out: Path | None, name: str) -> None:
    """``results`` as JSON in ``out``, or in ``$OUT`` (a lent machine's folder that comes back)."""
    out = out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(json.dumps(results, indent=2, default=str))


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (a smoke run)")
    parser.add_argument("--out", type=Path, help="folder for gpu.json [default: $OUT or none]")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu benchmark: skipped, torch sees no CUDA device")
        return {}
    torch.backends.cuda.matmul.allow_tf32 = False  # parity is of fp32 against fp32
    start = time.perf_counter()
    results: dict = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    print(f"# GPU check on {results.get('gpu', device)}, torch {torch.__version__}\n", flush=True)
    results["parity"] = parity(device, rounds=2)
    # --quick: the tiny Llama, because a CPU without native bf16 emulates the small one's matmuls
    results["bf16"] = bf16_federation(device, *((2, "tiny") if args.quick else (6, "small")))
    size, batch, length = ("tiny", 2, 32) if args.quick else ("1b", 8, 512)
    results["steps"] = step_table(device, size, batch, length, steps=1 if args.quick else 5)
    results["quantized"] = quantized_memory(device, size, batch, length)
    results["aggregation"] = aggregation_vs_memcpy(device, args.quick, 10 if args.quick else 100)
    results["seconds"] = time.perf_counter() - start
    report(results)
    print(f"\n(gpu benchmark: {results['seconds']:.0f} s)")
    write_results(results, args.out, "gpu.json")
    steps = results["steps"]["steps"]
    top = str(LADDER[-1])
    return {
        "gpu_parity_max_abs_diff": results["parity"]["max_abs_diff"],
        "gpu_plain_vs_peft": steps["ours plain"][top]["tokens_s"] / steps["peft"][top]["tokens_s"],
        "gpu_all_stacked_vs_T_plain": steps["ours plain"][top]["tokens_s"]
        / steps["all stacked"][top]["tokens_s"]
        / len(LADDER),
        "gpu_agg_vs_memcpy": results["aggregation"]["ratio"],
    }


if __name__ == "__main__":
    for name, value in main().items():
        print(f"{name}: {value:.3g}")
