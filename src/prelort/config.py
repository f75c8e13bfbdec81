"""Every setting of a run, validated once into a frozen dataclass.

Settings come from a TOML file (``[simulate]`` table or top level) and command-line flags that
override it. Each bad value raises a ``ConfigError`` that names the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prelort.device import check_device_name
from prelort.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# The head's AdamW rate over the adapter's, measured on the default run (docs/RESULTS.md): at 1x the
# federated head trailed a readout refitted on the same features by 17 to 52 points; 10x by up to 8.7,
# 30x by 0.7 to 2 at ranks 2-8 and 6.3 at rank 16.
HEAD_LR_FACTOR = 30.0
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
WIRE_DTYPE_CHOICES = ("float32", "bfloat16", "float16")
PARTITION_CHOICES = ("iid", "dirichlet", "pathological")
NESTED_CHOICES = ("all", "sample", "split", "off")
HEAD_CHOICES = ("per-tier", "shared")
OPTIMIZER_CHOICES = ("adamw", "sgd")
CALIBRATION_CHOICES = ("none", "lda")
CLASSIFIER_CHOICES = ("auto", "head", "verbalized")
QUANTIZE_CHOICES = ("none", "4bit", "8bit")


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


def _names(value: Any) -> tuple[str, ...] | None:
    if value is None or value == "":
        return None
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    return tuple(s.strip() for s in items if s.strip())


# The concerns settings are grouped by in help and printed configs (TOML and the CLI stay flat).
CONCERNS: dict[str, str] = {
    "federation": "federation: method, ranks, clients, rounds",
    "model": "model and adapter",
    "data": "task and data",
    "training": "local training",
    "evaluation": "evaluation",
    "privacy": "privacy: differential privacy, secure aggregation",
    "outputs": "outputs",
}


def setting(*, help: str, concern: str, workbench: bool = False, **default: Any) -> Any:
    """A ``SimulationConfig`` field: its default (``default=`` or ``default_factory=``), its help,
    its concern (a key of ``CONCERNS``) and whether it changes the loaded task or model (the
    workbench's cache key)."""
    if concern not in CONCERNS:
        raise ValueError(f"unknown concern {concern!r}")
    metadata = {"help": " ".join(help.split()), "concern": concern, "workbench": workbench}
    return field(**default, metadata=metadata)


@dataclass(frozen=True)
class SimulationConfig:
    """One federated simulation. The defaults are the default job (``configs/default.toml``).

    Each field's help (the CLI's, the README's table) and scope live in its metadata (``setting``):
    ``workbench=True`` marks the fields that change the loaded task or model, which
    ``simulation.workbench.workbench_key`` derives the cache key of a loaded workbench from.
    """

    method: str = setting(
        concern="federation",
        default="prelort",
        help="federated method (prelort methods lists them).",
    )
    task: str = setting(
        concern="data",
        default="bbc-news",
        help="packaged task name or a .jsonl / .csv path.",
        workbench=True,
    )
    model: str = setting(
        concern="model",
        default="minilm-l6",
        help="minilm-l6, smollm2-135m, a local folder or a hub id.",
        workbench=True,
    )
    ranks: RankSpec = setting(
        concern="federation",
        default_factory=lambda: RankSpec((2, 4, 8, 16)),
        help="client ranks, cycled over clients or sampled from a distribution.",
    )
    max_rank: int | None = setting(
        concern="model",
        default=None,
        help="R, the global nested rank (default: the largest client rank).",
        workbench=True,
    )
    alpha: float | None = setting(
        concern="model",
        default=None,
        help="LoRA alpha; the scale is alpha / R at every rank (default 2 * R, a scale of 2).",
        workbench=True,
    )
    target_modules: tuple[str, ...] | None = setting(
        concern="model",
        default=None,
        help="modules to adapt (default: q_proj,v_proj or query,value).",
        workbench=True,
    )
    lora_dropout: float = setting(
        concern="model",
        default=0.0,
        help="dropout on the adapter input.",
        workbench=True,
    )
    clients: int = setting(
        concern="federation",
        default=8,
        help="number of clients.",
    )
    clients_per_round: int | None = setting(
        concern="federation",
        default=None,
        help="clients sampled each round (default: all).",
    )
    rounds: int = setting(
        concern="federation",
        default=8,
        help="federated rounds.",
    )
    local_steps: int = setting(
        concern="training",
        default=5,
        help="optimizer steps per client per round.",
    )
    batch_size: int = setting(
        concern="training",
        default=8,
        help="examples per step.",
    )
    lr: float = setting(
        concern="training",
        default=1e-3,
        help="learning rate of the adapter.",
    )
    weight_decay: float = setting(
        concern="training",
        default=0.0,
        help="weight decay.",
    )
    optimizer: str = setting(
        concern="training",
        default="adamw",
        help="adamw or sgd (momentum 0.9).",
    )
    head: str | None = setting(
        concern="model",
        default=None,
        help="classifier heads: per-tier (one per ladder rank) or shared; default: the method's own, shared for every method now.",
    )
    head_lr: float | None = setting(
        concern="training",
        default=None,
        help="learning rate of the classifier head (default: 30 x lr for AdamW, lr for SGD).",
    )
    classifier: str = setting(
        concern="model",
        default="auto",
        help="how a classification task is learnt: head (a trained classifier head), verbalized (a causal LM writes the label), auto (verbalized for causal LMs).",
        workbench=True,
    )
    readout_examples: int = setting(
        concern="evaluation",
        default=600,
        help="training examples for the refitted-readout diagnostic at the end (0: off).",
        workbench=True,
    )
    calibration: str = setting(
        concern="evaluation",
        default="none",
        help="lda also scores each tier, after the last round, with a head refitted from every client's class statistics (calibrated_accuracy; see prelort calibrate), or none.",
    )
    nested: str | None = setting(
        concern="training",
        default=None,
        help='prefix-nested training mode: "all" (every truncation up to the client\'s rank, each step), "sample" (one drawn per step), "split" (each on its share of the batch, the cost of a plain step) or "off"; default: the method\'s own.',
    )
    partition: str = setting(
        concern="data",
        default="dirichlet",
        help='"iid", "dirichlet" or "pathological".',
    )
    dirichlet_alpha: float = setting(
        concern="data",
        default=0.5,
        help="Dirichlet concentration of label proportions.",
    )
    classes_per_client: int = setting(
        concern="data",
        default=2,
        help='labels per client for "pathological".',
    )
    max_length: int | None = setting(
        concern="data",
        default=None,
        help="tokens per example (default 64 for classification, 160 for generation).",
        workbench=True,
    )
    train_examples: int | None = setting(
        concern="data",
        default=None,
        help="cap on the training pool, sampled with the seed (default: all).",
    )
    eval_examples: int = setting(
        concern="evaluation",
        default=300,
        help="test examples for accuracy / perplexity.",
        workbench=True,
    )
    generate_examples: int = setting(
        concern="evaluation",
        default=100,
        help="test examples for ROUGE-L (generation; 0 disables it).",
        workbench=True,
    )
    max_new_tokens: int = setting(
        concern="evaluation",
        default=24,
        help="generation length for ROUGE-L.",
    )
    eval_every: int = setting(
        concern="evaluation",
        default=1,
        help="evaluate every k rounds (the last round always).",
    )
    rouge_every_round: bool = setting(
        concern="evaluation",
        default=False,
        help="also generate for ROUGE-L each evaluated round (else only at the end).",
    )
    max_update_norm: float | None = setting(
        concern="federation",
        default=None,
        help="reject client updates whose ||s B A||_F is above this (default: no bound).",
    )
    client_failure_rate: float = setting(
        concern="federation",
        default=0.0,
        help="probability that a sampled client drops out mid-round.",
    )
    dp_clip: float | None = setting(
        concern="privacy",
        default=None,
        help="client-level DP: the server clips each client's update (factors and head) to this L2 norm (default: no clipping, no DP).",
    )
    dp_noise: float = setting(
        concern="privacy",
        default=0.0,
        help="client-level DP: Gaussian noise multiplier sigma; the aggregate gets noise of std sigma x dp_clip x the rule's largest client weight (needs dp_clip).",
    )
    dp_delta: float | None = setting(
        concern="privacy",
        default=None,
        help="client-level DP: the δ at which ε is reported (default 1 / clients^1.1, below 1/clients).",
    )
    dp_target_epsilon: float | None = setting(
        concern="privacy",
        default=None,
        help="client-level DP: choose the noise multiplier (instead of --dp-noise) whose ε after the last round, at dp_delta, is this (RDP accountant; needs dp_clip).",
    )
    secure_aggregation: bool = setting(
        concern="privacy",
        default=False,
        help="the server learns only the sum of the clients' zero-padded updates (Flower's SecAgg+ in the Flower app; the same sums in the clear in-process); for prelort, zeropad and the other averaging methods.",
    )
    secure_range: float = setting(
        concern="privacy",
        default=4.0,
        help="under secure aggregation, the largest magnitude a sent number may have; SecAgg+ quantises [-secure_range, secure_range] to 2^22 levels, and a client whose update exceeds it drops out of the round.",
    )
    dtype: str = setting(
        concern="model",
        default="auto",
        help="base model dtype: auto (bf16 on CUDA, fp32 on the CPU, the packaged model's own choice), float32, bfloat16, float16; adapters and their optimizer state are fp32 whatever this is.",
        workbench=True,
    )
    device: str = setting(
        concern="model",
        default="auto",
        help="where each client trains: auto (CUDA when available), cpu, cuda, cuda:N or mps.",
        workbench=True,
    )
    server_device: str = setting(
        concern="federation",
        default="cpu",
        help="where the server aggregates: cpu, cuda, cuda:N or auto (CUDA when available).",
    )
    quantize: str = setting(
        concern="model",
        default="none",
        help="the frozen base in 4bit (NF4 with double quantisation, bf16 compute: QLoRA) or 8bit through bitsandbytes (pip install prelort[quant]), or none.",
        workbench=True,
    )
    gradient_checkpointing: bool = setting(
        concern="model",
        default=False,
        help="recompute the base's activations in the backward pass instead of keeping them (less memory, about a third more compute).",
        workbench=True,
    )
    client_memory: str | None = setting(
        concern="federation",
        default=None,
        help="memory budget of each client (4GB,8GB,16GB cycled over clients, or 4GB:0.5,16GB:0.5 sampled): each client gets the largest rank of --ranks whose measured peak training memory fits (see prelort plan-ranks); default: ranks as given.",
    )
    wire_dtype: str = setting(
        concern="federation",
        default="float32",
        help="number format of adapters sent between server and clients: float32, or bfloat16/float16 (half the bytes, every number rounded).",
    )
    seed: int = setting(
        concern="federation",
        default=0,
        help="the one seed of partitions, rank assignment, sampling and initialisation.",
    )
    text_field: str = setting(
        concern="data",
        default="text",
        help="column of a task file holding the classification text.",
        workbench=True,
    )
    label_field: str = setting(
        concern="data",
        default="label",
        help="column of a task file holding the class label.",
        workbench=True,
    )
    instruction_field: str = setting(
        concern="data",
        default="instruction",
        help="column of a task file holding the generation prompt.",
        workbench=True,
    )
    response_field: str = setting(
        concern="data",
        default="response",
        help="column of a task file holding the generation target.",
        workbench=True,
    )
    out: Path = setting(
        concern="outputs",
        default=Path("runs/simulate"),
        help="output folder.",
    )

    def __post_init__(self) -> None:
        from prelort.aggregation import get_method

        get_method(self.method)
        _positive(
            self,
            "clients",
            "rounds",
            "local_steps",
            "batch_size",
            "eval_every",
            "eval_examples",
            "max_new_tokens",
            "classes_per_client",
        )
        _positive_or_none(self, "max_rank", "clients_per_round", "max_length", "train_examples")
        if self.max_rank is not None and max(self.ranks.ranks) > self.max_rank:
            raise ConfigError(
                f"ranks: rank {max(self.ranks.ranks)} is above max_rank {self.max_rank}"
            )
        if self.clients_per_round is not None and self.clients_per_round > self.clients:
            raise ConfigError(
                f"clients_per_round: {self.clients_per_round} is more than clients={self.clients}"
            )
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed: must be in [0, 2^32), got {self.seed}")
        if self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr}")
        if self.head_lr is not None and self.head_lr <= 0:
            raise ConfigError(f"head_lr: must be > 0, got {self.head_lr}")
        if self.readout_examples < 0:
            raise ConfigError(f"readout_examples: must be >= 0, got {self.readout_examples}")
        if self.alpha is not None and self.alpha <= 0:
            raise ConfigError(f"alpha: must be > 0, got {self.alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout: must be in [0, 1), got {self.lora_dropout}")
        if self.dirichlet_alpha <= 0:
            raise ConfigError(f"dirichlet_alpha: must be > 0, got {self.dirichlet_alpha}")
        if not 0 <= self.client_failure_rate < 1:
            raise ConfigError(
                f"client_failure_rate: must be in [0, 1), got {self.client_failure_rate}"
            )
        if self.max_update_norm is not None and self.max_update_norm <= 0:
            raise ConfigError(f"max_update_norm: must be > 0, got {self.max_update_norm}")
        if self.dp_clip is not None and self.dp_clip <= 0:
            raise ConfigError(f"dp_clip: must be > 0, got {self.dp_clip}")
        if self.dp_noise < 0:
            raise ConfigError(f"dp_noise: must be >= 0, got {self.dp_noise}")
        if self.dp_delta is not None and not 0 < self.dp_delta < 1:
            raise ConfigError(f"dp_delta: must be in (0, 1), got {self.dp_delta}")
        if self.dp_target_epsilon is not None:
            if self.dp_target_epsilon <= 0:
                raise ConfigError(f"dp_target_epsilon: must be > 0, got {self.dp_target_epsilon}")
            if self.dp_clip is None:
                raise ConfigError(
                    "dp_target_epsilon: needs dp_clip (the noise is calibrated to it)"
                )
            if self.dp_noise > 0:
                raise ConfigError("dp_target_epsilon: give it or dp_noise, not both")
        if self.dp_noise > 0 and self.dp_clip is None:
            raise ConfigError("dp_noise: needs dp_clip (the noise is calibrated to the clip norm)")
        if self.dp_clip is not None:
            get_method(self.method).sensitivity()  # MethodUnsupported names the method
        if self.secure_aggregation:
            self._check_secure_aggregation()
        if self.generate_examples < 0:
            raise ConfigError(f"generate_examples: must be >= 0, got {self.generate_examples}")
        _choice(self, "nested", NESTED_CHOICES, optional=True)
        _choice(self, "head", HEAD_CHOICES, optional=True)
        _choice(self, "optimizer", OPTIMIZER_CHOICES)
        _choice(self, "calibration", CALIBRATION_CHOICES)
        _choice(self, "classifier", CLASSIFIER_CHOICES)
        _choice(self, "partition", PARTITION_CHOICES)
        _choice(self, "dtype", DTYPE_CHOICES)
        _choice(self, "wire_dtype", WIRE_DTYPE_CHOICES)
        _choice(self, "quantize", QUANTIZE_CHOICES)
        check_device_name("device", self.device)
        check_device_name("server_device", self.server_device)
        if self.server_device == "mps":
            raise ConfigError(
                "server_device: mps cannot run the aggregation rules, which keep float64 weights "
                "(use cpu or cuda)"
            )
        if self.client_memory is not None:
            parse_budgets(self.client_memory)

    def _check_secure_aggregation(self) -> None:
        from prelort.aggregation import get_method

        if not self.secure_range > 0:
            raise ConfigError(f"secure_range: must be > 0, got {self.secure_range}")
        get_method(self.method).secure_rule()  # MethodUnsupported names the method
        if self.dp_clip is not None:
            raise ConfigError(
                "secure_aggregation: not with dp_clip; the server-side DP clips each client's "
                "update, which secure aggregation hides from the server"
            )
        if self.wire_dtype != "float32":
            raise ConfigError(
                "secure_aggregation: needs wire_dtype float32 (SecAgg+ sends quantised integers)"
            )
        if self.calibration != "none":
            raise ConfigError(
                "secure_aggregation: not with calibration; the calibration round sends each "
                "client's class statistics in the clear"
            )
        if (self.clients_per_round or self.clients) < 2:
            raise ConfigError(
                "secure_aggregation: needs at least 2 clients per round (a sum of one update "
                "is the update)"
            )

    @property
    def resolved_max_rank(self) -> int:
        return self.max_rank or max(self.ranks.ranks)

    @property
    def resolved_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.resolved_max_rank

    @property
    def resolved_nested(self) -> str:
        from prelort.aggregation import get_method

        return self.nested or get_method(self.method).nested

    @property
    def resolved_head(self) -> str:
        from prelort.aggregation import get_method

        return self.head or get_method(self.method).head

    @property
    def dp_sample_rate(self) -> float:
        """q, the share of clients sampled each round (the accountant's sampling rate)."""
        return (self.clients_per_round or self.clients) / self.clients

    @property
    def resolved_dp_delta(self) -> float:
        from prelort.aggregation.budget import default_delta

        return self.dp_delta if self.dp_delta is not None else default_delta(self.clients)

    @property
    def resolved_dp_noise(self) -> float:
        """σ: ``dp_noise``, or the σ that reaches ``dp_target_epsilon`` after the last round."""
        if self.dp_target_epsilon is None:
            return self.dp_noise
        from prelort.aggregation.budget import noise_for_epsilon

        return noise_for_epsilon(
            self.dp_target_epsilon, self.dp_sample_rate, self.rounds, self.resolved_dp_delta
        )

    @property
    def resolved_head_lr(self) -> float:
        if self.head_lr is not None:
            return self.head_lr
        return self.lr * (HEAD_LR_FACTOR if self.optimizer == "adamw" else 1.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings, with the defaults that depend on others filled in."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, RankSpec | Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        out["max_rank"] = self.resolved_max_rank
        out["alpha"] = self.resolved_alpha
        out["nested"] = self.resolved_nested
        out["head"] = self.resolved_head
        out["head_lr"] = self.resolved_head_lr
        if self.dp_clip is not None:
            out["dp_delta"] = self.resolved_dp_delta
            if self.dp_target_epsilon is not None:
                out["dp_noise"] = self.resolved_dp_noise
                out["dp_target_epsilon"] = None  # a resumed run keeps the resolved dp_noise
        return out

    def replace(self, **changes: Any) -> SimulationConfig:
        return config_from_mapping({**_raw(self), **changes})


def _raw(config: SimulationConfig) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def _positive(config: SimulationConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value < 1:
            raise ConfigError(f"{name}: must be >= 1, got {value}")


def _positive_or_none(config: SimulationConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ConfigError(f"{name}: must be >= 1, got {value}")


def _choice(
    config: SimulationConfig, name: str, choices: tuple[str, ...], optional: bool = False
) -> None:
    value = getattr(config, name)
    if value is None and optional:
        return
    if value not in choices:
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(choices)}")


_FIELDS = {f.name: f for f in dataclasses.fields(SimulationConfig)}


def _absolute_if_local(value: str, name: str) -> str:
    """A task file or model folder as an absolute path, so that a resumed run or another command
    started elsewhere finds it; names (packaged or hub ids) unchanged."""
    from prelort.models import PACKAGED_MODELS

    if name == "model" and value in PACKAGED_MODELS:
        return value
    path = Path(value).expanduser()
    is_file_task = name == "task" and value.endswith((".jsonl", ".csv"))
    looks_local = value.startswith((".", "/", "~")) or is_file_task
    if looks_local or (name == "model" and path.is_dir()):
        return str(path.resolve())
    return value


def _coerce(name: str, value: Any) -> Any:
    """Turn a TOML or command-line value into the field's type."""
    if name == "ranks":
        return value if isinstance(value, RankSpec) else parse_ranks(value)
    if name == "target_modules":
        return _names(value)
    if name == "out":
        return Path(value)
    if name in ("task", "model") and isinstance(value, str):
        return _absolute_if_local(value, name)
    if name == "client_memory":
        if value is None or value == "":
            return None
        return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    annotation = str(_FIELDS[name].type)
    if value is None:
        if "None" in annotation:
            return None
        raise ConfigError(f"{name}: a value is required")
    try:
        if annotation.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if annotation.startswith("float"):
            number = float(value)
            if not math.isfinite(number):
                raise ConfigError(f"{name}: must be a finite number, got {value!r}")
            return number
        if annotation.startswith("bool"):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name}: cannot read {value!r} as {annotation}") from None
    return str(value)


def config_from_mapping(values: Mapping[str, Any]) -> SimulationConfig:
    """Validate a mapping of settings (dashes or underscores) into a ``SimulationConfig``.

    Raises:
        ConfigError: an unknown key or a bad value; the message names it.
    """
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in _FIELDS:
            raise ConfigError(f"{key}: unknown setting; valid settings are {', '.join(_FIELDS)}")
        kwargs[name] = _coerce(name, value)
    return SimulationConfig(**kwargs)


def read_toml(path: Path) -> dict[str, Any]:
    """The settings of a TOML file: its ``[simulate]`` table if present, else the top level.

    Raises:
        ConfigError: a missing or unreadable file.
    """
    if not path.is_file():
        raise ConfigError(f"config: file not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config: {path} is not valid TOML: {e}") from None
    return dict(data.get("simulate", data))


def load_config(path: Path | None, overrides: Mapping[str, Any]) -> SimulationConfig:
    """Settings from a TOML file (if any) with non-None ``overrides`` on top."""
    values = read_toml(path) if path is not None else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_mapping(values)


def toml_value(value: Any) -> str:
    """A scalar as TOML: booleans and numbers as such, anything else a basic (JSON) string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def flat_settings(config: SimulationConfig) -> dict[str, Any]:
    """The resolved settings as TOML scalars (lists as comma strings; unset ones left out): what
    ``--print-config`` prints and what travels as Flower's run config."""
    flat: dict[str, Any] = {}
    for key, value in config.to_dict().items():
        if value is None:
            continue
        flat[key] = ",".join(map(str, value)) if isinstance(value, list) else value
    return flat


def to_toml(config: SimulationConfig) -> str:
    """The resolved settings as a ``[simulate]`` table that ``--config`` reads back, grouped by
    concern under comment lines (the table stays flat)."""
    flat = flat_settings(config)
    concern = {f.name: f.metadata["concern"] for f in dataclasses.fields(SimulationConfig)}
    lines = ["[simulate]"]
    for key, title in CONCERNS.items():
        group = [f"{k} = {toml_value(v)}" for k, v in flat.items() if concern[k] == key]
        if group:
            lines += [f"# {title}", *group]
    return "\n".join(lines) + "\n"
