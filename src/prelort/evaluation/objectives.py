"""How a task is learnt and scored: a classifier head, a verbalised label, or free generation.

The run asks its ``TaskObjective`` what model to load, how long an example is, what a training
batch holds and how a tier is scored, instead of comparing the objective's name in each place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from prelort.adapters.inject import NestedLoRAModel
from prelort.data.encoding import IGNORE, EncodedSplit, causal_batch, prompt_batch
from prelort.data.tasks import CLASSIFICATION, GENERATION
from prelort.device import to_device
from prelort.evaluation.choices import choice_predictions
from prelort.evaluation.metrics import accuracy, correct, perplexity, rouge_l_scores
from prelort.evaluation.readout import head_outputs, readout_accuracy

SAMPLES = 5  # generations kept per tier (samples.json), to read beside the ROUGE-L figure


@dataclass(frozen=True)
class ReadoutData:
    """Training rows for the refitted-readout diagnostic (``prelort.evaluation.readout``)."""

    train: EncodedSplit
    rows: list[int]
    classes: int


@dataclass(frozen=True)
class EvalInputs:
    """What a tier is scored on.

    Attributes:
        data: the test split (every metric that is a mean over its examples).
        tokenizer: the model's tokenizer (padding, decoding generations).
        batch_size: examples per forward pass.
        generation: prompts whose greedy completions get ROUGE-L (generation objective); None
            or empty skips generating.
        max_new_tokens: the length limit of those completions.
        readout: also score a readout refitted on the tier's features (head objective).
    """

    data: EncodedSplit
    tokenizer: Any
    batch_size: int = 32
    generation: EncodedSplit | None = None
    max_new_tokens: int = 24
    readout: ReadoutData | None = None


@dataclass
class TierScore:
    """What scoring one tier gives.

    Attributes:
        metrics: ``{"<metric>": value}``.
        per_example: each test example's score per metric that is a mean over examples
            (accuracy 0/1, ROUGE-L F1, NLL per target token), in the order of the test split:
            what paired comparisons resample.
        samples: the first ``SAMPLES`` generations (prompt, reference, output), where ROUGE-L ran.
        head_inputs: (n, hidden) features the classifier head read (head objective), which the
            calibration round's heads are scored on without another forward.
    """

    metrics: dict[str, float]
    per_example: dict[str, list[float]] = field(default_factory=dict)
    samples: list[dict[str, str]] = field(default_factory=list)
    head_inputs: torch.Tensor | None = None


@dataclass(frozen=True)
class TaskObjective:
    """One way of learning a task.

    Attributes:
        name: "head", "verbalized" or "generation" (settings, logs).
        model_kind: what the model loads as: CLASSIFICATION (with a head) or GENERATION.
        max_length: default tokens per example (a verbalised prompt also lists the labels).
        trains_head: a fresh classifier head is trained (readout, per-tier heads, calibration).
        verbalized: class labels are written as text by a causal LM.
    """

    name: str
    model_kind: str
    max_length: int
    trains_head: bool = False
    verbalized: bool = False

    @property
    def batch_kind(self) -> str:
        """The kind of training batch: class labels for a head, prompt + target otherwise."""
        return CLASSIFICATION if self.trains_head else GENERATION

    def score(self, adapted: NestedLoRAModel, inputs: EvalInputs) -> TierScore:
        """The scores of the model as it stands (one tier)."""
        raise NotImplementedError


@dataclass(frozen=True)
class HeadObjective(TaskObjective):
    """A classifier head on the model's features: ``accuracy``, and ``readout_accuracy``."""

    def score(self, adapted: NestedLoRAModel, inputs: EvalInputs) -> TierScore:
        data, pad_id = inputs.data, inputs.tokenizer.pad_token_id
        # One forward gives the head's predictions and the features its readout is scored on.
        outputs = head_outputs(adapted, data, range(len(data)), pad_id, inputs.batch_size)
        predictions = outputs.logits.argmax(-1).tolist()
        metrics = {"accuracy": accuracy(predictions, data.labels)}
        if inputs.readout is not None:
            metrics["readout_accuracy"] = readout_accuracy(
                adapted,
                inputs.readout.train,
                inputs.readout.rows,
                outputs.features,
                data.labels,
                inputs.readout.classes,
                pad_id,
                inputs.batch_size,
            )
        return TierScore(
            metrics,
            per_example={"accuracy": correct(predictions, data.labels)},
            head_inputs=outputs.features,
        )


@dataclass(frozen=True)
class VerbalizedObjective(TaskObjective):
    """A causal LM writes the label: ``accuracy`` of the likeliest label."""

    def score(self, adapted: NestedLoRAModel, inputs: EvalInputs) -> TierScore:
        data = inputs.data
        with adapted.autocast():
            predictions = choice_predictions(
                adapted, data, inputs.tokenizer.pad_token_id, inputs.batch_size
            )
        return TierScore(
            {"accuracy": accuracy(predictions, data.labels)},
            per_example={"accuracy": correct(predictions, data.labels)},
        )


@dataclass(frozen=True)
class GenerationObjective(TaskObjective):
    """Free text: ``perplexity`` of the references, ``rouge_l`` of greedy completions."""

    def score(self, adapted: NestedLoRAModel, inputs: EvalInputs) -> TierScore:
        tokenizer, nll = inputs.tokenizer, []
        score = TierScore(
            {
                "perplexity": causal_perplexity(
                    adapted, inputs.data, tokenizer.pad_token_id, inputs.batch_size, nll
                )
            },
            per_example={"nll": nll},
        )
        prompts = inputs.generation
        if prompts is None or not len(prompts):
            return score
        predictions = generate(
            adapted, tokenizer, prompts, inputs.batch_size, inputs.max_new_tokens
        )
        references = prompts.references or []
        rouge = rouge_l_scores(predictions, references)
        score.metrics["rouge_l"] = sum(rouge) / len(rouge)
        score.per_example["rouge_l"] = rouge
        score.samples = [
            {
                "prompt": tokenizer.decode(ids, skip_special_tokens=True),
                "reference": reference,
                "output": output,
            }
            for ids, reference, output in zip(
                prompts.input_ids[:SAMPLES],
                references[:SAMPLES],
                predictions[:SAMPLES],
                strict=True,
            )
        ]
        return score


HEAD = HeadObjective("head", CLASSIFICATION, 64, trains_head=True)
VERBALIZED = VerbalizedObjective("verbalized", GENERATION, 128, verbalized=True)
GENERATIVE = GenerationObjective("generation", GENERATION, 160)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield list(range(start, min(n, start + size)))


@torch.inference_mode()
def causal_perplexity(
    adapted: NestedLoRAModel,
    data: EncodedSplit,
    pad_id: int,
    batch_size: int,
    per_example_nll: list[float] | None = None,
) -> float:
    """Perplexity of the reference targets given their prompts (one corpus-level figure).

    ``per_example_nll`` receives each example's mean NLL per target token: perplexity is a ratio
    over the whole corpus, so it has no per-example score, while differences of these means can be
    resampled example by example (``prelort.simulation.paired``).
    """
    total, count = 0.0, 0
    for idx in _chunks(len(data), batch_size):
        batch = to_device(causal_batch(data, idx, pad_id), adapted.device)
        with adapted.autocast():
            logits = adapted.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        labels = batch["labels"][:, 1:]  # token t is predicted at position t - 1
        token_nll = F.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none"
        )
        targets = (labels != IGNORE).sum(dim=1)
        total += float(token_nll.sum())
        count += int(targets.sum())
        if per_example_nll is not None:
            per_example_nll += (token_nll.sum(dim=1) / targets.clamp(min=1)).tolist()
    return perplexity(total, count)


@torch.inference_mode()
def generate(
    adapted: NestedLoRAModel, tokenizer, data: EncodedSplit, batch_size: int, max_new_tokens: int
) -> list[str]:
    """Greedy completions of the prompts."""
    outputs: list[str] = []
    for idx in _chunks(len(data), batch_size):
        batch = to_device(prompt_batch(data, idx, tokenizer.pad_token_id), adapted.device)
        with adapted.autocast():
            tokens = adapted.model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        new = tokens[:, batch["input_ids"].shape[1] :]
        outputs += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return outputs
