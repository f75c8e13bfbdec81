"""Task heads per rank tier: the naming of their state keys and which tier a rank uses.

A nested adapter serves one model per truncation, and the features of each truncation differ (their
norm grows with the rank), so one classifier head shared by every tier fits none of them well.
With per-tier heads the global state holds one copy of the head per ladder rank, under the key
``<parameter>@<tier>``; a forward at active rank r uses the head of the largest tier <= r.
"""

from __future__ import annotations

from collections.abc import Sequence

TIER_SEP = "@"


def head_key(name: str, tier: int) -> str:
    """``classifier.weight`` at tier 4 -> ``classifier.weight@4``."""
    return f"{name}{TIER_SEP}{tier}"


def split_head_key(key: str) -> tuple[str, int | None]:
    """``classifier.weight@4`` -> (``classifier.weight``, 4); a shared key -> (key, None)."""
    name, sep, tier = key.rpartition(TIER_SEP)
    if sep and tier.isdigit():
        return name, int(tier)
    return key, None


def tier_of(rank: int, tiers: Sequence[int]) -> int:
    """The tier whose head serves active rank ``rank``: the largest tier <= rank.

    Ranks between tiers occur when HetLoRA prunes a client (16 -> 12 uses the tier-8 head).

    Raises:
        ValueError: ``rank`` is below every tier.
    """
    below = [t for t in tiers if t <= rank]
    if not below:
        raise ValueError(f"rank {rank} is below the smallest tier {min(tiers)}")
    return max(below)
