"""How a task is learnt and scored: a classifier head, a verbalised label, or free generation.

The run asks its ``TaskObjective`` what model to load, how long an example is, what a training
batch holds and how a tier is scored, instead of comparing the objective's name in each place.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def score(
        self,
        adapted: NestedLoRAModel,
        data: EncodedSplit,
        tokenizer,
        batch_size: int,
        readout: ReadoutData | None = None,
        generation_data: EncodedSplit | None = None,
        max_new_tokens: int = 24,
        samples: list[dict[str, str]] | None = None,
        per_example: dict[str, list[float]] | None = None,
        features: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """The metrics of the model as it stands (one tier); ``samples`` receives generations,
        ``per_example`` each example's score per metric that is a mean over examples, and
        ``features`` (head objective) ``"head_input"``: the (n, hidden) features the head read."""
        raise NotImplementedError


@dataclass(frozen=True)
class HeadObjective(TaskObjective):
    """A classifier head on the model's features: ``accuracy``, and ``readout_accuracy``."""

    def score(
        self,
        adapted: NestedLoRAModel,
        data: EncodedSplit,
        tokenizer,
        batch_size: int,
        readout: ReadoutData | None = None,
        generation_data: EncodedSplit | None = None,
        max_new_tokens: int = 24,
        samples: list[dict[str, str]] | None = None,
        per_example: dict[str, list[float]] | None = None,
        features: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, float]:
        pad_id = tokenizer.pad_token_id
        # One forward gives the head's predictions and the features its readout is scored on.
        outputs = head_outputs(adapted, data, range(len(data)), pad_id, batch_size)
        predictions = outputs.logits.argmax(-1).tolist()
        metrics = {"accuracy": accuracy(predictions, data.labels)}
        if features is not None:
            features["head_input"] = outputs.features
        if per_example is not None:
            per_example["accuracy"] = correct(predictions, data.labels)
        if readout is not None:
            metrics["readout_accuracy"] = readout_accuracy(
                adapted,
                readout.train,
                readout.rows,
                outputs.features,
                data.labels,
                readout.classes,
                pad_id,
                batch_size,
            )
        return metrics


@dataclass(frozen=True)
class VerbalizedObjective(TaskObjective):
    """A causal LM writes the label: ``accuracy`` of the likeliest label."""

    def score(
        self,
        adapted: NestedLoRAModel,
        data: EncodedSplit,
        tokenizer,
        batch_size: int,
        readout: ReadoutData | None = None,
        generation_data: EncodedSplit | None = None,
        max_new_tokens: int = 24,
        samples: list[dict[str, str]] | None = None,
        per_example: dict[str, list[float]] | None = None,
        features: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, float]:
        with adapted.autocast():
            predictions = choice_predictions(adapted, data, tokenizer.pad_token_id, batch_size)
        if per_example is not None:
            per_example["accuracy"] = correct(predictions, data.labels)
        return {"accuracy": accuracy(predictions, data.labels)}


@dataclass(frozen=True)
class GenerationObjective(TaskObjective):
    """Free text: ``perplexity`` of the references, ``rouge_l`` of greedy completions."""

    def score(
        self,
        adapted: NestedLoRAModel,
        data: EncodedSplit,
        tokenizer,
        batch_size: int,
        readout: ReadoutData | None = None,
        generation_data: EncodedSplit | None = None,
        max_new_tokens: int = 24,
        samples: list[dict[str, str]] | None = None,
        per_example: dict[str, list[float]] | None = None,
        features: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, float]:
        nll: list[float] | None = None
        if per_example is not None:
            nll = per_example["nll"] = []
        metrics = {
            "perplexity": causal_perplexity(
                adapted, data, tokenizer.pad_token_id, batch_size, per_example_nll=nll
            )
        }
        if generation_data is None or not len(generation_data):
            return metrics
        predictions = generate(adapted, tokenizer, generation_data, batch_size, max_new_tokens)
        references = generation_data.references or []
        scores = rouge_l_scores(predictions, references)
        metrics["rouge_l"] = sum(scores) / len(scores)
        if per_example is not None:
            per_example["rouge_l"] = scores
        if samples is not None:
            samples.extend(
                {
                    "prompt": tokenizer.decode(ids, skip_special_tokens=True),
                    "reference": reference,
                    "output": output,
                }
                for ids, reference, output in zip(
                    generation_data.input_ids[:SAMPLES],
                    references[:SAMPLES],
                    predictions[:SAMPLES],
                    strict=True,
                )
            )
        return metrics


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
