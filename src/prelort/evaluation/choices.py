"""Classification by a causal LM: the likeliest verbalised label.

Each class is a token sequence (its name, then eos). The score of a class is the sum of the log-
probabilities of its tokens after the prompt; the prediction is the class of highest score, so
labels of several tokens are scored exactly. The prompt runs once; its key/value cache is repeated
for the K candidates, which then cost only their own few tokens.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from prelort.adapters.inject import NestedLoRAModel
from prelort.data.encoding import EncodedSplit, prompt_batch
from prelort.device import to_device
from prelort.evaluation.metrics import accuracy


def _padded(
    rows: Sequence[Sequence[int]], width: int, fill: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(rows), width), fill, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[j, : len(r)] = 1
    return ids.to(device), mask.to(device)


def _cache_keyword(model: torch.nn.Module) -> str:
    """``cache`` in transformers >= 5.x (``past_key_values`` is deprecated there), else the old name."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.inference_mode()
def choice_scores(
    model: torch.nn.Module, enc: EncodedSplit, idx: Sequence[int], pad_id: int
) -> torch.Tensor:
    """Log-likelihood of every choice after each prompt of rows ``idx``. Shape (B, K).

    Raises:
        ValueError: ``enc`` has no choices.
    """
    if not enc.choices:
        raise ValueError("choice scores need an encoded split with choices")
    choices, k = enc.choices, len(enc.choices)
    device = next(model.parameters()).device
    batch = to_device(prompt_batch(enc, idx, pad_id), device)  # left-padded prompts
    mask = batch["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions, use_cache=True
    )
    first = out.logits[:, -1].float().log_softmax(-1)  # (B, V): the first label token
    scores = first[:, [c[0] for c in choices]]  # (B, K)
    width = max(len(c) for c in choices) - 1
    if width == 0:
        return scores
    b = mask.shape[0]
    cache = out.cache if _cache_keyword(model) == "cache" else out.past_key_values
    cache.batch_repeat_interleave(k)  # row b * K + k continues prompt b with choice k
    inputs, input_mask = _padded([c[:-1] for c in choices], width, pad_id, device)  # (K, w)
    targets, target_mask = _padded([c[1:] for c in choices], width, 0, device)  # (K, w)
    lengths = mask.sum(-1).repeat_interleave(k)  # (B * K,)
    cont = model(
        input_ids=inputs.repeat(b, 1),
        attention_mask=torch.cat([mask.repeat_interleave(k, 0), input_mask.repeat(b, 1)], 1),
        position_ids=lengths[:, None] + torch.arange(width, device=device)[None, :],
        **{_cache_keyword(model): cache},
    )
    logp = cont.logits.float().log_softmax(-1)  # (B * K, w, V)
    token_logp = logp.gather(-1, targets.repeat(b, 1)[..., None]).squeeze(-1)  # (B * K, w)
    rest = (token_logp * target_mask.repeat(b, 1)).sum(-1).view(b, k)
    return (scores + rest).cpu()


def choice_predictions(
    adapted: NestedLoRAModel, enc: EncodedSplit, pad_id: int, batch_size: int
) -> list[int]:
    """The likeliest verbalised label of each example."""
    predictions: list[int] = []
    for start in range(0, len(enc), batch_size):
        idx = list(range(start, min(len(enc), start + batch_size)))
        predictions += choice_scores(adapted.model, enc, idx, pad_id).argmax(-1).tolist()
    return predictions


def choice_accuracy(
    adapted: NestedLoRAModel, enc: EncodedSplit, pad_id: int, batch_size: int
) -> float:
    """Accuracy of the likeliest verbalised label."""
    return accuracy(choice_predictions(adapted, enc, pad_id, batch_size), enc.labels)
