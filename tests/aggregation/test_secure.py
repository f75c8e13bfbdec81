"""The rules computed from weighted sums of padded shares equal the plain rules."""

import pytest
import torch

from prelort.aggregation import ClientUpdate, aggregate_segmentwise, aggregate_zeropad
from prelort.aggregation.secure import (
    secure_share,
    segmentwise_from_sums,
    share_layout,
    share_problem,
    sums_problem,
    zeropad_from_sums,
)
from tests_helpers import secure_mean

IN, OUT, R = 5, 3, 8


def random_update(client: int, rank: int, examples: int, generator, heads=("head.weight",)):
    state = {
        "m.lora_a": torch.randn(rank, IN, generator=generator),
        "m.lora_b": torch.randn(OUT, rank, generator=generator),
        **{h: torch.randn(2, 2, generator=generator) for h in heads},
    }
    return ClientUpdate(client, state, rank, examples)


def global_adapter(seed: int, heads=("head.weight",)):
    g = torch.Generator().manual_seed(seed)
    return {
        "m.lora_a": torch.randn(R, IN, generator=g),
        "m.lora_b": torch.randn(OUT, R, generator=g),
        **{h: torch.randn(2, 2, generator=g) for h in heads},
    }, g


@pytest.mark.parametrize(
    ("plain", "from_sums"),
    [(aggregate_segmentwise, segmentwise_from_sums), (aggregate_zeropad, zeropad_from_sums)],
)
def test_the_mean_of_shares_gives_the_plain_rule(plain, from_sums):
    global_state, g = global_adapter(0)
    updates = [random_update(k, r, n, g) for k, (r, n) in enumerate([(1, 30), (2, 7), (4, 12)])]
    expected = plain(global_state, updates)
    secure = from_sums(global_state, secure_mean(updates, global_state))
    assert secure.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(secure[key], expected[key], rtol=1e-6, atol=1e-6)


def test_indices_nobody_held_keep_their_value_under_segmentwise_and_reset_under_zeropad():
    global_state, g = global_adapter(0)
    updates = [random_update(k, r, n, g) for k, (r, n) in enumerate([(1, 30), (4, 12)])]
    mean = secure_mean(updates, global_state)
    assert torch.equal(
        segmentwise_from_sums(global_state, mean)["m.lora_a"][4:], global_state["m.lora_a"][4:]
    )
    assert not zeropad_from_sums(global_state, mean)["m.lora_a"][4:].any()


def test_a_quantisation_residue_below_the_resolution_counts_as_nobody():
    global_state, g = global_adapter(2)
    update = random_update(0, 2, 10, g)
    mean = secure_mean([update], global_state)
    mean["m#weight"][2:] = 1e-7  # what dequantising a secure sum of zeros could leave
    out = segmentwise_from_sums(global_state, mean, resolution=0.25)
    assert torch.equal(out["m.lora_a"][2:], global_state["m.lora_a"][2:])


def test_a_per_tier_head_nobody_trained_keeps_its_value():
    global_state, g = global_adapter(1, heads=("classifier.weight@1", "classifier.weight@8"))
    updates = [random_update(0, 1, 4, g, heads=("classifier.weight@1",))]
    plain = aggregate_segmentwise(global_state, updates)
    secure = segmentwise_from_sums(global_state, secure_mean(updates, global_state))
    for key in plain:
        torch.testing.assert_close(secure[key], plain[key], rtol=1e-6, atol=1e-6)
    assert torch.equal(secure["classifier.weight@8"], global_state["classifier.weight@8"])


def test_every_share_has_the_layout_both_ends_derive():
    global_state, g = global_adapter(3)
    layout = share_layout(global_state)
    for rank in (1, 8):
        share = secure_share(random_update(0, rank, 5, g), global_state)
        assert [(k, tuple(v.shape)) for k, v in share.items()] == layout


def test_a_client_refuses_to_send_what_secagg_would_clip_or_poison():
    global_state, g = global_adapter(4)
    share = secure_share(random_update(0, 2, 5, g), global_state)
    assert share_problem(share, bound=100.0) is None
    assert "outside secure_range" in share_problem(share, bound=1e-3)
    share["m.lora_b"][0, 0] = float("nan")
    assert "NaN" in share_problem(share, bound=100.0)


def test_a_malformed_sum_is_named():
    global_state, g = global_adapter(5)
    mean = secure_mean([random_update(0, 2, 5, g)], global_state)
    assert sums_problem(mean, global_state) is None
    assert "shape" in sums_problem({**mean, "m.lora_a": torch.zeros(2, IN)}, global_state)
    assert "keys differ" in sums_problem({"m.lora_a": mean["m.lora_a"]}, global_state)
    bad = {**mean, "m.lora_b": mean["m.lora_b"] * float("inf")}
    assert "NaN or Inf" in sums_problem(bad, global_state)
