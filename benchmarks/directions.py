"""Do two runs learn the same update? Per module, the cosine of their products and of their subspaces.

    python -m benchmarks.directions RUN RUN [RUN ...] [--k 2] [--csv FILE]

For every pair of finished runs of one task this reads both ``adapter.safetensors`` and reports the
median over modules of four numbers (1 = the same, 0 = orthogonal):

- ``cosine``: of the two updates ``B @ A`` as vectors (Frobenius inner product over both norms);
- ``cut cosine``: the same for their best rank-k approximations, what a tier of rank k serves in
  singular-value order;
- ``left`` / ``right``: the overlap of their top-k left (output) and right (input) singular
  subspaces, the mean squared cosine of the principal angles, ``||U_x^T U_y||_F^2 / k``.

A heterogeneous federation whose top tier trails FedIT at the top rank may learn an update as large
and as concentrated as FedIT's and still point elsewhere (docs/RESULTS.md sections 27, 50): these
numbers say whether it does, and whether its directions are nearer to what every client at the lowest
rank finds or to what every client at the top rank finds. Two runs of one method on other seeds
(other partitions and initial adapters) give the floor to read them against.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from prelort.adapters.state import LORA_A, LORA_B, MERGED, lora_modules
from prelort.io import load_adapter


@dataclass(frozen=True)
class Factors:
    """One module's update ``B @ A`` as a thin SVD: ``left @ diag(sigma) @ right.T``."""

    left: torch.Tensor  # (out, R), orthonormal columns
    sigma: torch.Tensor  # (R,), decreasing
    right: torch.Tensor  # (in, R), orthonormal columns


@dataclass(frozen=True)
class Agreement:
    """Median over modules of how far two runs' updates agree (each in [0, 1] but ``cosine``)."""

    run_x: str
    run_y: str
    cosine: float
    cut_cosine: float
    left: float
    right: float


def thin_svd(lora_a: torch.Tensor, lora_b: torch.Tensor) -> Factors:
    """The SVD of ``lora_b @ lora_a`` from two thin QRs, never forming the (out, in) product.

    Args:
        lora_a: (R, in).
        lora_b: (out, R).
    """
    q_b, r_b = torch.linalg.qr(lora_b.double())  # (out, R), (R, R)
    q_a, r_a = torch.linalg.qr(lora_a.double().T)  # (in, R), (R, R)
    u, sigma, vh = torch.linalg.svd(r_b @ r_a.T)  # (R, R) core
    return Factors(q_b @ u, sigma, q_a @ vh.T)


def inner(x: Factors, y: Factors, k: int | None = None) -> float:
    """``<X_k, Y_k>_F`` of the two (rank-k cut) products: ``tr(S_x (U_x^T U_y) S_y (V_y^T V_x))``."""
    k_x = len(x.sigma) if k is None else min(k, len(x.sigma))
    k_y = len(y.sigma) if k is None else min(k, len(y.sigma))
    cross_left = x.left[:, :k_x].T @ y.left[:, :k_y]  # (k_x, k_y)
    cross_right = y.right[:, :k_y].T @ x.right[:, :k_x]  # (k_y, k_x)
    return float(
        torch.trace(
            torch.diag(x.sigma[:k_x]) @ cross_left @ torch.diag(y.sigma[:k_y]) @ cross_right
        )
    )


def cosine(x: Factors, y: Factors, k: int | None = None) -> float:
    """The cosine of two updates (their rank-k cuts if ``k``); NaN where either is zero."""
    norm = math.sqrt(inner(x, x, k) * inner(y, y, k))
    return inner(x, y, k) / norm if norm > 0.0 else math.nan


def overlap(basis_x: torch.Tensor, basis_y: torch.Tensor, k: int) -> float:
    """Mean squared cosine of the principal angles between two k-dimensional column spaces."""
    k = min(k, basis_x.shape[1], basis_y.shape[1])
    return float((basis_x[:, :k].T @ basis_y[:, :k]).square().sum()) / k


def run_factors(run: Path) -> dict[str, Factors]:
    """Every module's thin SVD from a finished run folder.

    Raises:
        ValueError: the adapter has no LoRA module, or a merged dense term (FLoRA), whose update is
            not a product of the two factors.
    """
    state, _ = load_adapter(run / "adapter.safetensors")
    modules = lora_modules(state)
    if not modules:
        raise ValueError(f"{run}: the adapter has no LoRA modules")
    if any(module + MERGED in state for module in modules):
        raise ValueError(f"{run}: a merged update (FLoRA) is not B @ A; compare runs without one")
    return {m: thin_svd(state[m + LORA_A], state[m + LORA_B]) for m in modules}


def agreement(
    x: dict[str, Factors], y: dict[str, Factors], k: int, names: tuple[str, str]
) -> Agreement:
    """The median over the modules both runs hold of the four measures.

    Raises:
        ValueError: the runs share no module (adapters of different models or targets).
    """
    shared = [m for m in x if m in y]
    if not shared:
        raise ValueError(f"{names[0]} and {names[1]} share no LoRA module")

    def median(values: list[float]) -> float:
        return float(torch.tensor(values, dtype=torch.float64).nanmedian())

    return Agreement(
        *names,
        cosine=median([cosine(x[m], y[m]) for m in shared]),
        cut_cosine=median([cosine(x[m], y[m], k) for m in shared]),
        left=median([overlap(x[m].left, y[m].left, k) for m in shared]),
        right=median([overlap(x[m].right, y[m].right, k) for m in shared]),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="two or more finished run folders")
    parser.add_argument("--k", type=int, default=2, help="the rank of the cut and the subspaces")
    parser.add_argument("--csv", type=Path, help="also write one row per pair here")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("give two or more run folders")
    if args.k < 1:
        parser.error("--k must be at least 1")
    names = {run: f"{run.resolve().parent.name}/{run.resolve().name}" for run in args.runs}
    factors = {run: run_factors(run) for run in args.runs}
    rows = []
    print(f"median over modules; k = {args.k}: cosine | cut cosine | left | right overlap")
    for run_x, run_y in itertools.combinations(args.runs, 2):
        row = agreement(factors[run_x], factors[run_y], args.k, (names[run_x], names[run_y]))
        rows.append(row)
        print(
            f"{row.run_x} ~ {row.run_y}: {row.cosine:.3f} | {row.cut_cosine:.3f} | "
            f"{row.left:.3f} | {row.right:.3f}",
            flush=True,
        )
    if args.csv:
        with args.csv.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
            writer.writeheader()
            writer.writerows(asdict(row) for row in rows)


if __name__ == "__main__":
    main()
