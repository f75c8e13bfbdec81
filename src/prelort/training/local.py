"""A client's local training: an AdamW (or SGD) loop over random mini-batches of its partition.

The task head gets its own learning rate: it starts from random weights each run while the adapter
starts as a no-op, and at the adapter's rate a head of a few hundred weights learns too slowly to
read the adapter's features within a short federation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from prelort.adapters.inject import NestedLoRAModel
from prelort.config import OPTIMIZER_CHOICES
from prelort.data.encoding import EncodedSplit, make_batch
from prelort.device import to_device
from prelort.errors import ConfigError
from prelort.training.nested import split_rows, truncation_ranks
from prelort.training.objective import PLAIN, LocalObjective


@dataclass(frozen=True)
class LocalTrainingConfig:
    """Settings of one client's local training.

    Attributes:
        steps: optimizer steps per round.
        batch_size: examples per step.
        lr: learning rate of the adapter.
        weight_decay: weight decay (decoupled for AdamW, L2 for SGD).
        max_grad_norm: gradient clipping (0 disables it).
        nested: "all", "sample", "split" or "off" (see ``truncation_ranks``).
        head_lr: learning rate of the task head (None: ``lr``).
        optimizer: "adamw" or "sgd" (momentum 0.9).
        stack_truncations: run a step's truncations as copies of the batch in one forward and
            backward (same loss and gradients, fewer and wider matmuls, T times the activation
            memory); False loops over them. Used only with equal weights and a shared head.
    """

    steps: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    nested: str = "all"
    head_lr: float | None = None
    optimizer: str = "adamw"
    stack_truncations: bool = True


@dataclass(frozen=True)
class LocalResult:
    """What local training reports.

    Attributes:
        mean_loss: mean task loss over the steps.
        passes: truncations trained, summed over steps (more than steps under nested training,
            whether a step's truncations ran stacked in one pass or one after another).
        tail_ratio: what the objective reports on the adapter's tail (HetLoRA: the norm of the
            tail's update over the whole update's; 0 for most methods).
        trained_ranks: the active ranks the client optimised (their tiers' heads were trained).
    """

    mean_loss: float
    passes: int
    tail_ratio: float
    trained_ranks: frozenset[int] = frozenset()


def truncation_shares(
    ranks: Sequence[int], weights: Mapping[int, float] | None
) -> dict[int, float] | None:
    """Each truncation's share of a step's loss: ``weights`` renormalised over ``ranks``."""
    if weights is None:
        return None
    total = sum(weights[r] for r in ranks)
    return {r: weights[r] / total for r in ranks}


def make_optimizer(
    adapted: NestedLoRAModel, config: LocalTrainingConfig, train_adapter: bool = True
) -> torch.optim.Optimizer:
    """One optimizer, two parameter groups: the adapter at ``lr``, the head at ``head_lr``.

    Raises:
        ConfigError: an unknown optimizer name.
    """
    groups = []
    if train_adapter:
        groups.append({"params": adapted.adapter_parameters(), "lr": config.lr})
    if adapted.head_parameters():
        head_lr = config.lr if config.head_lr is None else config.head_lr
        groups.append({"params": adapted.head_parameters(), "lr": head_lr})
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    raise ConfigError(
        f"optimizer: unknown optimizer {config.optimizer!r}; choose one of {', '.join(OPTIMIZER_CHOICES)}"
    )


def batch_indices(
    indices: Sequence[int], batch_size: int, generator: torch.Generator
) -> Iterator[list[int]]:
    """Endless mini-batches of ``indices``: reshuffled each epoch, never repeating within one."""
    size = min(batch_size, len(indices))
    while True:
        order = torch.randperm(len(indices), generator=generator).tolist()
        for start in range(0, len(order) - size + 1, size):
            yield [indices[i] for i in order[start : start + size]]


def looped_backward(
    adapted: NestedLoRAModel,
    batch: Mapping[str, torch.Tensor],
    ranks: Sequence[int],
    rank: int,
    objective: LocalObjective,
    shares: Mapping[int, float] | None,
) -> float:
    """One forward and backward per truncation, gradients accumulated; returns the step's loss."""
    step_loss = 0.0
    for r in ranks:
        adapted.set_active_rank(r)
        with adapted.train_autocast():
            loss = adapted.model(**batch).loss
        loss = loss / len(ranks) if shares is None else loss * shares[r]
        step_loss += float(loss.detach())
        (loss + objective.penalty(adapted, rank) / len(ranks)).backward()
    return step_loss


def masked_backward(
    adapted: NestedLoRAModel,
    batch: Mapping[str, torch.Tensor],
    row_ranks: Sequence[int],
    rank: int,
    objective: LocalObjective,
) -> float:
    """One forward and backward in which row n of ``batch`` sees the adapter at ``row_ranks[n]``.

    The model's loss is the mean over the batch's rows (or label tokens), so each truncation
    weighs by its share of them. Both ``stacked_backward`` and ``split_backward`` are this.
    """
    with adapted.row_truncations(row_ranks):
        with adapted.train_autocast():
            loss = adapted.model(**batch).loss
        # inside the masks: gradient checkpointing recomputes the forward during the backward
        (loss + objective.penalty(adapted, rank)).backward()
    adapted.set_active_rank(rank)
    return float(loss.detach())


def stacked_backward(
    adapted: NestedLoRAModel,
    batch: Mapping[str, torch.Tensor],
    ranks: Sequence[int],
    rank: int,
    objective: LocalObjective,
) -> float:
    """Every truncation in one forward and backward over stacked copies of the batch.

    The model's loss is a mean over rows (or over label tokens, equally many in every copy), so
    over the stacked batch it is exactly the mean of the truncations' losses.
    """
    copies = {k: torch.cat([v] * len(ranks)) for k, v in batch.items()}
    copy_size = next(iter(batch.values())).shape[0]
    row_ranks = [r for r in ranks for _ in range(copy_size)]  # copy t at ranks[t]
    return masked_backward(adapted, copies, row_ranks, rank, objective)


def split_backward(
    adapted: NestedLoRAModel,
    batch: Mapping[str, torch.Tensor],
    row_ranks: Sequence[int],
    rank: int,
    objective: LocalObjective,
    shares: Mapping[int, float] | None,
) -> float:
    """Every truncation on its own rows of the batch (``split_rows``): one forward of the batch.

    The loss is the mean over the batch's rows, so each truncation weighs by its share of the
    rows; with ``shares`` (tier-weighted losses) or per-tier heads each truncation's rows run as
    their own forward, weighted by its share instead.
    """
    if shares is None and not adapted.tier_heads:
        return masked_backward(adapted, batch, row_ranks, rank, objective)
    step_loss, groups = 0.0, sorted(set(row_ranks))
    for r in groups:
        rows = torch.tensor([n for n, rr in enumerate(row_ranks) if rr == r], device=adapted.device)
        adapted.set_active_rank(r)
        with adapted.train_autocast():
            loss = adapted.model(**{k: v[rows] for k, v in batch.items()}).loss
        loss = loss * (len(rows) / len(row_ranks) if shares is None else shares[r])
        step_loss += float(loss.detach())
        (loss + objective.penalty(adapted, rank) / len(groups)).backward()
    return step_loss


def train_local(
    adapted: NestedLoRAModel,
    data: EncodedSplit,
    indices: Sequence[int],
    kind: str,
    pad_id: int,
    rank: int,
    ladder: Sequence[int],
    config: LocalTrainingConfig,
    generator: torch.Generator,
    objective: LocalObjective = PLAIN,
) -> LocalResult:
    """Train the adapter the model holds (of rank ``rank``) on the client's examples, in place.

    Args:
        adapted: the model; its layers must hold the client's rank-``rank`` adapter.
        data: the encoded training split.
        indices: this client's rows of ``data``.
        kind: "classification" or "generation".
        pad_id: the tokenizer's pad id.
        rank: the client's rank.
        ladder: the ranks in use; nested training truncates at those <= rank.
        config: steps, batch size, optimizer and nested mode.
        generator: the client's random stream for batches and sampled truncations.
        objective: the method's part: extra loss, truncation weights, optimizer step, report.
    """
    if not objective.trains_adapter and not adapted.head_parameters():
        return LocalResult(float("nan"), 0, 0.0)  # nothing to train: a zero-shot reference
    optimizer = make_optimizer(adapted, config, objective.trains_adapter)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for p in adapted.adapter_parameters():  # no backward through a frozen adapter
        p.requires_grad_(objective.trains_adapter)
    adapted.model.train()
    batches = batch_indices(indices, config.batch_size, generator)
    losses, passes, trained = [], 0, set()
    for _ in range(config.steps):
        batch = to_device(make_batch(kind, data, next(batches), pad_id), adapted.device)
        ranks = truncation_ranks(
            config.nested, rank, objective.truncation_ladder(ladder), generator
        )
        row_ranks = None
        if config.nested == "split" and len(ranks) > 1:
            row_ranks = split_rows(batch["input_ids"].shape[0], ranks, generator)
            ranks = sorted(set(row_ranks))  # a batch smaller than the ladder trains fewer
        trained.update(ranks)
        optimizer.zero_grad(set_to_none=True)
        shares = truncation_shares(ranks, objective.truncation_weights)
        stack = config.stack_truncations and len(ranks) > 1 and shares is None
        if row_ranks is not None:
            step_loss = split_backward(adapted, batch, row_ranks, rank, objective, shares)
        elif stack and not adapted.tier_heads:
            step_loss = stacked_backward(adapted, batch, ranks, rank, objective)
        else:
            step_loss = looped_backward(adapted, batch, ranks, rank, objective, shares)
        passes += len(ranks)
        if config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        with objective.stepping(adapted, ranks, rank):
            optimizer.step()
        losses.append(step_loss)
    adapted.set_active_rank(rank)
    adapted.model.eval()
    ratio = objective.tail_ratio(adapted, rank)
    return LocalResult(sum(losses) / len(losses), passes, ratio, frozenset(trained))
