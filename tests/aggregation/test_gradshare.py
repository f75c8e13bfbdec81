"""Gradient-shared steps: AdamW's step per module, divided among the components as the gradient is."""

import pytest
import torch

from prelort.adapters import get_state
from prelort.aggregation.gradshare import GradientShareObjective, gradient_share_scales
from prelort.aggregation.method import AggregationContext
from prelort.aggregation.registry import get_method
from prelort.training.objective import PLAIN
from tests_helpers import lora_update, one_step, trained_adapter, without_dropout


def test_scales_follow_the_gradient_norms_with_unit_mean_square():
    grad_a = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # (r=3, in=2)
    grad_b = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # (out=2, r=3)
    scales = gradient_share_scales(grad_a, grad_b)  # norms 5, 1, 0
    torch.testing.assert_close(scales, torch.tensor([5.0, 1.0, 0.0]) / (26 / 3) ** 0.5)
    assert scales.pow(2).mean().item() == pytest.approx(1.0)
    zero = gradient_share_scales(torch.zeros(3, 2), torch.zeros(2, 3))
    assert zero.tolist() == [1.0, 1.0, 1.0]
    # capped at AdamW's own step: the strong component moves no further, the weak ones as before
    capped = gradient_share_scales(grad_a, grad_b, cap=1.0)
    torch.testing.assert_close(capped, torch.stack([torch.tensor(1.0), scales[1], scales[2]]))


def test_a_step_moves_each_component_by_one_factor_whose_mean_square_is_one(tiny_bert):
    adapted = trained_adapter(without_dropout(tiny_bert), head=True)
    start = get_state(adapted)
    plain = one_step(adapted, start, PLAIN)
    shared = one_step(adapted, start, GradientShareObjective())
    spread = []
    for key in (k for k in start if k.endswith("lora_a")):
        b_key = key[: -len("lora_a")] + "lora_b"
        da, da_plain = shared[key] - start[key], plain[key] - start[key]  # (r, in)
        db, db_plain = shared[b_key] - start[b_key], plain[b_key] - start[b_key]  # (out, r)
        scale = (da * da_plain).sum(1) / da_plain.pow(2).sum(1)
        torch.testing.assert_close(da, scale[:, None] * da_plain, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(db, scale[None, :] * db_plain, rtol=1e-4, atol=1e-7)
        assert scale.pow(2).mean().item() == pytest.approx(1.0, rel=1e-4)
        spread.append(float(scale.max() - scale.min()))
    assert max(spread) > 0.1  # the components' gradients differ, so their steps do
    for key in (k for k in start if "lora" not in k):  # the head steps as usual
        torch.testing.assert_close(shared[key], plain[key])


def two_clients():
    """A zero global adapter of rank 4, one rank-2 and one rank-4 update, and their context."""
    zeros = {"m.lora_a": torch.zeros(4, 6), "m.lora_b": torch.zeros(5, 4)}
    updates = [
        lora_update(0, 2, 3, seed=1, in_features=6, out_features=5),
        lora_update(1, 4, 1, seed=2, in_features=6, out_features=5),
    ]
    return zeros, updates, AggregationContext(ladder=(2, 4), scale=1.0)


def test_the_method_aggregates_as_ordered_u_and_trains_with_shared_steps():
    method, ordered_u = get_method("prelort-ordered-g"), get_method("prelort-ordered-u")
    assert method.nested == "all"
    zeros, updates, context = two_clients()
    ours = method.rule(context)(zeros, updates)
    theirs = ordered_u.rule(context)(zeros, updates)
    assert all(torch.equal(ours[key], theirs[key]) for key in zeros)
    assert not torch.equal(ours["m.lora_b"], zeros["m.lora_b"])
    assert isinstance(method.local_objective(4, [2, 4, 8], [2, 4, 8]), GradientShareObjective)


def test_the_capped_method_never_steps_a_component_further_than_adamw(tiny_bert):
    method = get_method("prelort-ordered-gc")
    objective = method.local_objective(4, [2, 4, 8], [2, 4, 8])
    assert isinstance(objective, GradientShareObjective) and objective.cap == 1.0
    adapted = trained_adapter(without_dropout(tiny_bert), head=True)
    start = get_state(adapted)
    plain = one_step(adapted, start, PLAIN)
    capped = one_step(adapted, start, objective)
    below = []
    for key in (k for k in start if k.endswith("lora_a")):
        da, da_plain = capped[key] - start[key], plain[key] - start[key]  # (r, in)
        scale = (da * da_plain).sum(1) / da_plain.pow(2).sum(1)
        torch.testing.assert_close(da, scale[:, None] * da_plain, rtol=1e-4, atol=1e-7)
        assert scale.max().item() <= 1.0 + 1e-4
        below.append(float(scale.min()))
    assert min(below) < 0.9  # the weak components move less than AdamW moved them


def test_the_balanced_variant_splits_the_singular_values_evenly_and_shares_the_step():
    method = get_method("prelort-ordered-gb")
    assert method.nested == "all" and method.group == "trial"
    assert isinstance(method.local_objective(4, [2, 4, 8], [2, 4, 8]), GradientShareObjective)
    zeros, updates, context = two_clients()
    ours = method.rule(context)(zeros, updates)
    theirs = get_method("prelort-ordered-g").rule(context)(zeros, updates)
    a, b = ours["m.lora_a"], ours["m.lora_b"]
    torch.testing.assert_close(b @ a, theirs["m.lora_b"] @ theirs["m.lora_a"])
    singular = torch.linalg.svdvals(b @ a)[: a.shape[0]]  # rank <= R
    live = singular > 1e-6 * singular[0]
    # sqrt(S) to each factor: row i of A and column i of B both sqrt(sigma_i) long
    torch.testing.assert_close(a.norm(dim=1)[live], singular[live].sqrt(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b.norm(dim=0)[live], singular[live].sqrt(), rtol=1e-4, atol=1e-6)
