"""How does a client's first step treat each rank component of a global adapter?

    python -m benchmarks.step_anatomy RUN [RUN ...] [--batches 6] [--batch-size 4] [--csv FILE]

For each finished run's ``adapter.safetensors``, loaded as a client receives it (the factors as the
server sent them), this takes the gradient of the task loss at the full rank with respect to each
component's B column ``B[:, i]`` and A row ``A[i, :]`` on several disjoint random batches of the training
pool, and reports per component, as the median over modules:

- ``norm``: the B column's gradient norm relative to component 1's (averaged over batches);
- ``agree_b`` / ``agree_a``: the mean pairwise cosine of the B column's (A row's) gradients across batches,
  1 when every batch pushes it the same way, near 0 when the batches disagree (noise);
- ``with_1``: the mean |cosine| between the B column's gradient and component 1's in the same batch, 1
  when the components are pushed along one direction of the output space;
- ``top_dir``: the |cosine| between the A row (the weights) and the product's strongest right singular
  direction: how much of the strongest direction the component's steps can move.

AdamW's first steps after a fresh start (a client's optimizer is new each round) move every coordinate by
about the learning rate whatever its gradient's size (``m / sqrt(v)`` is ``sign(g)`` at step 1), so a
component with a small gradient on which the batches disagree takes a full-size step along noise. That is
the mechanism docs/RESULTS.md section 27 proposes for the default's flat spectrum: after an SVD
re-factorisation A's rows 2..R are orthogonal to the product's strongest direction and their B columns
see what is left of the gradient; in LoRA's own basis (FedIT) every A row keeps a share of it.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch

from prelort.adapters.state import LORA_A, set_state
from prelort.aggregation.ordered import svd_ordered
from prelort.config import config_from_mapping
from prelort.data.encoding import make_batch
from prelort.device import to_device
from prelort.io import load_adapter
from prelort.runtime.outputs import csv_text, read_metrics
from prelort.runtime.workbench import build_workbench


def component_gradients(
    adapted, batches: list[dict[str, torch.Tensor]]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per module, the gradients of each batch's loss at the full rank: B's (batches, out, R) and
    A's (batches, R, in), in float32."""
    adapted.set_active_rank(adapted.max_rank)
    adapted.model.train()
    grads: dict[str, tuple[list, list]] = {name: ([], []) for name in adapted.layers}
    for batch in batches:
        for p in adapted.adapter_parameters():
            p.grad = None
        with adapted.train_autocast():
            loss = adapted.model(**to_device(batch, adapted.device)).loss
        loss.backward()
        for name, layer in adapted.layers.items():
            grads[name][0].append(layer.lora_b.grad.float().cpu())
            grads[name][1].append(layer.lora_a.grad.float().cpu())
    adapted.model.eval()
    return {name: (torch.stack(b), torch.stack(a)) for name, (b, a) in grads.items()}


def agreement(vectors: torch.Tensor) -> torch.Tensor:
    """Mean pairwise cosine of ``vectors`` (batches, components, dim) over batch pairs, per component."""
    unit = torch.nn.functional.normalize(vectors, dim=-1)
    pairs = itertools.combinations(range(vectors.shape[0]), 2)
    return torch.stack([(unit[i] * unit[j]).sum(-1) for i, j in pairs]).mean(0)


def anatomy(
    grads: dict[str, tuple[torch.Tensor, torch.Tensor]], state: dict[str, torch.Tensor]
) -> dict[str, list[float]]:
    """Median over modules of each component's measures (the module docstring's list)."""
    # in singular-value order with unit A rows, A's first row is the strongest right singular direction
    leading = svd_ordered(state, "unit-a")
    found: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("norm", "agree_b", "agree_a", "with_1", "top_dir")
    }
    for module, (g_b, g_a) in grads.items():
        columns = g_b.transpose(1, 2)  # (batches, R, out): component i's B column
        size = columns.norm(dim=-1).mean(0)
        found["norm"].append(size / size[0].clamp_min(1e-30))
        found["agree_b"].append(agreement(columns))
        found["agree_a"].append(agreement(g_a))
        unit = torch.nn.functional.normalize(columns, dim=-1)
        found["with_1"].append((unit * unit[:, :1]).sum(-1).abs().mean(0))
        rows = torch.nn.functional.normalize(state[module + LORA_A].double(), dim=-1)
        top = torch.nn.functional.normalize(leading[module + LORA_A][0].double(), dim=0)
        found["top_dir"].append((rows @ top).abs().float())
    return {k: torch.stack(rows).median(0).values.tolist() for k, rows in found.items()}


def run_anatomy(run: Path, batches: int, batch_size: int, seed: int = 0) -> dict[str, list[float]]:
    """Load ``run``'s model and final adapter and measure its components' first-step gradients."""
    metrics = read_metrics(run / "metrics.json")
    config = config_from_mapping(metrics["config"])
    bench = build_workbench(config)
    state, _ = load_adapter(run / "adapter.safetensors")
    set_state(bench.adapted, state, heads=True)
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(bench.train), generator=generator)[: batches * batch_size]
    pad_id = bench.tokenizer.pad_token_id
    made = [
        make_batch(bench.batch_kind, bench.train, rows[k : k + batch_size].tolist(), pad_id)
        for k in range(0, len(rows), batch_size)
    ]
    return anatomy(component_gradients(bench.adapted, made), state)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="finished run folders")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--csv", type=Path, help="write one row per run, measure and component")
    args = parser.parse_args(argv)
    if args.batches < 2:
        parser.error("--batches: agreement needs at least 2 batches")
    rows = []
    for run in args.runs:
        found = run_anatomy(run, args.batches, args.batch_size)
        for measure, values in found.items():
            rows.append(
                {
                    "run": str(run),
                    "measure": measure,
                    **{f"c{i + 1}": v for i, v in enumerate(values)},
                }
            )
            shown = " ".join(f"{v:5.2f}" for v in values)
            print(f"{run}  {measure:8s} {shown}", flush=True)
    if args.csv:
        args.csv.write_text(csv_text(rows, list(rows[0])), encoding="utf-8")


if __name__ == "__main__":
    main()
