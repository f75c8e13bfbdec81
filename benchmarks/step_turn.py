"""How far does one client round move a global adapter's product, per method and step size?

    python -m benchmarks.step_turn RUN [--methods M,M] [--lr 8e-3,1.6e-2] [--clients 3] [--csv FILE]

A run's global adapter (``adapter.safetensors``, or the ``checkpoint.safetensors`` of a run still
going) is factored as each method's server sends it (``svd_ordered`` with the method's ``split``;
the run's own factors for a method that does not re-factorise); a top-rank client then trains one
round from it with the run's local settings and the method's own objective (``client_step``, as
in a simulation), at each learning rate. Per module, with ``P = B @ A`` before and ``P'`` after
(the median over modules, then the mean over clients):

- ``change``: ``||P' - P|| / ||P||``, how far the round moved the product;
- ``turn_in`` / ``turn_out``: the angle in degrees between the product's strongest right (input) /
  left (output) singular direction before and after;
- ``sigma1``: the strongest singular value after over before.

docs/RESULTS.md section 51 reads the default's divergence at lr 1.6e-2 as its strongest direction
moving furthest at a shared nominal step: after the re-factorisation with unit A rows
(``split = unit-a``) that direction is A's first row alone, AdamW moves each coordinate by about
the learning rate, and the shared step gives it up to sqrt(r) times that. These numbers measure
that claim on the same state for each variant: the shared step boosted (``prelort-ordered-g``),
capped (``-gc``), absent (``-u``), and with the singular values split evenly (``-gb``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from pathlib import Path

import torch

from benchmarks.directions import inner, thin_svd
from prelort.adapters.state import LORA_A, LORA_B, lora_modules, slice_to_rank
from prelort.aggregation.ordered import Ordered, svd_ordered
from prelort.aggregation.registry import get_method
from prelort.config import config_from_mapping
from prelort.federation.client import client_step
from prelort.io import load_adapter
from prelort.runtime.checkpoint import CHECKPOINT_NAME
from prelort.runtime.outputs import csv_text, read_metrics
from prelort.runtime.workbench import build_workbench
from prelort.training.local import LocalTrainingConfig

MEASURES = ("change", "turn_in", "turn_out", "sigma1")


def _angle(x: torch.Tensor, y: torch.Tensor) -> float:
    """Degrees between two unit vectors' lines (the sign of a singular vector is arbitrary)."""
    return math.degrees(math.acos(min(1.0, abs(float(x @ y)))))


def movement(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]) -> dict:
    """Median over modules of how far each product moved (the module docstring's measures)."""
    found: dict[str, list[float]] = {k: [] for k in MEASURES}
    for module in lora_modules(before):
        x, y = (thin_svd(s[module + LORA_A], s[module + LORA_B]) for s in (before, after))
        size = inner(x, x)
        moved = max(inner(y, y) + size - 2.0 * inner(x, y), 0.0)  # ||P' - P||^2
        found["change"].append(math.sqrt(moved / max(size, 1e-60)))
        found["turn_in"].append(_angle(x.right[:, 0], y.right[:, 0]))
        found["turn_out"].append(_angle(x.left[:, 0], y.left[:, 0]))
        found["sigma1"].append(float(y.sigma[0] / x.sigma[0].clamp_min(1e-30)))
    return {k: float(torch.tensor(v).median()) for k, v in found.items()}


def load_global(run: Path) -> dict[str, torch.Tensor]:
    """The run's final adapter, or its latest checkpoint while it is still going."""
    path = run / "adapter.safetensors"
    state, _ = load_adapter(path if path.exists() else run / CHECKPOINT_NAME)
    return state


def step_turn(run: Path, methods: list[str], lrs: list[float], clients: int) -> list[dict]:
    """One row per method and step size: the measures after one round of a top-rank client."""
    settings = read_metrics(run / "metrics.json")["config"]
    config = config_from_mapping(settings)
    bench = build_workbench(config)
    state = load_global(run)
    ladder = list(config.ranks.ladder)
    top = max(ladder)
    per_client = len(bench.train) // clients
    kind, pad = bench.batch_kind, bench.tokenizer.pad_token_id
    rows = []
    for name in methods:
        method = get_method(name)
        served = svd_ordered(state, method.split) if isinstance(method, Ordered) else state
        sent = slice_to_rank(served, top)
        objective = method.local_objective(top, list(config.ranks.ranks), ladder)
        for lr in lrs:
            local = LocalTrainingConfig(
                steps=config.local_steps,
                batch_size=config.batch_size,
                lr=lr,
                weight_decay=config.weight_decay,
                nested=config.resolved_nested,
                optimizer=config.optimizer,
            )
            measured = []
            for client in range(clients):
                part = list(range(client * per_client, (client + 1) * per_client))
                reply = client_step(
                    bench.adapted, sent, bench.train, part, kind, pad, ladder, local, client,
                    client + 1, objective,
                )  # fmt: skip
                measured.append(movement(sent, reply.state))
            mean = {k: sum(m[k] for m in measured) / clients for k in MEASURES}
            rows.append({"method": name, "lr": lr, **mean})
            print(
                f"{name:22s} lr {lr:<8g} change {mean['change']:.3f}  turn_in "
                f"{mean['turn_in']:5.2f}°  turn_out {mean['turn_out']:5.2f}°  sigma1 "
                f"{mean['sigma1']:.3f}",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder (finished or going)")
    parser.add_argument(
        "--methods", default="prelort-ordered-u,prelort-ordered-g,prelort-ordered-gc,"
        "prelort-ordered-gb", help="comma-separated methods whose factors and objective to use"
    )  # fmt: skip
    parser.add_argument("--lr", default="8e-3,1.6e-2", help="comma-separated step sizes")
    parser.add_argument("--clients", type=int, default=3, help="disjoint slices of the pool")
    parser.add_argument("--csv", type=Path, help="write one row per method and step size")
    args = parser.parse_args(argv)
    if args.clients < 1:
        parser.error("--clients: at least 1")
    rows = step_turn(
        args.run, args.methods.split(","), [float(x) for x in args.lr.split(",")], args.clients
    )
    if args.csv:
        args.csv.write_text(csv_text(rows, list(rows[0])), encoding="utf-8")


if __name__ == "__main__":
    main()
