"""Segment-wise aggregation from summed shares equals the plain rule."""

import torch

from prelort.aggregation import ClientUpdate, aggregate_segmentwise
from prelort.aggregation.secure import secure_share, segmentwise_from_sums, sum_shares

IN, OUT, R = 5, 3, 8


def random_update(client: int, rank: int, examples: int, generator, heads=("head.weight",)):
    state = {
        "m.lora_a": torch.randn(rank, IN, generator=generator),
        "m.lora_b": torch.randn(OUT, rank, generator=generator),
        **{h: torch.randn(2, 2, generator=generator) for h in heads},
    }
    return ClientUpdate(client, state, rank, examples)


def test_sums_give_the_plain_segmentwise_average():
    g = torch.Generator().manual_seed(0)
    global_state = {
        "m.lora_a": torch.randn(R, IN, generator=g),
        "m.lora_b": torch.randn(OUT, R, generator=g),
        "head.weight": torch.randn(2, 2, generator=g),
    }
    updates = [random_update(k, r, n, g) for k, (r, n) in enumerate([(1, 30), (2, 7), (4, 12)])]
    plain = aggregate_segmentwise(global_state, updates, ladder=(1, 2, 4, 8))
    secure = segmentwise_from_sums(
        global_state, sum_shares(secure_share(u, global_state) for u in updates)
    )
    assert secure.keys() == plain.keys()
    for key in plain:
        torch.testing.assert_close(secure[key], plain[key], rtol=1e-6, atol=1e-6)
    # rank indices 4..7: no client held them; they keep their value exactly
    assert torch.equal(secure["m.lora_a"][4:], global_state["m.lora_a"][4:])


def test_a_per_tier_head_nobody_trained_keeps_its_value():
    g = torch.Generator().manual_seed(1)
    global_state = {
        "m.lora_a": torch.randn(R, IN, generator=g),
        "m.lora_b": torch.randn(OUT, R, generator=g),
        "classifier.weight@1": torch.randn(2, 2, generator=g),
        "classifier.weight@8": torch.randn(2, 2, generator=g),
    }
    updates = [random_update(0, 1, 4, g, heads=("classifier.weight@1",))]
    plain = aggregate_segmentwise(global_state, updates, ladder=(1, 8))
    secure = segmentwise_from_sums(
        global_state, sum_shares([secure_share(updates[0], global_state)])
    )
    for key in plain:
        torch.testing.assert_close(secure[key], plain[key], rtol=1e-6, atol=1e-6)
    assert torch.equal(secure["classifier.weight@8"], global_state["classifier.weight@8"])
