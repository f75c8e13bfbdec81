"""Cutting the rank axis [0, R) into segments at the ranks in use."""

from __future__ import annotations

from collections.abc import Iterable


def segment_bounds(ranks: Iterable[int], max_rank: int) -> list[tuple[int, int]]:
    """Half-open segments [lo, hi) of the rank axis, cut at every rank in ``ranks`` and at R.

    A client of rank r holds exactly the segments with ``hi <= r``.

    >>> segment_bounds([2, 4, 8], 16)
    [(0, 2), (2, 4), (4, 8), (8, 16)]
    """
    cuts = sorted({r for r in ranks if 0 < r < max_rank} | {max_rank})
    bounds, lo = [], 0
    for hi in cuts:
        bounds.append((lo, hi))
        lo = hi
    return bounds
