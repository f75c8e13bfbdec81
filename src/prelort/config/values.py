"""The values of settings that are more than a number: rank ladders, memory budgets, name lists,
and the choices of the settings that take one of a few words."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prelort.errors import ConfigError

# The head's AdamW rate over the adapter's, measured on the default run (docs/RESULTS.md): at 1x the
# federated head trailed a readout refitted on the same features by 17 to 52 points; 10x by up to 8.7,
# 30x by 0.7 to 2 at ranks 2-8 and 6.3 at rank 16.
HEAD_LR_FACTOR = 30.0
# The default method of every entry point (simulate, compare, aggregate, the Flower app's
# pyproject.toml); its registry group is "recommended" (docs/RESULTS.md, the decision rows).
RECOMMENDED_METHOD = "prelort-ordered-g"
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
# train_dtype, eval_dtype; "bfloat16-if-native": bf16 only where the device computes it natively
# (an AVX2-only CPU emulates it: MiniLM's scoring forward at 7.4x the fp32 time, PERFORMANCE 6)
AUTOCAST_DTYPE_CHOICES = ("auto", "bfloat16", "float16", "bfloat16-if-native")
WIRE_DTYPE_CHOICES = ("float32", "bfloat16", "float16")
PARTITION_CHOICES = ("iid", "dirichlet", "pathological")
NESTED_CHOICES = ("all", "sample", "split", "off")
HEAD_CHOICES = ("per-tier", "shared")
OPTIMIZER_CHOICES = ("adamw", "sgd")
LR_SCHEDULE_CHOICES = ("constant", "cosine")
CALIBRATION_CHOICES = ("auto", "lda", "none")
CLASSIFIER_CHOICES = ("auto", "head", "verbalized")
QUANTIZE_CHOICES = ("none", "4bit", "8bit")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device_name(field: str, name: str) -> None:
    """Refuse a device name that is not ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N``.

    Whether this machine has that device is ``device.resolve_device``'s question; this one needs
    no torch, so a mistyped name is refused before torch is imported.

    Raises:
        ConfigError: naming ``field``.
    """
    if not DEVICE_PATTERN.match(name):
        raise ConfigError(f"{field}: {name!r} is not one of auto, cpu, cuda, cuda:N, mps")


@dataclass(frozen=True)
class RankSpec:
    """How client ranks are assigned.

    Either a list cycled over clients (``2,4,8,16``: client k gets ranks[k % 4]) or a
    distribution sampled with the run seed (``2:0.4,4:0.3,8:0.2,16:0.1``).
    """

    ranks: tuple[int, ...]
    probabilities: tuple[float, ...] | None = None

    @property
    def ladder(self) -> tuple[int, ...]:
        """The distinct ranks in use, ascending."""
        return tuple(sorted(set(self.ranks)))

    def __str__(self) -> str:
        if self.probabilities is None:
            return ",".join(map(str, self.ranks))
        return ",".join(f"{r}:{p:g}" for r, p in zip(self.ranks, self.probabilities, strict=True))


def parse_weighted(
    value: Any, field_name: str, what: str, read: Callable[[str], Any]
) -> tuple[tuple[Any, ...], tuple[float, ...] | None]:
    """``"a,b,c"`` (cycled over clients) or ``"a:0.5,b:0.5"`` (drawn): the values and probabilities.

    Args:
        value: a comma string or a list.
        field_name: the setting, for messages.
        what: the name of one value in messages (``RANK``, ``SIZE``).
        read: one value's text to the value; raises ``ConfigError`` or ``ValueError``.

    Raises:
        ConfigError: no value, an unreadable one, or probabilities not all given, >= 0, summing to 1.
    """
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    values, probs = [], []
    for item in items:
        text = str(item).strip()
        value_text, sep, prob_text = text.partition(":")
        try:
            values.append(read(value_text))
            probs.append(float(prob_text) if sep else None)
        except ConfigError:  # read's own message names what is wrong; ConfigError is a ValueError
            raise
        except ValueError:
            raise ConfigError(
                f"{field_name}: cannot read {text!r} as {what} or {what}:PROBABILITY"
            ) from None
    if not values:
        raise ConfigError(f"{field_name}: give at least one value")
    if all(p is None for p in probs):
        return tuple(values), None
    if any(p is None or p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
        raise ConfigError(
            f"{field_name}: probabilities must all be given, >= 0 and sum to 1 in {value!r}"
        )
    return tuple(values), tuple(probs)


def parse_ranks(value: Any) -> RankSpec:
    """Parse ``"2,4,8,16"``, ``[2, 4, 8, 16]`` or ``"2:0.5,8:0.5"`` into a ``RankSpec``.

    Raises:
        ConfigError: empty, non-integer, non-positive ranks or probabilities that do not sum to 1.
    """

    def read_rank(text: str) -> int:
        rank = int(text)
        if rank < 1:
            raise ConfigError(f"ranks: every rank must be >= 1, got {rank}")
        return rank

    return RankSpec(*parse_weighted(value, "ranks", "RANK", read_rank))


UNITS = {"": 2**30, "gb": 2**30, "g": 2**30, "gib": 2**30, "mb": 2**20, "m": 2**20, "mib": 2**20}


def parse_memory(text: str, field_name: str = "client_memory") -> int:
    """``"4GB"``, ``"512MB"`` or ``"4"`` (GB) as bytes (binary units: 1 GB = 2**30 bytes).

    Raises:
        ConfigError: not a positive size.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in UNITS or float(match.group(1)) <= 0:
        raise ConfigError(
            f"{field_name}: cannot read {text!r} as a memory size such as 4GB or 512MB"
        )
    return int(float(match.group(1)) * UNITS[unit])


@dataclass(frozen=True)
class BudgetSpec:
    """Client memory budgets in bytes: a list cycled over clients, or a distribution sampled."""

    budgets: tuple[int, ...]
    probabilities: tuple[float, ...] | None = None


def parse_budgets(value: Any) -> BudgetSpec:
    """Parse ``"4GB,8GB"`` or ``"4GB:0.5,16GB:0.5"`` into a ``BudgetSpec``.

    Raises:
        ConfigError: an unreadable size, or probabilities that are missing or do not sum to 1.
    """
    return BudgetSpec(*parse_weighted(value, "client_memory", "SIZE", parse_memory))


def names_list(value: Any) -> tuple[str, ...] | None:
    if value is None or value == "":
        return None
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    return tuple(s.strip() for s in items if s.strip())
