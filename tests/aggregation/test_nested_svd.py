"""prelort-svd: every prefix approximates the average of the clients' own truncations' products."""

import torch

from prelort.aggregation.base import ClientUpdate
from prelort.aggregation.nested_svd import aggregate_nested_svd
from prelort.simulation import run_simulation
from tests_helpers import tiny

IN, OUT, R, SCALE = 6, 5, 8, 2.0


def product(state, rank):
    return SCALE * state["m.lora_b"][:, :rank].double() @ state["m.lora_a"][:rank].double()


def test_each_prefix_is_its_tier_average_when_that_average_fits_the_rank():
    g = torch.Generator().manual_seed(0)
    shared_a = torch.randn(4, IN, generator=g)  # one row space: tier r's average has rank <= r
    b1, b2 = torch.randn(OUT, 2, generator=g), torch.randn(OUT, 4, generator=g)
    updates = [
        ClientUpdate(0, {"m.lora_a": shared_a[:2].clone(), "m.lora_b": b1}, 2, 3),
        ClientUpdate(1, {"m.lora_a": shared_a.clone(), "m.lora_b": b2}, 4, 1),
    ]
    global_state = {"m.lora_a": torch.full((R, IN), 7.0), "m.lora_b": torch.full((OUT, R), 7.0)}
    out = aggregate_nested_svd(global_state, updates, SCALE, ladder=(2, 4, 8))
    w1, w2 = 0.75, 0.25
    tier2 = w1 * product(updates[0].state, 2) + w2 * product(updates[1].state, 2)
    tier4 = w1 * product(updates[0].state, 2) + w2 * product(updates[1].state, 4)
    torch.testing.assert_close(product(out, 2), tier2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(product(out, 4), tier4, rtol=1e-5, atol=1e-5)
    assert out["m.lora_a"][4:].eq(7.0).all() and out["m.lora_b"][:, 4:].eq(7.0).all()  # kept


def test_a_prefix_is_the_best_rank_r_approximation_of_its_tier():
    g = torch.Generator().manual_seed(1)
    updates = [
        ClientUpdate(
            k,
            {
                "m.lora_a": torch.randn(4, IN, generator=g),
                "m.lora_b": torch.randn(OUT, 4, generator=g),
            },
            4,
            1,
        )
        for k in range(3)
    ]
    zeros = {"m.lora_a": torch.zeros(4, IN), "m.lora_b": torch.zeros(OUT, 4)}
    out = aggregate_nested_svd(zeros, updates, SCALE, ladder=(2, 4))
    tier2 = sum(product(u.state, 2) for u in updates) / 3
    best = torch.linalg.svdvals(tier2)[2:].square().sum()  # Eckart-Young: the rank-2 error floor
    assert (product(out, 2) - tier2).square().sum() <= best * (1 + 1e-6) + 1e-9


def test_prelort_svd_runs_a_federation(tiny_bert_dir, topic_jsonl, tmp_path):
    result = run_simulation(
        tiny(tiny_bert_dir, topic_jsonl, tmp_path, method="prelort-svd"), progress=False
    )
    assert result.final and all(torch.isfinite(v).all() for v in result.global_state.values())
