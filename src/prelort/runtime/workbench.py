"""What a run needs before its first round: the task, the tokenised splits and the base model.

Loading is the slow part, so a comparison of several methods and seeds loads once and reuses the
workbench; every run starts from a freshly initialised adapter on the same frozen base.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass

import torch

from prelort.adapters.inject import NestedLoRAModel, inject_nested_lora
from prelort.config import SimulationConfig
from prelort.data.encoding import EncodedSplit, encode_split, verbalized_task
from prelort.data.tasks import CLASSIFICATION, GENERATION, FileFields, TaskData, load_task
from prelort.device import autocast_dtype, emulates_bf16
from prelort.errors import ConfigError
from prelort.evaluation.objectives import GENERATIVE, HEAD, VERBALIZED, TaskObjective
from prelort.io import file_sha256
from prelort.models import is_causal_lm, load_model, placement_for

log = logging.getLogger(__name__)

EVAL_SUBSET_SEED = 0  # one test subset, and one set of readout rows, for every method and seed


@dataclass
class Workbench:
    """A loaded task and model with nested LoRA layers of rank R injected.

    Attributes:
        task: the task's raw splits.
        train: the encoded training split (the pool partitioned over clients).
        test: the encoded evaluation subset.
        generation: the encoded subset scored by ROUGE-L (generation tasks; may be empty).
        adapted: the model with its nested layers.
        tokenizer: the model's tokenizer.
        key: the settings the workbench was built from; runs whose key matches can share it.
        objective: how the task is learnt and scored (``prelort.evaluation.objectives``).
        readout_rows: training rows for the refitted-readout diagnostic (head objective only).
        task_sha256: the SHA-256 of the task file (None for a packaged task).
    """

    task: TaskData
    train: EncodedSplit
    test: EncodedSplit
    generation: EncodedSplit | None
    adapted: NestedLoRAModel
    tokenizer: object
    key: tuple
    objective: TaskObjective = HEAD
    readout_rows: list[int] = dataclasses.field(default_factory=list)
    task_sha256: str | None = None

    @property
    def batch_kind(self) -> str:
        """The kind of training batch: class labels for a head, prompt + target otherwise."""
        return self.objective.batch_kind


def workbench_key(config: SimulationConfig) -> tuple:
    """The settings a loaded workbench depends on: every field marked ``workbench`` (with R and
    alpha resolved), so that a new such field can never reuse a stale workbench."""
    fields = dataclasses.fields(config)
    return tuple(
        (f.name, resolved_value(config, f.name)) for f in fields if f.metadata.get("workbench")
    )


def resolved_value(config: SimulationConfig, name: str) -> object:
    """A setting as a run uses it: ``resolved_<name>`` where the config defines one (R, alpha,
    nested, head...), so a default left None and the same value spelt out compare equal."""
    resolved = getattr(config, "resolved_" + name, None)
    return getattr(config, name) if resolved is None else resolved


def eval_subset(n: int, size: int) -> list[int]:
    """The rows of a split of ``n`` a run takes when it asks for ``size`` (its test examples, its
    generation prompts, its readout's training rows): all, or a sample drawn with a fixed seed, the
    same for every run and seed, so that runs are scored on the same examples."""
    if size >= n:
        return list(range(n))
    return sorted(random.Random(EVAL_SUBSET_SEED).sample(range(n), size))


def scored_rows(
    task: TaskData, config: SimulationConfig, held_out: bool = False
) -> tuple[list[int], list[int]]:
    """The rows of ``task``'s test split a run of ``config`` scores, and those it prompts to generate
    (none on classification).

    With ``held_out``, the rows such a run never scored (outside both its evaluation sample and its
    generation prompts), with at most the run's count of prompts drawn among them: where a setting
    such as the step was chosen by a run's own test scores, examples the choice has not seen.

    Raises:
        ConfigError: ``held_out`` where the run scored the whole split, so nothing is held out.
    """
    n = len(task.test)
    generates = task.kind != CLASSIFICATION and config.generate_examples > 0
    prompts = eval_subset(n, config.generate_examples) if generates else []
    scored = eval_subset(n, config.eval_examples)
    if not held_out:
        return scored, prompts
    seen = set(scored) | set(prompts)
    unseen = [i for i in range(n) if i not in seen]
    if not unseen:
        raise ConfigError(f"held-out: the run scored all {n} test examples; none is held out")
    if generates:
        prompts = [unseen[i] for i in eval_subset(len(unseen), config.generate_examples)]
    return unseen, prompts


def load_config_task(config: SimulationConfig) -> TaskData:
    """The task a config names, a user's file read with the config's field names.

    Raises:
        ConfigError, DataError: an unknown task, or a missing or malformed file.
    """
    fields = FileFields(
        config.text_field, config.label_field, config.instruction_field, config.response_field
    )
    return load_task(config.task, fields)


def build_workbench(config: SimulationConfig, held_out: bool = False) -> Workbench:
    """Load the task and model of a config and inject nested LoRA layers of rank R.

    ``held_out`` scores the test rows a run of ``config`` never scored (``scored_rows``), to re-score
    a finished run's adapter.

    Raises:
        ConfigError, DataError, ModelError: an unknown task or model, or missing packages/files;
            ``held_out`` where no test row is left.
    """
    task = load_config_task(config)
    objective = resolve_objective(config, task)
    if objective.verbalized:
        task = verbalized_task(task)
    scored, prompts = scored_rows(task, config, held_out)
    placement = placement_for(
        config.model, config.device, config.dtype, config.quantize, config.gradient_checkpointing
    )
    loaded = load_model(config.model, objective.model_kind, task.num_labels, placement=placement)
    max_length = config.max_length or objective.max_length
    tokenizer = loaded.tokenizer
    verbalized = objective.verbalized
    train = encode_split(tokenizer, task, task.train, max_length, verbalized=verbalized)
    test = encode_split(tokenizer, task, task.test.take(scored), max_length, verbalized=verbalized)
    generation = None
    if prompts:
        generation = encode_split(tokenizer, task, task.test.take(prompts), max_length)
    adapted = inject_nested_lora(
        loaded.model,
        max_rank=config.resolved_max_rank,
        alpha=config.resolved_alpha,
        target_modules=config.target_modules,
        dropout=config.lora_dropout,
        train_head=objective.trains_head,
        head_dtype=torch.float32 if placement.autocast_dtype is not None else None,
    )
    adapted.autocast_dtype = placement.autocast_dtype
    adapted.train_autocast_dtype = autocast_dtype(config.train_dtype, placement.device)
    adapted.eval_autocast_dtype = autocast_dtype(config.eval_dtype, placement.device)
    for name, dtype in (
        ("train_dtype", adapted.train_autocast_dtype),
        ("eval_dtype", adapted.eval_autocast_dtype),
    ):
        if emulates_bf16(placement.device, dtype):
            log.warning(
                "%s: bfloat16 forwards on a CPU without native bf16 (AVX512-BF16 or AMX) are "
                "emulated and may be slower than %s auto",
                name,
                name,
            )
    readout_rows = eval_subset(len(train), config.readout_examples) if objective.trains_head else []
    log.info(
        "workbench: task %s (%s train, %d test), model %s on %s (%s%s), %d nested layers of rank %d",
        task.name,
        len(train)
        if config.train_examples is None or config.train_examples >= len(train)
        else f"{config.train_examples} of {len(train)}",
        len(test),
        config.model,
        placement.device,
        str(placement.dtype).removeprefix("torch."),
        "" if placement.quantize == "none" else f", {placement.quantize}",
        len(adapted.layers),
        adapted.max_rank,
    )
    return Workbench(
        task,
        train,
        test,
        generation,
        adapted,
        tokenizer,
        # a held-out workbench scores other rows: never shared with the config's own runs
        workbench_key(config) + ((("held_out", True),) if held_out else ()),
        objective,
        readout_rows,
        file_sha256(config.task),
    )


def resolve_objective(config: SimulationConfig, task: TaskData) -> TaskObjective:
    """How the task is learnt: generation, a classifier head, or a verbalised label.

    ``auto`` gives a causal LM verbalised labels (no fresh head: the paper's setting) and an encoder
    a head.

    Raises:
        ConfigError: a generation task or a verbalised classifier asked of a model that is not a
            causal LM.
    """
    causal = is_causal_lm(config.model)
    if task.kind == GENERATION:
        if not causal:
            raise ConfigError(
                f"model: task {task.name!r} writes text, which needs a causal language model; "
                f"{config.model!r} is an encoder (use --model smollm2-135m, or a Llama, Qwen, "
                "Mistral, Gemma or Phi folder or hub id)"
            )
        return GENERATIVE
    if config.classifier == HEAD.name:
        return HEAD
    if config.classifier == VERBALIZED.name and not causal:
        raise ConfigError(
            f"classifier: verbalized needs a causal LM; {config.model!r} is not one (use head)"
        )
    return VERBALIZED if causal else HEAD
