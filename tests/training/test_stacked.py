"""Stacked truncations (one forward over copies of the batch) against one forward per truncation."""

import pytest
import torch

from prelort.adapters import get_state, set_state
from prelort.data.encoding import EncodedSplit, causal_batch, classification_batch
from prelort.errors import ModelError
from prelort.training.local import (
    LocalTrainingConfig,
    looped_backward,
    stacked_backward,
    train_local,
)
from tests_helpers import trained_adapter, without_dropout


def gradients(adapted, backward) -> list[torch.Tensor]:
    params = adapted.trainable_parameters()
    for p in params:
        p.grad = None
    loss = backward()
    return [loss, *(p.grad.clone() for p in params)]


def ragged_ids(n, g):
    return [
        torch.randint(3, 120, (int(torch.randint(4, 12, (1,), generator=g)),), generator=g).tolist()
        for _ in range(n)
    ]


@pytest.mark.parametrize(
    ("ranks", "rank", "tail"), [((2, 4, 8), 8, 0), ((1, 2, 3), 3, 0), ((2, 8), 8, 2)]
)
def test_classification_gradients_match_the_loop(tiny_bert, ranks, rank, tail):
    adapted = trained_adapter(without_dropout(tiny_bert), head=True)
    g = torch.Generator().manual_seed(0)
    data = EncodedSplit(ragged_ids(6, g), [0, 1, 2, 0, 1, 2])
    batch = classification_batch(data, list(range(6)), 0)
    config = LocalTrainingConfig(tail_penalty=0.1 if tail else 0.0, tail=tail)
    for layer in adapted.layers.values():
        layer.set_factors(layer.lora_a[:rank], layer.lora_b[:, :rank])
    looped = gradients(adapted, lambda: looped_backward(adapted, batch, ranks, rank, config, None))
    stacked = gradients(adapted, lambda: stacked_backward(adapted, batch, ranks, rank, config))
    assert looped[0] == pytest.approx(stacked[0], rel=1e-6)
    for a, b in zip(looped[1:], stacked[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert all(layer.rank_mask is None for layer in adapted.layers.values())
    assert all(layer.active_rank == rank for layer in adapted.layers.values())


def test_causal_lm_gradients_match_the_loop(tiny_llama):
    adapted = trained_adapter(without_dropout(tiny_llama))
    g = torch.Generator().manual_seed(0)
    ids = ragged_ids(5, g)
    data = EncodedSplit(ids, [0] * 5, target_ids=[i[:3] for i in ragged_ids(5, g)])
    batch = causal_batch(data, list(range(5)), 0)
    config = LocalTrainingConfig()
    ranks = (2, 4, 8)
    looped = gradients(adapted, lambda: looped_backward(adapted, batch, ranks, 8, config, None))
    stacked = gradients(adapted, lambda: stacked_backward(adapted, batch, ranks, 8, config))
    assert looped[0] == pytest.approx(stacked[0], rel=1e-6)
    for a, b in zip(looped[1:], stacked[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_training_runs_stacked_or_looped_to_the_same_adapter(tiny_bert):
    """Whole local runs: a few AdamW steps end at the same adapter either way."""
    adapted = trained_adapter(without_dropout(tiny_bert), head=True)
    start = get_state(adapted)
    g = torch.Generator().manual_seed(0)
    data = EncodedSplit(ragged_ids(16, g), [i % 3 for i in range(16)])
    finals = []
    for stack in (True, False):
        set_state(adapted, start)
        config = LocalTrainingConfig(steps=3, batch_size=8, lr=1e-2, stack_truncations=stack)
        result = train_local(
            adapted,
            data,
            list(range(16)),
            "classification",
            0,
            8,
            (2, 4, 8),
            config,
            torch.Generator().manual_seed(3),
        )
        assert result.passes == 9  # 3 steps x 3 truncations, however they ran
        finals.append(get_state(adapted))
    for key in finals[0]:
        torch.testing.assert_close(finals[0][key], finals[1][key], rtol=1e-4, atol=1e-6)


def test_per_tier_heads_cannot_be_stacked(tiny_bert):
    adapted = trained_adapter(tiny_bert, head=True)
    adapted.use_tier_heads([2, 8])
    with pytest.raises(ModelError, match="shared head"), adapted.truncations([2, 8], 4):
        pass
