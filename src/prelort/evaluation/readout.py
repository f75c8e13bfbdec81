"""A diagnostic: how good are a tier's features, whatever the federated head learnt?

The adapter and the base stay frozen; the features that enter the classifier head are collected
for some training examples and a multinomial logistic regression is refitted on them, then scored
on the test set. A federated head far below this readout is the bottleneck, not the adapter.
"""

from __future__ import annotations

from collections.abc import Sequence

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


@torch.inference_mode()
def head_features(
    adapted: NestedLoRAModel, data: EncodedSplit, rows: Sequence[int], pad_id: int, batch_size: int
) -> torch.Tensor:
    """The inputs of the head for ``rows`` at the current active rank. Shape (n, hidden).

    Token-level inputs (heads that pool themselves) are reduced to the token such heads read: the
    last real token for decoders, the first for encoders.
    """
    captured: list[torch.Tensor] = []
    hook = head_module(adapted).register_forward_pre_hook(
        lambda _module, args: captured.append(args[0].detach().float())
    )
    decoder = bool(getattr(adapted.model.config, "is_decoder", False)) or "CausalLM" in str(
        getattr(adapted.model.config, "architectures", "")
    )
    features = []
    try:
        for start in range(0, len(rows), batch_size):
            batch = classification_batch(data, rows[start : start + batch_size], pad_id)
            captured.clear()
            adapted.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            x = captured[0]
            if x.ndim == 3:  # (B, T, H)
                last = batch["attention_mask"].sum(-1) - 1
                x = x[torch.arange(x.shape[0]), last] if decoder else x[:, 0]
            features.append(x)
    finally:
        hook.remove()
    return torch.cat(features)


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
    test: EncodedSplit,
    pad_id: int,
    classes: int,
    batch_size: int = 32,
) -> float:
    """Test accuracy of a readout refitted on the features of ``train_rows`` at the active rank."""
    train_x = head_features(adapted, train, train_rows, pad_id, batch_size)
    train_y = torch.tensor([train.labels[i] for i in train_rows])
    mean, std, weight, bias = fit_readout(train_x, train_y, classes)
    test_x = (head_features(adapted, test, range(len(test)), pad_id, batch_size) - mean) / std
    predictions = (test_x.double() @ weight.T + bias).argmax(-1).tolist()
    return accuracy(predictions, test.labels)
