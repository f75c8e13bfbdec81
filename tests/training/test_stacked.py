"""Stacked truncations (one forward over copies of the batch) against one forward per truncation,
and split truncations (each on its own rows of one batch)."""

import pytest
import torch

from prelort.adapters import get_state, set_state
from prelort.aggregation.hetlora import TailPenalty
from prelort.data.encoding import EncodedSplit, causal_batch, classification_batch
from prelort.errors import ModelError
from prelort.training.local import (
    LocalTrainingConfig,
    looped_backward,
    split_backward,
    stacked_backward,
)
from prelort.training.nested import split_rows
from prelort.training.objective import PLAIN
from tests_helpers import ladder_run, trained_adapter, without_dropout


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
    config = TailPenalty(gamma=0.1, tail=tail) if tail else PLAIN
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
    ranks = (2, 4, 8)
    looped = gradients(adapted, lambda: looped_backward(adapted, batch, ranks, 8, PLAIN, None))
    stacked = gradients(adapted, lambda: stacked_backward(adapted, batch, ranks, 8, PLAIN))
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
        result = ladder_run(adapted, data, config)
        assert result.passes == 9  # 3 steps x 3 truncations, however they ran
        finals.append(get_state(adapted))
    for key in finals[0]:
        torch.testing.assert_close(finals[0][key], finals[1][key], rtol=1e-4, atol=1e-6)


def test_per_tier_heads_cannot_be_stacked(tiny_bert):
    adapted = trained_adapter(tiny_bert, head=True)
    adapted.use_tier_heads([2, 8])
    with pytest.raises(ModelError, match="shared head"), adapted.truncations([2, 8], 4):
        pass


def test_split_rows_share_the_batch_between_truncations():
    g = torch.Generator().manual_seed(0)
    rows = split_rows(8, [2, 4, 8, 16], g)
    assert sorted(rows.count(r) for r in (2, 4, 8, 16)) == [2, 2, 2, 2]
    assert sorted(split_rows(7, [2, 4, 8], g).count(r) for r in (2, 4, 8)) == [2, 2, 3]
    seen = {r for _ in range(20) for r in split_rows(2, [2, 4, 8, 16], g)}
    assert seen == {2, 4, 8, 16}  # fewer rows than truncations: the rotation reaches every one


def test_split_gradients_equal_each_truncation_on_its_own_rows(tiny_bert):
    adapted = trained_adapter(without_dropout(tiny_bert), head=True)
    g = torch.Generator().manual_seed(0)
    data = EncodedSplit(ragged_ids(6, g), [0, 1, 2, 0, 1, 2])
    batch = classification_batch(data, list(range(6)), 0)
    row_ranks = [2, 2, 4, 4, 4, 8]

    def by_hand() -> float:
        total = 0.0
        for r in (2, 4, 8):
            rows = torch.tensor([n for n, rr in enumerate(row_ranks) if rr == r])
            adapted.set_active_rank(r)
            loss = adapted.model(**{k: v[rows] for k, v in batch.items()}).loss * len(rows) / 6
            loss.backward()
            total += float(loss.detach())
        return total

    expected = gradients(adapted, by_hand)
    split = gradients(adapted, lambda: split_backward(adapted, batch, row_ranks, 8, PLAIN, None))
    assert expected[0] == pytest.approx(split[0], rel=1e-6)
    for a, b in zip(expected[1:], split[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    adapted.use_tier_heads([2, 4, 8])  # per-tier heads: each truncation's rows as their own forward
    looped = gradients(adapted, lambda: split_backward(adapted, batch, row_ranks, 8, PLAIN, None))
    assert looped[0] == pytest.approx(split[0], rel=1e-6)


def test_split_training_trains_every_truncation_at_one_pass_of_the_batch(tiny_bert):
    adapted = trained_adapter(without_dropout(tiny_bert), head=True)
    start = get_state(adapted)
    g = torch.Generator().manual_seed(0)
    data = EncodedSplit(ragged_ids(16, g), [i % 3 for i in range(16)])
    finals = {}
    for mode in ("split", "all"):
        set_state(adapted, start)
        config = LocalTrainingConfig(steps=3, batch_size=8, lr=1e-2, nested=mode)
        result = ladder_run(adapted, data, config)
        assert result.trained_ranks == {2, 4, 8} and result.passes == 9
        finals[mode] = get_state(adapted)
    assert any(not torch.equal(finals["split"][k], finals["all"][k]) for k in finals["all"])
