"""raFLoRA's rank-partitioned rule against a dense computation of the weighted products."""

import pytest
import torch

from prelort.aggregation import get_method
from prelort.aggregation.raflora import aggregate_raflora, holder_weights
from prelort.errors import MethodUnsupported
from tests_helpers import lora_update

IN, OUT, R, SCALE = 7, 6, 4, 0.5


def update(client, rank, examples, seed):
    return lora_update(client, rank, examples, seed, IN, OUT)


def zeros():
    return {"m.lora_a": torch.zeros(R, IN), "m.lora_b": torch.zeros(OUT, R)}


def dense_partitioned(updates):
    """sum over components i of the average of s b_{k,i} a_{k,i}^T over the clients holding i."""
    total = torch.zeros(OUT, IN, dtype=torch.float64)
    for i in range(max(u.rank for u in updates)):
        holders = [u for u in updates if u.rank > i]
        n = sum(u.num_examples for u in holders)
        for u in holders:
            b, a = u.state["m.lora_b"][:, i].double(), u.state["m.lora_a"][i].double()
            total += u.num_examples / n * SCALE * torch.outer(b, a)
    return total


def best_rank(m, r):
    u, s, vh = torch.linalg.svd(m)
    return u[:, :r] @ torch.diag(s[:r]) @ vh[:r]


def test_each_prefix_is_the_best_approximation_of_the_partition_weighted_update():
    updates = [update(0, 1, 3, 1), update(1, 2, 1, 2), update(2, 4, 2, 3)]
    out = aggregate_raflora(zeros(), updates, SCALE)
    dense = dense_partitioned(updates)
    for r in (1, 2, 4):
        got = SCALE * out["m.lora_b"][:, :r].double() @ out["m.lora_a"][:r].double()
        torch.testing.assert_close(got, best_rank(dense, r), atol=1e-5, rtol=1e-5)


def test_weights_of_each_index_sum_to_one_over_its_holders():
    updates = [update(0, 1, 3, 1), update(1, 2, 1, 2), update(2, 4, 2, 3)]
    weights = holder_weights(updates)
    assert [w.tolist() for w in weights] == [[0.5], [1 / 6, 1 / 3], [1 / 3, 2 / 3, 1.0, 1.0]]


def test_high_components_are_not_diluted_as_in_flexlora():
    # one rank-4 client among three: FlexLoRA divides its top components by everyone's weight
    updates = [update(0, 1, 1, 1), update(1, 1, 1, 2), update(2, 4, 1, 3)]
    ra = aggregate_raflora(zeros(), updates, SCALE)
    flex = get_method("flexlora").rule(_context())(zeros(), updates)
    energy = lambda s: float((s["m.lora_b"] @ s["m.lora_a"]).norm())  # noqa: E731
    assert energy(ra) > energy(flex)


def _context():
    from prelort.aggregation import AggregationContext

    return AggregationContext((1, 4), SCALE)


def test_it_refuses_secure_aggregation_and_dp_with_a_typed_error():
    method = get_method("raflora")
    with pytest.raises(MethodUnsupported, match="secure_aggregation"):
        method.secure_rule()
    with pytest.raises(MethodUnsupported, match="dp_clip"):
        method.sensitivity()
