"""How far does one more round move each run's strongest direction?

    python -m benchmarks.round_step RUN [RUN ...] [--csv FILE]

For each run folder with a ``checkpoint.safetensors`` (the server state after its last round), this
plays one more round exactly as the run would (every client trains on the prefix the server sends,
with the run's own method, step size and schedule factor of its last round; the server aggregates)
and reports, as medians over modules of the scaled product ``W = scale * B @ A`` (full rank):

- ``s1``: the strongest singular value of ``W`` before the round;
- ``step``: ``||dW||_F``, the size of the round's change of ``W``;
- ``top``: ``|u1^T dW v1| / s1``, the relative change of that strength in one round;
- ``turn``: ``1 - |u1 . u1'|``, how far the strongest output direction turned (``'``: after);
- ``rest``: ``||dW - (u1^T dW v1) u1 v1^T||_F / s1``, the round's update outside that strength;
- ``descent``: ``-<G, dW>`` summed over modules, the loss decrease the round's update predicts to
  first order, where ``G`` is the full-rank gradient of the training loss at the round's start with
  respect to each adapted weight (on ``--grad-examples`` training rows drawn evenly from every
  client, the adapter at its full rank);
- ``align``: ``descent / (||G|| ||dW||)`` over all modules together, the cosine between the update
  and steepest descent: how much of the step goes downhill;
- the same of each client's own update (its prefix product, against the same ``G``), by client rank.

It tests a diagnostic of docs/RESULTS.md section 42: at one nominal step size a federation whose
update concentrates in few directions moves them by a larger effective step (the default's
gradient-shared step gives a component up to sqrt(r) times AdamW's; FedIT at rank 8 has eight A
rows that share the direction), so the one that swings is the one with the larger ``step``. A run
whose step decays (``lr_schedule = "cosine"``) is replayed at its last round's factor, near zero.
For FLoRA, ``W`` includes the merged term, so ``step`` is what the round merged; ``align`` tests
section 39's open reading of its gap (an update confined to fresh random row spaces goes less downhill).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch

from prelort.adapters.inject import NestedLoRAModel
from prelort.adapters.state import LORA_A, LORA_B, MERGED, lora_modules, set_state
from prelort.config import config_from_mapping
from prelort.data.encoding import EncodedSplit, make_batch
from prelort.device import to_device
from prelort.runtime.checkpoint import load_checkpoint
from prelort.runtime.outputs import csv_text, read_metrics
from prelort.runtime.skeleton import start_run
from prelort.runtime.workbench import build_workbench


def products(
    state: dict[str, torch.Tensor], scale: float, merged: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Per module, ``scale * B @ A`` in float64 at the state's own rank, plus what a method merged
    into the base (FLoRA's ``<module>.merged``: its adapter restarts at zero every round, so its
    learning lives there). ``merged`` takes that term from another state: a client leaves it as
    received, but its reply carries it back through the wire format (rounded under a 16-bit wire),
    so a client's step is measured against the prefix's exact copy."""
    merged = state if merged is None else merged
    return {
        m: scale * state[m + LORA_B].double() @ state[m + LORA_A].double()
        + (merged[m + MERGED].double() if m + MERGED in merged else 0.0)
        for m in lora_modules(state)
    }


def movement(before: torch.Tensor, after: torch.Tensor) -> dict[str, float]:
    """The measures of the module docstring for one module's product."""
    u, s, vh = torch.linalg.svd(before, full_matrices=False)
    u1, v1, s1 = u[:, 0], vh[0], float(s[0])
    delta = after - before
    along = float(u1 @ delta @ v1)
    rest = delta - along * torch.outer(u1, v1)
    u_after = torch.linalg.svd(after, full_matrices=False).U[:, 0]
    return {
        "s1": s1,
        "step": float(delta.norm()),
        "top": abs(along) / s1,
        "turn": 1.0 - abs(float(u1 @ u_after)),
        "rest": float(rest.norm()) / s1,
    }


def median_over_modules(
    before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]
) -> dict[str, float]:
    """Each measure's median over the modules of two products."""
    found = defaultdict(list)
    for module, w in before.items():
        for key, value in movement(w, after[module]).items():
            found[key].append(value)
    return {k: float(torch.tensor(v).median()) for k, v in found.items()}


def weight_gradients(
    adapted: NestedLoRAModel,
    state: dict[str, torch.Tensor],
    split: EncodedSplit,
    rows: list[int],
    kind: str,
    pad_id: int,
    batch_size: int,
) -> dict[str, torch.Tensor]:
    """Per module, the mean training loss's gradient over ``rows`` with respect to the module's
    whole weight (base + merged + adapter: they add, so one gradient serves all), float64.
    Dropout is off: the gradient of the expected loss, not of one noisy draw."""
    set_state(adapted, state)
    adapted.set_active_rank(adapted.max_rank)
    bases = {m: layer.base.weight for m, layer in adapted.layers.items()}
    for weight in bases.values():
        weight.requires_grad_(True)
        weight.grad = None
    was_training = adapted.model.training
    adapted.model.eval()
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            batch = to_device(make_batch(kind, split, chunk, pad_id), adapted.device)
            with adapted.train_autocast():
                loss = adapted.model(**batch).loss
            (loss * len(chunk) / len(rows)).backward()
        return {m: w.grad.double().clone() for m, w in bases.items()}
    finally:
        for weight in bases.values():
            weight.requires_grad_(False)
            weight.grad = None
        adapted.model.zero_grad(set_to_none=True)
        adapted.model.train(was_training)


def downhill(
    grads: dict[str, torch.Tensor], before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]
) -> dict[str, float]:
    """``descent`` and ``align`` of the module docstring for the update ``after - before``."""
    inner = sum(float((grads[m] * (after[m] - before[m])).sum()) for m in grads)
    g_norm = sum(float(grads[m].square().sum()) for m in grads) ** 0.5
    d_norm = sum(float((after[m] - before[m]).square().sum()) for m in grads) ** 0.5
    return {"descent": -inner, "align": -inner / (g_norm * d_norm) if g_norm * d_norm else 0.0}


def gradient_rows(client_rows: tuple[tuple[int, ...], ...], count: int, seed: int) -> list[int]:
    """``count`` training rows, an equal share from every client, drawn with a fixed seed."""
    generator = torch.Generator().manual_seed(seed)
    share = max(1, count // len(client_rows))
    rows = []
    for own in client_rows:
        order = torch.randperm(len(own), generator=generator)[:share].tolist()
        rows += [own[i] for i in order]
    return rows


def run_round_step(run: Path, grad_examples: int = 32) -> dict[str, dict[str, float]]:
    """One more round of ``run`` from its checkpoint: the global product's measures, and each
    client rank's measures of its own update (median over modules, mean over its clients)."""
    metrics = read_metrics(run / "metrics.json")
    config = config_from_mapping(metrics["config"])
    checkpoint = load_checkpoint(run)
    bench = build_workbench(config)
    fed, _, server = start_run(config, bench, checkpoint)
    scale = bench.adapted.scale
    round_index = config.rounds  # the run's last round: its schedule factor
    rows = gradient_rows(fed.plan.client_rows, grad_examples, config.seed)
    grads = weight_gradients(
        bench.adapted,
        server.global_state,
        bench.train,
        rows,
        bench.batch_kind,
        bench.tokenizer.pad_token_id,
        config.batch_size,
    )
    draw = fed.plan.draw(round_index)
    replies, per_rank = [], defaultdict(list)
    for client in draw.sampled:
        if client in draw.lost:
            continue  # as in the run: a client lost mid-round sends nothing
        received = server.prefix(client)
        reply = fed.train_client(received, client, round_index)
        replies.append(reply)
        before, after = products(received, scale), products(reply.state, scale, merged=received)
        found = median_over_modules(before, after) | downhill(grads, before, after)
        per_rank[reply.rank].append(found)
        print(f"{run}  client {client} rank {reply.rank}: {fmt(found)}", flush=True)
    outcome = fed.server_step(server, draw.sampled, replies)
    before = products(server.global_state, scale)
    after = products(outcome.server.global_state, scale)
    table = {"global": median_over_modules(before, after) | downhill(grads, before, after)}
    for rank, found in sorted(per_rank.items()):
        table[f"client r{rank}"] = {k: sum(f[k] for f in found) / len(found) for k in found[0]}
    return table


def fmt(found: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in found.items())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders with a checkpoint")
    parser.add_argument("--csv", type=Path, help="write one row per run and what moved")
    parser.add_argument(
        "--grad-examples", type=int, default=32, help="training rows of the gradient G (32)"
    )
    args = parser.parse_args(argv)
    table = []
    for run in args.runs:
        for what, found in run_round_step(run, args.grad_examples).items():
            table.append({"run": str(run), "what": what, **found})
    print("\nrun  what  " + "  ".join(k for k in table[0] if k not in ("run", "what")))
    for row in table:
        shown = "  ".join(f"{v:.4f}" for k, v in row.items() if k not in ("run", "what"))
        print(f"{row['run']}  {row['what']}  {shown}")
    if args.csv:
        args.csv.write_text(csv_text(table, list(table[0])), encoding="utf-8")


if __name__ == "__main__":
    main()
