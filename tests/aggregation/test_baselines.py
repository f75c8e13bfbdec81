"""Closed-form and dense-reference checks of the baseline aggregation rules."""

import pytest
import torch

from prelort.adapters.norms import update_norm
from prelort.aggregation import (
    AggregationContext,
    ClientUpdate,
    aggregate_flexlora,
    aggregate_flora,
    aggregate_hetlora,
    get_method,
    methods,
)
from prelort.aggregation.flexlora import low_rank_svd
from prelort.aggregation.hetlora import tail_size
from prelort.errors import MethodUnsupported

IN, OUT, R, SCALE = 7, 5, 4, 0.5


def random_update(client, rank, examples, seed):
    g = torch.Generator().manual_seed(seed)
    state = {
        "m.lora_a": torch.randn(rank, IN, generator=g),
        "m.lora_b": torch.randn(OUT, rank, generator=g),
        "head.w": torch.randn(3, generator=g),
    }
    return ClientUpdate(client, state, rank, examples)


def global_state(merged=False):
    state = {
        "m.lora_a": torch.zeros(R, IN),
        "m.lora_b": torch.zeros(OUT, R),
        "head.w": torch.zeros(3),
    }
    if merged:
        state["m.merged"] = torch.zeros(OUT, IN)
    return state


def dense_average(updates):
    total = sum(u.num_examples for u in updates)
    return sum(
        u.num_examples / total * SCALE * u.state["m.lora_b"] @ u.state["m.lora_a"] for u in updates
    )


def test_low_rank_svd_matches_dense_svd():
    g = torch.Generator().manual_seed(0)
    b, a = (
        torch.randn(30, 6, generator=g, dtype=torch.float64),
        torch.randn(6, 20, generator=g, dtype=torch.float64),
    )
    u, s, vh = low_rank_svd(b, a, 4)
    s_dense = torch.linalg.svdvals(b @ a)[:4]
    torch.testing.assert_close(s, s_dense)
    torch.testing.assert_close(u @ torch.diag(s) @ vh, _best_rank(b @ a, 4))


def _best_rank(m, k):
    u, s, vh = torch.linalg.svd(m)
    return u[:, :k] @ torch.diag(s[:k]) @ vh[:k]


def test_flexlora_is_the_best_rank_r_approximation_of_the_average():
    updates = [random_update(0, 1, 2, 0), random_update(1, 2, 1, 1), random_update(2, 4, 3, 2)]
    out = aggregate_flexlora(global_state(), updates, SCALE)
    avg = dense_average(updates).double()
    for r in (1, 2, 4):  # every prefix is the best rank-r approximation
        product = SCALE * out["m.lora_b"][:, :r].double() @ out["m.lora_a"][:r].double()
        torch.testing.assert_close(product, _best_rank(avg, r), rtol=1e-4, atol=1e-5)
    # singular values are split evenly: the factors have equal row / column norms
    torch.testing.assert_close(
        out["m.lora_a"].norm(dim=1), out["m.lora_b"].norm(dim=0), rtol=1e-4, atol=1e-5
    )


def test_flora_merges_the_exact_weighted_sum():
    updates = [random_update(0, 1, 1, 0), random_update(1, 4, 3, 1)]
    fresh = {"m.lora_a": torch.ones(R, IN), "m.lora_b": torch.zeros(OUT, R)}
    start = global_state(merged=True)
    start["m.merged"] = torch.full((OUT, IN), 0.25)
    for u in updates:
        u.state["m.merged"] = start["m.merged"].clone()
    out = aggregate_flora(start, updates, SCALE, fresh)
    torch.testing.assert_close(out["m.merged"], 0.25 + dense_average(updates), rtol=1e-5, atol=1e-6)
    assert torch.equal(out["m.lora_a"], fresh["m.lora_a"]) and not out["m.lora_b"].any()
    torch.testing.assert_close(
        out["head.w"], 0.25 * updates[0].state["head.w"] + 0.75 * updates[1].state["head.w"]
    )


def test_hetlora_weights_by_update_norm():
    small, big = random_update(0, 4, 100, 0), random_update(1, 4, 1, 1)
    big.state["m.lora_b"] *= 3
    n_small, n_big = update_norm(small.state, SCALE), update_norm(big.state, SCALE)
    dense = SCALE * torch.linalg.matrix_norm(big.state["m.lora_b"] @ big.state["m.lora_a"])
    assert n_big == pytest.approx(float(dense), rel=1e-5)
    out = aggregate_hetlora(global_state(), [small, big], SCALE)
    w = n_big / (n_small + n_big)  # example counts do not enter
    torch.testing.assert_close(
        out["m.lora_a"], (1 - w) * small.state["m.lora_a"] + w * big.state["m.lora_a"]
    )
    assert tail_size(16) == 4 and tail_size(2) == 1


def test_fedit_ranks_and_registry():
    assert get_method("fedit-min").client_ranks([2, 4, 8]) == [2, 2, 2]
    assert get_method("fedit-max").client_ranks([2, 4, 8]) == [8, 8, 8]
    assert {
        "prelort",
        "zeropad",
        "hetlora",
        "flexlora",
        "flora",
        "fedit-min",
        "fedit-max",
        "prelort-agg",
        "prelort-train",
    } <= set(methods())


def test_lowest_alone_averages_only_the_lowest_rank_clients():
    method = get_method("lowest-alone")
    rule = method.rule(AggregationContext((2, 4), SCALE, client_ranks=(2, 4, 2)))
    updates = [random_update(0, 2, 10, 1), random_update(1, 4, 30, 2), random_update(2, 2, 30, 3)]
    out = rule(global_state(), updates)
    low = updates[0], updates[2]
    for key in ("m.lora_a", "m.lora_b", "head.w"):
        expected = (0.25 * low[0].state[key] + 0.75 * low[1].state[key]).double()
        got = out[key][:2] if key == "m.lora_a" else out[key]
        got = got[:, :2] if key == "m.lora_b" else got
        torch.testing.assert_close(got.double(), expected)
    assert out["m.lora_a"][2:].eq(0).all()  # nobody of the lowest rank holds components 2..3
    # a round that samples no lowest-rank client leaves the global adapter as it was
    before = global_state()
    kept = rule(before, [updates[1]])
    assert all(torch.equal(kept[k], before[k]) for k in before)
    # the others train nothing of the adapter; secure aggregation and DP are refused
    assert method.local_objective(4, (2, 4, 2), (2, 4)).trains_adapter is False
    assert method.local_objective(2, (2, 4, 2), (2, 4)).trains_adapter is True
    with pytest.raises(MethodUnsupported):
        method.secure_rule()
    with pytest.raises(MethodUnsupported):
        method.sensitivity()


def test_highest_alone_averages_only_the_highest_rank_clients_over_their_whole_rank():
    method = get_method("highest-alone")
    rule = method.rule(AggregationContext((2, 4), SCALE, client_ranks=(2, 4, 4)))
    updates = [random_update(0, 2, 10, 1), random_update(1, 4, 30, 2), random_update(2, 4, 10, 3)]
    out = rule(global_state(), updates)
    high = updates[1], updates[2]
    for key in ("m.lora_a", "m.lora_b", "head.w"):
        expected = (0.75 * high[0].state[key] + 0.25 * high[1].state[key]).double()
        torch.testing.assert_close(out[key].double(), expected)
    assert method.local_objective(2, (2, 4, 4), (2, 4)).trains_adapter is False
    assert method.local_objective(4, (2, 4, 4), (2, 4)).trains_adapter is True
    with pytest.raises(MethodUnsupported, match="highest-alone"):
        method.secure_rule()
