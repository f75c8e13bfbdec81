"""Every setting of a run, validated once into a frozen dataclass.

Settings come from a TOML file (``[simulate]`` table or top level) and command-line flags that
override it (``prelort.config.files``). Each field carries its help, its concern and its scope in
its metadata (``setting``); the checks live in ``prelort.config.checks``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prelort.config.checks import validate
from prelort.config.values import (
    AUTOCAST_DTYPE_CHOICES,
    CALIBRATION_CHOICES,
    CLASSIFIER_CHOICES,
    DTYPE_CHOICES,
    HEAD_CHOICES,
    HEAD_LR_FACTOR,
    LR_SCHEDULE_CHOICES,
    NESTED_CHOICES,
    OPTIMIZER_CHOICES,
    PARTITION_CHOICES,
    QUANTIZE_CHOICES,
    RECOMMENDED_METHOD,
    WIRE_DTYPE_CHOICES,
    RankSpec,
)

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


def setting(
    *,
    help: str,
    concern: str,
    choices: tuple[str, ...] = (),
    workbench: bool = False,
    resumable: bool = False,
    **default: Any,
) -> Any:
    """A ``SimulationConfig`` field: its default (``default=`` or ``default_factory=``), its help,
    its concern (a key of ``CONCERNS``), the words it may take (``choices``; checked by
    ``checks.check_choices``, None allowed where the default is None), whether it changes the
    loaded task or model (the workbench's cache key) and whether ``--resume`` may change it
    (``resumable``: only settings that leave the trained adapter as an uninterrupted run's)."""
    if concern not in CONCERNS:
        raise ValueError(f"unknown concern {concern!r}")
    metadata = {
        "help": " ".join(help.split()),
        "concern": concern,
        "choices": choices,
        "workbench": workbench,
        "resumable": resumable,
    }
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
        default=RECOMMENDED_METHOD,
        help=f"federated method: {RECOMMENDED_METHOD} (recommended: PreLort's rule, the adapter "
        "then kept in singular-value order), prelort (the paper's rule), or any of "
        "`prelort methods`.",
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
        resumable=True,
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
        choices=OPTIMIZER_CHOICES,
        default="adamw",
        help="adamw or sgd (momentum 0.9).",
    )
    lr_schedule: str = setting(
        concern="training",
        choices=LR_SCHEDULE_CHOICES,
        default="constant",
        help="the clients' step over the rounds: constant, or cosine (lr and head lr times "
        "(1 + cos(pi (t - 1) / rounds)) / 2 in round t: the full step in round 1, falling towards "
        "0 after the last round).",
    )
    head: str | None = setting(
        concern="model",
        choices=HEAD_CHOICES,
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
        choices=CLASSIFIER_CHOICES,
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
        choices=CALIBRATION_CHOICES,
        default="auto",
        help="after the last round, refit each tier's head in closed form (LDA) from every "
        "client's class statistics, one forward-only round (see prelort calibrate): lda, none, "
        "or auto (lda where a run can take it: a linear classifier head, no secure aggregation, "
        "no DP). Reported as calibrated_accuracy; calibrated.safetensors keeps the heads.",
    )
    calibration_examples: int = setting(
        concern="evaluation",
        default=2000,
        help="training examples the calibration round reads, over all clients, each client its "
        "share by examples (a seeded draw); 0: every example. A ceiling on the round's cost "
        "(measured: docs/RESULTS.md section 10).",
    )
    nested: str | None = setting(
        concern="training",
        choices=NESTED_CHOICES,
        default=None,
        help='prefix-nested training mode: "all" (every truncation up to the client\'s rank, each step), "sample" (one drawn per step), "split" (each on its share of the batch, the cost of a plain step) or "off"; default: the method\'s own.',
    )
    partition: str = setting(
        concern="data",
        choices=PARTITION_CHOICES,
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
        resumable=True,
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
        choices=DTYPE_CHOICES,
        default="auto",
        help="base model dtype: auto (bf16 on CUDA, fp32 on the CPU, the packaged model's own choice), float32, bfloat16, float16; adapters and their optimizer state are fp32 whatever this is.",
        workbench=True,
    )
    train_dtype: str = setting(
        concern="model",
        choices=AUTOCAST_DTYPE_CHOICES,
        default="auto",
        help="precision of the training steps: auto (that of dtype), or bfloat16 / float16: the "
        "training forwards and backwards run under autocast to it while the frozen base keeps "
        "dtype, so the scoring forwards keep dtype's precision unless eval_dtype says otherwise; "
        "bfloat16-if-native: bfloat16 on CUDA and on CPUs with AVX512-BF16 or AMX, auto on others, "
        "where bf16 is emulated and slower (docs/PERFORMANCE.md section 6).",
        workbench=True,
    )
    eval_dtype: str = setting(
        concern="model",
        choices=AUTOCAST_DTYPE_CHOICES,
        default="auto",
        help="precision of the scoring forwards (evaluation, the readout, the calibration round): "
        "auto (that of dtype), or bfloat16 / float16 under autocast over the base kept in dtype; "
        "residuals and norms stay in dtype, so the features the heads read are not those of a "
        "16-bit base (measured on the CPU: LDA heads unchanged; docs/PERFORMANCE.md section 6); "
        "bfloat16-if-native as for train_dtype.",
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
        choices=QUANTIZE_CHOICES,
        default="none",
        help="the frozen base in 4bit (NF4 with double quantisation, bf16 compute: QLoRA; fp32 compute on a CPU without native bf16) or 8bit through bitsandbytes (pip install prelort[quant]), or none.",
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
        choices=WIRE_DTYPE_CHOICES,
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
        validate(self)

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
        """A copy with ``changes``, validated again."""
        from prelort.config.files import config_from_mapping

        raw = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return config_from_mapping({**raw, **changes})
