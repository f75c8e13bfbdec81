"""A diagnostic: how good are a tier's features, whatever the federated head learnt?

The adapter and the base stay frozen; the features that enter the classifier head are collected
for some training examples and a multinomial logistic regression is refitted on them, then scored
on the test set. A federated head far below this readout is the bottleneck, not the adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prelort.adapters.inject import NestedLoRAModel
from prelort.data.encoding import EncodedSplit, classification_batch
from prelort.evaluation.metrics import accuracy

READOUT_L2 = 1e-3  # ridge on the standardised features; the fit is not sensitive to it here


def head_module(adapted: NestedLoRAModel) -> torch.nn.Module:
    """The module that owns the head: the longest common prefix of the head's parameter names."""
    names = [n.rpartition(".")[0].split(".") for n in adapted.head]
    common: list[str] = []
    for parts in zip(*names, strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return adapted.model.get_submodule(".".join(common))


@dataclass(frozen=True)
class HeadOutputs:
    """What one forward pass gives a classifier: the head's logits and the features it read.

    Attributes:
        logits: (n, classes).
        features: (n, hidden), the head's input (one token per row for token-level heads).
    """

    logits: torch.Tensor
    features: torch.Tensor


@torch.inference_mode()
def head_outputs(
    adapted: NestedLoRAModel, data: EncodedSplit, rows: Sequence[int], pad_id: int, batch_size: int
) -> HeadOutputs:
    """The logits of ``rows`` and the inputs of the head, from one forward, at the active rank.

    Token-level inputs (heads that pool themselves) are reduced to the token such heads read: the
    last real token for decoders, the first for encoders.
    """
    captured: list[torch.Tensor] = []
    hook = head_module(adapted).register_forward_pre_hook(
        lambda _module, args: captured.append(args[0].detach().float().cpu())
    )
    decoder = bool(getattr(adapted.model.config, "is_decoder", False)) or "CausalLM" in str(
        getattr(adapted.model.config, "architectures", "")
    )
    logits, features = [], []
    try:
        for start in range(0, len(rows), batch_size):
            batch = classification_batch(data, rows[start : start + batch_size], pad_id)
            captured.clear()
            with adapted.autocast():
                out = adapted.model(
                    input_ids=batch["input_ids"].to(adapted.device),
                    attention_mask=batch["attention_mask"].to(adapted.device),
                )
            x = captured[0]
            if x.ndim == 3:  # (B, T, H)
                last = batch["attention_mask"].sum(-1) - 1
                x = x[torch.arange(x.shape[0]), last] if decoder else x[:, 0]
            logits.append(out.logits.float().cpu())
            features.append(x)
    finally:
        hook.remove()
    return HeadOutputs(torch.cat(logits), torch.cat(features))


def head_features(
    adapted: NestedLoRAModel, data: EncodedSplit, rows: Sequence[int], pad_id: int, batch_size: int
) -> torch.Tensor:
    """The inputs of the head for ``rows`` at the current active rank. Shape (n, hidden)."""
    return head_outputs(adapted, data, rows, pad_id, batch_size).features


def fit_readout(
    train_x: torch.Tensor, train_y: torch.Tensor, classes: int, steps: int = 200
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on standardised features, by L-BFGS.

    Returns:
        (mean, std, weight (classes, hidden), bias (classes,)).
    """
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    x = ((train_x - mean) / std).double()
    weight = torch.zeros(classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, train_y) + READOUT_L2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return mean, std, weight.detach(), bias.detach()


def readout_accuracy(
    adapted: NestedLoRAModel,
    train: EncodedSplit,
    train_rows: Sequence[int],
    test_features: torch.Tensor,
    test_labels: Sequence[int],
    classes: int,
    pad_id: int,
    batch_size: int = 32,
) -> float:
    """Test accuracy of a readout refitted on the features of ``train_rows`` at the active rank.

    Args:
        test_features: (n_test, hidden), the test set's head inputs at the same rank (from the
            evaluation's own forward pass, which ``head_outputs`` returns beside the logits).
    """
    train_x = head_features(adapted, train, train_rows, pad_id, batch_size)
    train_y = torch.tensor([train.labels[i] for i in train_rows])
    mean, std, weight, bias = fit_readout(train_x, train_y, classes)
    test_x = (test_features - mean) / std
    predictions = (test_x.double() @ weight.T + bias).argmax(-1).tolist()
    return accuracy(predictions, test_labels)
