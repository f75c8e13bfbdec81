"""Prefix-nested training: which truncations of the adapter a client optimises at each step.

Optimising the adapter at every ladder rank up to the client's own pushes the most useful
directions into the lowest components, so each prefix works on its own and a rank-2 client can
use the first two components a rank-16 client trained.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prelort.errors import ConfigError

MODES = ("all", "sample", "split", "off")


def truncation_ranks(
    mode: str, rank: int, ladder: Sequence[int], generator: torch.Generator
) -> list[int]:
    """The active ranks of one training step for a client of rank ``rank``.

    Args:
        mode: "all" (every ladder rank <= rank, losses averaged), "sample" (one of them, uniformly),
            "split" (every one of them, each on its share of the batch: ``split_rows``) or "off"
            (plain LoRA at ``rank``).
        rank: the client's adapter rank.
        ladder: the ranks in use in the federation.
        generator: the client's random stream (used by "sample").

    Raises:
        ConfigError: an unknown mode.
    """
    allowed = sorted({r for r in ladder if r <= rank} | {rank})
    if mode in ("all", "split"):
        return allowed
    if mode == "sample":
        pick = int(torch.randint(len(allowed), (1,), generator=generator))
        return [allowed[pick]]
    if mode == "off":
        return [rank]
    raise ConfigError(f"nested: unknown mode {mode!r}; choose one of {', '.join(MODES)}")


def prefix_step_scales(ranks: Sequence[int], rank: int) -> torch.Tensor:
    """Per component of a rank-``rank`` adapter, the share of a step's truncations that use it.

    Under the averaged nested loss, component i's gradient gathers a term from every truncation
    that contains it, so plain gradient descent moves the prefix most. AdamW normalises each
    parameter's step, which erases that precedence and spreads the update evenly over the
    components; scaling each component's step by this share restores it. Shape (rank,).
    """
    index = torch.arange(rank)
    return torch.stack([index < t for t in ranks]).float().mean(0)


def split_rows(rows: int, ranks: Sequence[int], generator: torch.Generator) -> list[int]:
    """The truncation rank of each row of a batch under ``split``: the rows cut into near-equal runs.

    Each of the ``len(ranks)`` truncations trains on about ``rows / len(ranks)`` of the batch, so a
    step costs what one plain step costs while every truncation gets a gradient (the loss is an
    estimate of ``all``'s from fewer rows per truncation). The rows are in random order already; a
    random rotation of the runs spreads the truncations that miss out when rows < truncations.
    """
    t = len(ranks)
    shift = int(torch.randint(t, (1,), generator=generator))
    return [ranks[(n * t // rows + shift) % t] for n in range(rows)]
