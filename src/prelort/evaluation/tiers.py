"""Evaluating one global adapter truncated at every rank tier."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prelort.adapters.inject import NestedLoRAModel
from prelort.adapters.state import set_state
from prelort.data.encoding import (
    IGNORE,
    EncodedSplit,
    causal_batch,
    prompt_batch,
)
from prelort.device import to_device
from prelort.evaluation.choices import choice_accuracy
from prelort.evaluation.metrics import accuracy, perplexity, rouge_l
from prelort.evaluation.readout import head_outputs, readout_accuracy

TierMetrics = dict[str, dict[str, float]]

SAMPLES = 5  # generations kept per tier (samples.json), to read beside the ROUGE-L figure

# How a task is learnt and scored: a classifier head, a verbalised label, or free generation.
HEAD, VERBALIZED = "head", "verbalized"


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield list(range(start, min(n, start + size)))


@torch.inference_mode()
def causal_perplexity(
    adapted: NestedLoRAModel, data: EncodedSplit, pad_id: int, batch_size: int
) -> float:
    """Perplexity of the reference targets given their prompts."""
    total, count = 0.0, 0
    for idx in _chunks(len(data), batch_size):
        batch = to_device(causal_batch(data, idx, pad_id), adapted.device)
        with adapted.autocast():
            logits = adapted.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        labels = batch["labels"][:, 1:]  # token t is predicted at position t - 1
        nll = F.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="sum"
        )
        total += float(nll)
        count += int((labels != IGNORE).sum())
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


@dataclass(frozen=True)
class ReadoutData:
    """Training rows for the refitted-readout diagnostic (``prelort.evaluation.readout``)."""

    train: EncodedSplit
    rows: list[int]
    classes: int


def evaluate_tiers(
    adapted: NestedLoRAModel,
    global_state: Mapping[str, torch.Tensor],
    tiers: Sequence[int],
    objective: str,
    data: EncodedSplit,
    tokenizer,
    batch_size: int = 32,
    generation_data: EncodedSplit | None = None,
    max_new_tokens: int = 24,
    readout: ReadoutData | None = None,
    same_at_every_tier: bool = False,
    samples: dict[str, list[dict[str, str]]] | None = None,
) -> TierMetrics:
    """Metrics of the global adapter truncated at each tier rank.

    Args:
        objective: "head" (a classifier head: ``accuracy``), "verbalized" (a causal LM writes
            the label: ``accuracy`` of the likeliest label) or "generation" (``perplexity``, and
            ``rouge_l`` of greedy completions when ``generation_data`` is given).
        readout: also report ``readout_accuracy``, a readout refitted on each tier's features.
        same_at_every_tier: the model is the same at every tier (no adapter, one head): evaluate
            once and report it for every tier.
        samples: filled with the first ``SAMPLES`` generations per tier (prompt, reference,
            output) when ROUGE-L is computed.

    Returns:
        ``{"<rank>": {"<metric>": value}}``.
    """
    set_state(adapted, global_state)
    adapted.model.eval()
    pad_id = tokenizer.pad_token_id
    results: TierMetrics = {}
    for tier in tiers:
        if same_at_every_tier and results:
            results[str(tier)] = dict(next(iter(results.values())))
            continue
        adapted.set_active_rank(tier)
        if objective == HEAD:
            # One forward gives the head's predictions and the features its readout is scored on.
            outputs = head_outputs(adapted, data, range(len(data)), pad_id, batch_size)
            metrics = {"accuracy": accuracy(outputs.logits.argmax(-1).tolist(), data.labels)}
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
        elif objective == VERBALIZED:
            with adapted.autocast():
                metrics = {"accuracy": choice_accuracy(adapted, data, pad_id, batch_size)}
        else:
            metrics = {"perplexity": causal_perplexity(adapted, data, pad_id, batch_size)}
            if generation_data is not None and len(generation_data):
                predictions = generate(
                    adapted, tokenizer, generation_data, batch_size, max_new_tokens
                )
                references = generation_data.references or []
                metrics["rouge_l"] = rouge_l(predictions, references)
                if samples is not None:
                    samples[str(tier)] = [
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
                    ]
        results[str(tier)] = metrics
    return results
