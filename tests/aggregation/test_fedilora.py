"""FediLoRA's dimension-wise rule against a by-hand per-level computation, and against PreLort's
segment-wise rule: equal when the round covers every rank index, different when it does not."""

import torch

from prelort.aggregation import aggregate_segmentwise, get_method
from prelort.aggregation.fedilora import aggregate_fedilora, fedilora_from_sums
from prelort.aggregation.privacy import segment_sensitivity
from tests_helpers import lora_update, secure_mean

IN, OUT, R = 6, 5, 8


def update(client, rank, examples, seed):
    return lora_update(client, rank, examples, seed, IN, OUT)


def previous():
    g = torch.Generator().manual_seed(99)
    return {
        "m.lora_a": torch.randn(R, IN, generator=g),
        "m.lora_b": torch.randn(OUT, R, generator=g),
    }


def by_levels(updates):
    """The paper's loop: cut at the round's ranks, renormalise the weights within each level."""
    levels = sorted({u.rank for u in updates})
    a, b = torch.zeros(R, IN, dtype=torch.float64), torch.zeros(OUT, R, dtype=torch.float64)
    lo = 0
    for hi in levels:
        holders = [u for u in updates if u.rank >= hi]
        total = sum(u.num_examples for u in holders)
        for u in holders:
            w = u.num_examples / total
            a[lo:hi] += w * u.state["m.lora_a"][lo:hi].double()
            b[:, lo:hi] += w * u.state["m.lora_b"][:, lo:hi].double()
        lo = hi
    return a.float(), b.float()


def test_each_level_is_the_renormalised_average_of_its_holders_and_the_rest_is_zero():
    updates = [update(0, 2, 3, 1), update(1, 4, 1, 2), update(2, 4, 2, 3)]
    out = aggregate_fedilora(previous(), updates)
    a, b = by_levels(updates)
    torch.testing.assert_close(out["m.lora_a"], a)
    torch.testing.assert_close(out["m.lora_b"], b)
    assert out["m.lora_a"][4:].eq(0).all() and out["m.lora_b"][:, 4:].eq(0).all()


def test_it_coincides_with_prelort_when_the_round_covers_every_index():
    updates = [update(0, 2, 3, 1), update(1, 8, 1, 2), update(2, 4, 2, 3)]
    fedi = aggregate_fedilora(previous(), updates)
    ours = aggregate_segmentwise(previous(), updates)
    for key in fedi:
        assert torch.equal(fedi[key], ours[key])


def test_it_differs_from_prelort_where_no_client_of_the_round_holds_an_index():
    updates = [update(0, 2, 3, 1), update(1, 4, 1, 2)]  # the rank-8 client sat this round out
    fedi, ours = aggregate_fedilora(previous(), updates), aggregate_segmentwise(previous(), updates)
    torch.testing.assert_close(fedi["m.lora_a"][:4], ours["m.lora_a"][:4])
    assert fedi["m.lora_a"][4:].eq(0).all()  # FediLoRA forgets the absent clients' components
    assert torch.equal(ours["m.lora_a"][4:], previous()["m.lora_a"][4:])  # PreLort keeps them


def test_secure_sums_and_dp_bound_follow_the_plain_rule():
    updates = [update(0, 2, 3, 1), update(1, 4, 1, 2)]
    method = get_method("fedilora")
    from_sums = method.secure_rule()(previous(), secure_mean(updates, previous()), 0.0)
    plain = aggregate_fedilora(previous(), updates)
    for key in plain:
        torch.testing.assert_close(from_sums[key], plain[key], atol=1e-6, rtol=1e-5)
    assert method.secure_rule() is fedilora_from_sums
    assert method.sensitivity() is segment_sensitivity and method.nested == "off"
