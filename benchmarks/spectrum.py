"""How concentrated is what a run learnt? The singular values of each module's product ``B @ A``.

    python -m benchmarks.spectrum RUN [RUN ...] [--csv FILE] [--plot FILE.png]

A tier of rank r can hold at most the first r singular directions of a module's update. This reads
each finished run's ``adapter.safetensors`` and reports, per run, the median over modules of every
singular value of ``B @ A`` (the LoRA scale left out: runs of one task share it; FLoRA's merged
update counts whole, so its spectrum runs past R) and the median share of the product's energy
(sum of squared singular values) that its best rank-r approximation keeps at each rank r of the
ladder. A run whose share at rank 2 is near 1 learnt an update a rank-2 adapter can hold (served
in SVD order, ``python -m benchmarks.rescore --split unit-a``); a flat spectrum spreads it over
every component (docs/RESULTS.md section 27).
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Mapping
from pathlib import Path

import torch

from benchmarks.directions import thin_svd
from prelort.adapters.state import LORA_A, LORA_B, MERGED, lora_modules
from prelort.io import load_adapter
from prelort.runtime.outputs import method_colors, save_figure


def product_singular_values(
    state: Mapping[str, torch.Tensor], scale: float = 1.0
) -> dict[str, torch.Tensor]:
    """Per module, the singular values of ``B @ A`` in decreasing order (float64, length R).

    From two thin QRs and an R x R SVD (``directions.thin_svd``), never forming the product. A
    module with a dense merged term (FLoRA merges every round into it, scaled) is read as
    ``merged / scale + B @ A``, its whole update on the same footing, with ``min(out, in)`` values.
    """
    values = {}
    for module in lora_modules(state):
        a, b = state[module + LORA_A].double(), state[module + LORA_B].double()  # (R, in), (out, R)
        if module + MERGED in state:
            dense = state[module + MERGED].double() / scale + b @ a
            values[module] = torch.linalg.svdvals(dense)
            continue
        values[module] = thin_svd(a, b).sigma
    return values


def energy_shares(values: torch.Tensor, ranks: list[int]) -> list[float]:
    """The share of ``sum(values**2)`` in the first r values, for each r of ``ranks``."""
    energy = values.square()
    total = float(energy.sum())
    if total == 0.0:
        return [0.0 for _ in ranks]
    return [float(energy[:r].sum()) / total for r in ranks]


def run_spectrum(run: Path, ranks: list[int]) -> tuple[list[float], list[float]]:
    """The median over modules of each singular value, and of each rank's energy share."""
    state, meta = load_adapter(run / "adapter.safetensors")
    values = product_singular_values(state, float(meta.get("scale", 1.0)))
    if not values:
        raise ValueError(f"{run}: the adapter has no LoRA modules")
    shortest = min(len(v) for v in values.values())  # merged modules differ in min(out, in)
    stacked = torch.stack([v[:shortest] for v in values.values()])  # (modules, R or shortest)
    shares = torch.tensor([energy_shares(v, ranks) for v in values.values()])
    return stacked.median(0).values.tolist(), shares.median(0).values.tolist()


def plot_spectra(spectra: dict[str, list[float]], path: Path) -> Path:
    """Median singular value per component, a line per run (log scale: flat against steep)."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = method_colors(list(spectra))
    for name, sigma in spectra.items():
        ax.plot(range(1, len(sigma) + 1), sigma, marker="o", label=name, color=colors[name])
    ax.set_yscale("log")
    ax.set_xlabel("component (singular direction of B @ A)")
    ax.set_ylabel("median singular value over modules")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="finished run folders")
    parser.add_argument("--ranks", default="1,2,4,8", help="ranks whose energy share to report")
    parser.add_argument("--csv", type=Path, help="also write run, rank, share, sigma rows here")
    parser.add_argument("--plot", type=Path, help="also plot the median spectra (PNG)")
    args = parser.parse_args(argv)
    ranks = [int(r) for r in args.ranks.split(",")]
    rows, spectra = [], {}
    for run in args.runs:
        sigma, shares = run_spectrum(run, ranks)
        name = run.resolve().name
        spectra[name] = sigma
        print(
            f"{name}: median sigma {' '.join(f'{s:.3f}' for s in sigma[:16])}"
            f"{' ...' if len(sigma) > 16 else ''}; energy share at rank "
            + ", ".join(f"{r}: {s:.3f}" for r, s in zip(ranks, shares, strict=True)),
            flush=True,
        )
        rows += [
            {"run": name, "rank": r, "share": round(s, 4), "sigma": round(sigma[r - 1], 4)}
            for r, s in zip(ranks, shares, strict=True)
            if r <= len(sigma)
        ]
    if args.csv:
        with args.csv.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["run", "rank", "share", "sigma"])
            writer.writeheader()
            writer.writerows(rows)
    if args.plot:
        plot_spectra(spectra, args.plot)


if __name__ == "__main__":
    main()
