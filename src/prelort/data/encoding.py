"""Tokenising a split once, and padding batches of it.

Causal-LM examples are ``prompt + target + eos`` with the loss on the target tokens only. SmolLM2's
pad token is its eos token, so the label mask comes from the prompt length and the attention mask,
never from comparing ids with the pad id (that would also mask the eos the model must learn).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prelort.data.tasks import CLASSIFICATION, Split, TaskData
from prelort.errors import DataError

IGNORE = -100
PLACEHOLDER = "\x00TEXT\x00"


@dataclass(frozen=True)
class EncodedSplit:
    """Token ids per example.

    Attributes:
        input_ids: classifier input, or the causal prompt (without the target).
        labels: class ids (classification) or group ids.
        target_ids: the causal target ending in eos (generation only).
        references: the target strings, for ROUGE (generation only).
        choices: per class, the token ids of its verbalised label ending in eos (verbalised
            classification: a causal LM writes the label; accuracy picks the likeliest choice).
    """

    input_ids: list[list[int]]
    labels: list[int]
    target_ids: list[list[int]] | None = None
    references: list[str] | None = None
    choices: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


def _prompt_parts(tokenizer, template: str) -> tuple[list[int], list[int]]:
    """Token ids before and after the text slot of the chat-formatted prompt."""
    content = template.replace("{text}", PLACEHOLDER)
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    else:
        rendered = content + "\nAnswer:"
    before, _, after = rendered.partition(PLACEHOLDER)
    return (
        tokenizer(before, add_special_tokens=False)["input_ids"],
        tokenizer(after, add_special_tokens=False)["input_ids"],
    )


VERBALIZED_PROMPT = (
    "Classify the text. Answer with one of these labels only: {labels}.\n\nText: {text}"
)


def verbalized_task(task: TaskData) -> TaskData:
    """A classification task rewritten for a causal LM: the prompt lists the labels, the target is
    the label's name. Class ids stay the labels (they drive partitions and accuracy)."""
    prompt = VERBALIZED_PROMPT.replace("{labels}", ", ".join(task.label_names))
    return dataclasses.replace(task, prompt=prompt)


def encode_split(
    tokenizer,
    task: TaskData,
    split: Split,
    max_length: int,
    max_target_length: int = 32,
    verbalized: bool = False,
) -> EncodedSplit:
    """Tokenise a split: truncated classifier inputs, or prompt/target pairs within ``max_length``.

    With ``verbalized`` a classification split becomes prompt/target pairs whose target is the
    class name (``verbalized_task`` gives the prompt), plus the candidate ``choices``.
    """
    if task.kind == CLASSIFICATION and not verbalized:
        ids = tokenizer(split.texts, truncation=True, max_length=max_length)["input_ids"]
        return EncodedSplit(ids, list(split.labels))
    choices = None
    if task.kind == CLASSIFICATION:
        eos = [tokenizer.eos_token_id]
        choices = [
            tokenizer(name, add_special_tokens=False)["input_ids"][: max_target_length - 1] + eos
            for name in task.label_names
        ]
        if len({tuple(c) for c in choices}) < len(choices):
            raise DataError(
                f"task {task.name}: two labels have the same tokens: {task.label_names}"
            )
        split = Split(split.texts, split.labels, [task.label_names[y] for y in split.labels])
    if split.targets is None:
        raise ValueError("a generation split needs targets")
    before, after = _prompt_parts(tokenizer, task.prompt)
    eos = [tokenizer.eos_token_id]
    text_ids = tokenizer(split.texts, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer([t.strip() for t in split.targets], add_special_tokens=False)[
        "input_ids"
    ]
    prompts, targets = [], []
    for text, target in zip(text_ids, target_ids, strict=True):
        target = target[: max_target_length - 1] + eos
        budget = max(1, max_length - len(before) - len(after) - len(target))
        prompts.append(before + text[:budget] + after)
        targets.append(target)
    return EncodedSplit(prompts, list(split.labels), targets, list(split.targets), choices)


def classification_batch(
    enc: EncodedSplit, idx: Sequence[int], pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-padded inputs and class labels for rows ``idx``."""
    rows = [enc.input_ids[i] for i in idx]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        input_ids[j, : len(r)] = torch.tensor(r)
        mask[j, : len(r)] = 1
    labels = torch.tensor([enc.labels[i] for i in idx], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def causal_batch(enc: EncodedSplit, idx: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``prompt + target`` rows; labels are IGNORE outside the target tokens."""
    if enc.target_ids is None:
        raise ValueError("causal batches need target_ids")
    rows = [(enc.input_ids[i], enc.target_ids[i]) for i in idx]
    width = max(len(p) + len(t) for p, t in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for j, (p, t) in enumerate(rows):
        n = len(p) + len(t)
        input_ids[j, :n] = torch.tensor(p + t)
        mask[j, :n] = 1
        labels[j, len(p) : n] = torch.tensor(t)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def prompt_batch(enc: EncodedSplit, idx: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts for batched generation."""
    rows = [enc.input_ids[i] for i in idx]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        input_ids[j, width - len(r) :] = torch.tensor(r)
        mask[j, width - len(r) :] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def make_batch(
    kind: str, enc: EncodedSplit, idx: Sequence[int], pad_id: int
) -> dict[str, torch.Tensor]:
    """A training batch: class labels for a classifier head, else prompt + target for a causal LM."""
    if kind == CLASSIFICATION and enc.target_ids is None:
        return classification_batch(enc, idx, pad_id)
    return causal_batch(enc, idx, pad_id)
