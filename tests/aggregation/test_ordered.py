"""prelort-ordered: PreLort's average in singular-value order, the full product unchanged."""

import torch

from prelort.aggregation.base import ClientUpdate
from prelort.aggregation.ordered import aggregate_segmentwise_ordered, svd_ordered
from prelort.aggregation.prelort import aggregate_segmentwise
from prelort.aggregation.registry import get_method
from prelort.simulation import run_simulation
from tests_helpers import secure_mean, tiny

IN, OUT, R = 9, 10, 8


def product(state, rank=R):
    return state["m.lora_b"][:, :rank].double() @ state["m.lora_a"][:rank].double()


def random_state(generator, rank=R):
    return {
        "m.lora_a": torch.randn(rank, IN, generator=generator),
        "m.lora_b": torch.randn(OUT, rank, generator=generator),
        "head.weight": torch.randn(3, OUT, generator=generator),
    }


def test_the_product_is_unchanged_and_every_prefix_is_its_best_approximation():
    state = random_state(torch.Generator().manual_seed(0))
    out = svd_ordered(state)
    torch.testing.assert_close(product(out), product(state), rtol=1e-5, atol=1e-5)
    singular = torch.linalg.svdvals(product(state))
    for r in (1, 2, 4):
        error = (product(out, r) - product(state)).square().sum()
        floor = singular[r:].square().sum()  # Eckart-Young: no rank-r matrix does better
        torch.testing.assert_close(error, floor, rtol=1e-6, atol=1e-9)
    assert out["head.weight"] is state["head.weight"]  # dense tensors pass through


def test_the_factors_are_balanced_and_in_decreasing_order():
    out = svd_ordered(random_state(torch.Generator().manual_seed(1)))
    norm_a = out["m.lora_a"].norm(dim=1)  # (R,) = sqrt(s_i)
    norm_b = out["m.lora_b"].norm(dim=0)  # (R,) = sqrt(s_i)
    torch.testing.assert_close(norm_a, norm_b, rtol=1e-5, atol=1e-6)
    assert (norm_a[:-1] >= norm_a[1:] - 1e-6).all()


def test_untrained_components_keep_a_and_zero_b_so_gradients_can_revive_them():
    g = torch.Generator().manual_seed(2)
    state = random_state(g)
    state["m.lora_b"][:, 3:] = 0.0  # components 3..7 never trained: B = 0 (LoRA's init)
    out = svd_ordered(state)
    torch.testing.assert_close(product(out), product(state), rtol=1e-5, atol=1e-5)
    assert out["m.lora_b"][:, 3:].eq(0).all()
    torch.testing.assert_close(out["m.lora_a"][3:], state["m.lora_a"][3:])
    assert out["m.lora_a"][:3].norm(dim=1).gt(0).all()


def test_the_rule_is_segmentwise_then_ordered():
    g = torch.Generator().manual_seed(3)
    global_state = random_state(g)
    updates = [
        ClientUpdate(0, random_state(g, 2), 2, 3),
        ClientUpdate(1, random_state(g, 8), 8, 1),
    ]
    plain = aggregate_segmentwise(global_state, updates, ladder=(2, 8))
    out = aggregate_segmentwise_ordered(global_state, updates, ladder=(2, 8))
    torch.testing.assert_close(product(out), product(plain), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["head.weight"], plain["head.weight"])


def test_secure_sums_give_the_same_ordered_adapter():
    g = torch.Generator().manual_seed(4)
    global_state = random_state(g)
    updates = [ClientUpdate(0, random_state(g, 2), 2, 1), ClientUpdate(1, random_state(g), R, 1)]
    method = get_method("prelort-ordered")
    from_sums = method.secure_rule()(global_state, secure_mean(updates, global_state), 0.0)
    direct = aggregate_segmentwise_ordered(global_state, updates)
    torch.testing.assert_close(product(from_sums), product(direct), rtol=1e-4, atol=1e-5)


def test_prelort_ordered_runs_a_federation(tiny_bert_dir, topic_jsonl, tmp_path):
    result = run_simulation(
        tiny(tiny_bert_dir, topic_jsonl, tmp_path, method="prelort-ordered"), progress=False
    )
    assert result.final and all(torch.isfinite(v).all() for v in result.global_state.values())


def test_the_fixed_a_split_keeps_the_product_and_gives_every_a_row_one_norm():
    state = random_state(torch.Generator().manual_seed(5))
    out = svd_ordered(state, "fixed-a")
    torch.testing.assert_close(product(out), product(state), rtol=1e-5, atol=1e-5)
    rms = state["m.lora_a"].double().norm() / R**0.5
    torch.testing.assert_close(
        out["m.lora_a"].double().norm(dim=1), rms.expand(R), rtol=1e-5, atol=0
    )
    norm_b = out["m.lora_b"].norm(dim=0)
    assert (norm_b[:-1] >= norm_b[1:] - 1e-6).all()  # B carries the decreasing singular values


def test_the_unit_a_split_keeps_the_product_and_makes_a_orthonormal():
    state = random_state(torch.Generator().manual_seed(7))
    out = svd_ordered(state, "unit-a")
    torch.testing.assert_close(product(out), product(state), rtol=1e-5, atol=1e-5)
    a = out["m.lora_a"].double()
    torch.testing.assert_close(a @ a.T, torch.eye(R, dtype=torch.float64), rtol=0, atol=1e-5)
    fixed = svd_ordered(state, "fixed-a")  # the same basis, only A's scale differs
    rms = state["m.lora_a"].double().norm() / R**0.5
    torch.testing.assert_close(fixed["m.lora_a"].double(), rms * a, rtol=1e-4, atol=1e-5)
    assert get_method("prelort-ordered-u").split == "unit-a"


def test_the_fixed_a_method_orders_its_secure_sums_with_the_fixed_a_split():
    g = torch.Generator().manual_seed(6)
    global_state = random_state(g)
    updates = [ClientUpdate(0, random_state(g, 2), 2, 1), ClientUpdate(1, random_state(g), R, 1)]
    method = get_method("prelort-ordered-a")
    from_sums = method.secure_rule()(global_state, secure_mean(updates, global_state), 0.0)
    direct = aggregate_segmentwise_ordered(global_state, updates, split="fixed-a")
    torch.testing.assert_close(from_sums["m.lora_a"], direct["m.lora_a"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(from_sums["m.lora_b"], direct["m.lora_b"], rtol=1e-4, atol=1e-5)
