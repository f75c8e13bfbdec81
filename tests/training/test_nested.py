import pytest
import torch

from prelort.errors import ConfigError
from prelort.training.nested import truncation_ranks


def test_modes():
    g = torch.Generator().manual_seed(0)
    assert truncation_ranks("all", 8, (2, 4, 8, 16), g) == [2, 4, 8]
    assert truncation_ranks("off", 8, (2, 4, 8, 16), g) == [8]
    picks = {truncation_ranks("sample", 8, (2, 4, 8, 16), g)[0] for _ in range(200)}
    assert picks == {2, 4, 8}
    assert truncation_ranks("all", 3, (2, 4), g) == [2, 3]
    with pytest.raises(ConfigError, match="nested"):
        truncation_ranks("some", 8, (2,), g)


def test_nested_training_makes_the_prefix_work_alone(tiny_bert):
    """After nested training the rank-1 truncation fits the data far better than after plain training."""
    from prelort.adapters import get_state, inject_nested_lora, set_state
    from prelort.data.encoding import EncodedSplit
    from prelort.training import LocalTrainingConfig, train_local

    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(3, 120, (12,), generator=g).tolist() for _ in range(24)]
    labels = [i % 3 for i in range(24)]
    data = EncodedSplit(ids, labels)
    adapted = inject_nested_lora(tiny_bert, 8, 16.0, train_head=False)
    adapted.reset_parameters(torch.Generator().manual_seed(1))
    start = get_state(adapted)

    def loss_at_rank1(mode: str) -> float:
        set_state(adapted, start)
        config = LocalTrainingConfig(steps=60, batch_size=24, lr=1e-2, nested=mode)
        train_local(
            adapted,
            data,
            list(range(24)),
            "classification",
            0,
            8,
            (1, 8),
            config,
            torch.Generator().manual_seed(2),
        )
        adapted.set_active_rank(1)
        from prelort.data.encoding import classification_batch

        with torch.no_grad():
            return float(adapted.model(**classification_batch(data, list(range(24)), 0)).loss)

    assert loss_at_rank1("all") < loss_at_rank1("off")


def test_tier_balanced_weights_equalise_each_truncations_total_weight():
    from prelort.aggregation.prelort import tier_balanced_weights
    from prelort.training.local import truncation_shares

    weights = tier_balanced_weights([2, 2, 4, 16], (2, 4, 16))
    assert weights == {2: 1 / 4, 4: 1 / 2, 16: 1.0}
    shares = truncation_shares([2, 4, 16], weights)
    assert abs(sum(shares.values()) - 1.0) < 1e-12 and shares[16] > shares[4] > shares[2]
    assert truncation_shares([2, 4], None) is None
