"""RB-LoRA's rank-balanced rule against a dense computation, and where it meets raFLoRA's."""

import torch

from prelort.aggregation import AggregationContext, get_method
from prelort.aggregation.raflora import aggregate_raflora
from prelort.aggregation.rblora import aggregate_rblora, rank_balanced_weights
from tests_helpers import lora_update

IN, OUT, R, SCALE = 7, 6, 4, 0.5


def update(client, rank, examples, seed):
    return lora_update(client, rank, examples, seed, IN, OUT)


def zeros():
    return {"m.lora_a": torch.zeros(R, IN), "m.lora_b": torch.zeros(OUT, R)}


def product(state, r):
    return SCALE * state["m.lora_b"][:, :r].double() @ state["m.lora_a"][:r].double()


def test_weights_are_data_share_times_the_federations_rank_rarity():
    updates = [update(0, 1, 2, 1), update(2, 4, 2, 3)]  # client 1 (rank 2) sat out
    weights = rank_balanced_weights(updates, client_ranks=(1, 2, 4), client_examples=(2, 4, 2))
    # alpha = (1/2, 1/2); beta = 8 / (8, 6, 2, 2) per index
    assert [w.tolist() for w in weights] == [[0.5], [0.5, 0.5 * 8 / 6, 2.0, 2.0]]


def test_the_aggregate_is_the_svd_projection_of_the_weighted_components():
    updates = [update(0, 1, 2, 1), update(2, 4, 2, 3)]
    out = aggregate_rblora(zeros(), updates, SCALE, (1, 2, 4), (2, 4, 2))
    weights = rank_balanced_weights(updates, (1, 2, 4), (2, 4, 2))
    dense = sum(
        SCALE * (u.state["m.lora_b"].double() * w[None, :]) @ u.state["m.lora_a"].double()
        for u, w in zip(updates, weights, strict=True)
    )
    u_, s, vh = torch.linalg.svd(dense)
    for r in (1, 2, 4):
        best = u_[:, :r] @ torch.diag(s[:r]) @ vh[:r]
        torch.testing.assert_close(product(out, r), best, atol=1e-5, rtol=1e-5)
    a = out["m.lora_a"].double()
    torch.testing.assert_close(a @ a.T, torch.eye(R, dtype=torch.float64), atol=1e-5, rtol=0)


def test_with_the_whole_federation_in_the_round_it_equals_raflora():
    updates = [update(0, 1, 3, 1), update(1, 2, 1, 2), update(2, 4, 2, 3)]
    rb = aggregate_rblora(zeros(), updates, SCALE, (1, 2, 4), (3, 1, 2))
    ra = aggregate_raflora(zeros(), updates, SCALE)
    for r in (1, 2, 4):  # same products; the factors differ in how S is split
        torch.testing.assert_close(product(rb, r), product(ra, r), atol=1e-5, rtol=1e-5)


def test_the_run_passes_the_federation_to_the_rule():
    updates = [update(0, 1, 2, 1), update(2, 4, 2, 3)]
    context = AggregationContext((1, 2, 4), SCALE, None, (1, 2, 4), (2.0, 4.0, 2.0))
    via_method = get_method("rblora").rule(context)(zeros(), updates)
    direct = aggregate_rblora(zeros(), updates, SCALE, (1, 2, 4), (2, 4, 2))
    for key in direct:
        assert torch.equal(via_method[key], direct[key])
