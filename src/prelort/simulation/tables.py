"""The one shape of summary.md's tables: a row per method, a column per rank tier.

The result table, the paired-difference table and the trend table differ only in their cells, their
caption and the columns before the tiers; this builds the grid they share.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

MISSING = "–"  # a tier the method has no figure for (its ranks stop below it, or a metric it lacks)


def seed_labels(seeds: Mapping[str, int]) -> dict[str, str]:
    """Row labels per method: the name, with ``(n = k)`` where the methods' seed counts differ
    (runs pooled from several folders, or a method pairing with a reference on fewer seeds)."""
    uneven = len(set(seeds.values())) > 1
    return {m: f"{m} (n = {k})" if uneven else m for m, k in seeds.items()}


def tier_table(
    corner: str,
    tiers: Sequence[int],
    rows: Iterable[tuple[Sequence[str], Mapping[int, str]]],
    columns: Sequence[str] = (),
) -> str:
    """Markdown: the header ``corner | *columns | rank t…``, then a line per row.

    Each row is its leading cells (one for ``corner``, one per ``columns``) and its cell per tier;
    a tier the row lacks shows ``MISSING``.
    """
    lead = [corner, *columns]
    lines = [
        "| " + " | ".join([*lead, *(f"rank {t}" for t in tiers)]) + " |",
        "|" + "---|" * (len(lead) + len(tiers)),
    ]
    for leading, cells in rows:
        if len(leading) != len(lead):
            raise ValueError(
                f"a row has {len(leading)} leading cells for the {len(lead)} columns {lead}"
            )
        lines.append("| " + " | ".join([*leading, *(cells.get(t, MISSING) for t in tiers)]) + " |")
    return "\n".join(lines)
