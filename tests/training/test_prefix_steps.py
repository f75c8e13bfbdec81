"""Prefix-scaled steps: each rank component moves the share of the truncations that use it."""

import torch

from prelort.adapters import get_state
from prelort.aggregation.prelort import PrefixStepObjective
from prelort.training.nested import prefix_step_scales
from prelort.training.objective import PLAIN
from tests_helpers import one_step, trained_adapter, without_dropout


def test_scales_are_the_share_of_truncations_containing_each_component():
    scales = prefix_step_scales([2, 4, 8], 8)
    expected = torch.tensor([3, 3, 2, 2, 1, 1, 1, 1]) / 3
    torch.testing.assert_close(scales, expected)
    assert prefix_step_scales([4], 4).tolist() == [1, 1, 1, 1]


def test_a_step_moves_each_component_by_its_share_of_the_plain_step(tiny_bert):
    adapted = trained_adapter(without_dropout(tiny_bert), head=True)
    start = get_state(adapted)
    plain, scaled = one_step(adapted, start, PLAIN), one_step(adapted, start, PrefixStepObjective())
    share = prefix_step_scales([2, 4, 8], 8)
    for key in start:
        if key.endswith("lora_a"):
            expected = start[key] + share[:, None] * (plain[key] - start[key])
        elif key.endswith("lora_b"):
            expected = start[key] + share[None, :] * (plain[key] - start[key])
        else:  # the head steps as usual
            expected = plain[key]
        torch.testing.assert_close(scaled[key], expected, rtol=1e-5, atol=1e-7)
    key = next(k for k in start if k.endswith("lora_a"))
    assert not torch.equal(scaled[key], plain[key])
