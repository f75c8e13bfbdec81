"""Closed-form checks of the aggregation rules on hand-built adapters."""

import pytest
import torch

from prelort.aggregation import (
    ClientUpdate,
    aggregate_segmentwise,
    aggregate_zeropad,
    get_method,
)
from prelort.aggregation.segments import segment_bounds
from prelort.errors import AdapterError, ConfigError

IN, OUT, R = 3, 2, 4


def full_state(value: float) -> dict[str, torch.Tensor]:
    return {
        "m.lora_a": torch.full((R, IN), value),
        "m.lora_b": torch.full((OUT, R), value),
        "head.weight": torch.full((2, 2), value),
    }


def update(client: int, rank: int, value: float, examples: int = 1) -> ClientUpdate:
    state = {
        "m.lora_a": torch.full((rank, IN), value),
        "m.lora_b": torch.full((OUT, rank), value),
        "head.weight": torch.full((2, 2), value),
    }
    return ClientUpdate(client, state, rank, examples)


def test_segment_bounds():
    assert segment_bounds([2, 4, 8], 16) == [(0, 2), (2, 4), (4, 8), (8, 16)]
    assert segment_bounds([4, 4, 16], 16) == [(0, 4), (4, 16)]


def test_equal_ranks_equal_plain_fedavg():
    g = torch.Generator().manual_seed(0)
    updates = []
    for k, n in enumerate([3, 1, 6]):
        state = {
            "m.lora_a": torch.randn(R, IN, generator=g),
            "m.lora_b": torch.randn(OUT, R, generator=g),
            "head.weight": torch.randn(2, 2, generator=g),
        }
        updates.append(ClientUpdate(k, state, R, n))
    weights = torch.tensor([3.0, 1.0, 6.0]) / 10
    out = aggregate_segmentwise(full_state(0.0), updates, ladder=(1, 2, 4))
    for key in out:
        expected = sum(w * u.state[key] for w, u in zip(weights, updates, strict=True))
        torch.testing.assert_close(out[key], expected)
    torch.testing.assert_close(
        aggregate_zeropad(full_state(0.0), updates)["m.lora_a"], out["m.lora_a"]
    )


def test_segment_is_averaged_over_its_holders_only():
    # client 0: rank 2, value 1, 1 example; client 1: rank 4, value 5, 3 examples
    out = aggregate_segmentwise(full_state(9.0), [update(0, 2, 1.0, 1), update(1, 4, 5.0, 3)])
    a, b = out["m.lora_a"], out["m.lora_b"]
    torch.testing.assert_close(a[:2], torch.full((2, IN), (1 * 1 + 5 * 3) / 4))
    torch.testing.assert_close(a[2:], torch.full((2, IN), 5.0))  # only client 1 holds [2, 4)
    torch.testing.assert_close(b[:, :2], torch.full((OUT, 2), 4.0))
    torch.testing.assert_close(b[:, 2:], torch.full((OUT, 2), 5.0))
    torch.testing.assert_close(out["head.weight"], torch.full((2, 2), 4.0))


def test_uncovered_segment_keeps_its_value():
    out = aggregate_segmentwise(
        full_state(9.0), [update(0, 1, 1.0), update(1, 2, 3.0)], ladder=(1, 2, 4)
    )
    torch.testing.assert_close(out["m.lora_a"][0], torch.full((IN,), 2.0))
    torch.testing.assert_close(out["m.lora_a"][1], torch.full((IN,), 3.0))
    torch.testing.assert_close(out["m.lora_a"][2:], torch.full((2, IN), 9.0))
    torch.testing.assert_close(out["m.lora_b"][:, 2:], torch.full((OUT, 2), 9.0))


def test_zeropad_dilutes_and_resets_uncovered():
    out = aggregate_zeropad(full_state(9.0), [update(0, 2, 1.0, 1), update(1, 4, 5.0, 3)])
    torch.testing.assert_close(out["m.lora_a"][2:], torch.full((2, IN), 5.0 * 3 / 4))
    out = aggregate_zeropad(full_state(9.0), [update(0, 2, 2.0)])
    torch.testing.assert_close(out["m.lora_a"][2:], torch.zeros(2, IN))


def test_aggregation_does_not_modify_inputs():
    g = full_state(9.0)
    before = {k: v.clone() for k, v in g.items()}
    aggregate_segmentwise(g, [update(0, 2, 1.0)])
    for k in g:
        assert torch.equal(g[k], before[k])


def test_bad_updates_are_refused():
    with pytest.raises(AdapterError, match="above max_rank"):
        aggregate_segmentwise(full_state(0.0), [update(0, 8, 1.0)])
    with pytest.raises(AdapterError, match="no client updates"):
        aggregate_zeropad(full_state(0.0), [])
    with pytest.raises(AdapterError, match="claims rank"):
        ClientUpdate(0, update(0, 2, 1.0).state, 3, 1)
    with pytest.raises(AdapterError, match="num_examples"):
        update(0, 2, 1.0, 0)
    bad = update(0, 2, 1.0)
    bad.state["other.weight"] = torch.zeros(2, 2)
    with pytest.raises(AdapterError, match="keys differ"):
        aggregate_segmentwise(full_state(0.0), [bad])
    bad = update(0, 2, 1.0)
    bad.state.pop("m.lora_b")
    with pytest.raises(AdapterError):
        aggregate_segmentwise(full_state(0.0), [bad])


def tiered(state: dict[str, torch.Tensor], tiers: list[int]) -> dict[str, torch.Tensor]:
    """The state with its shared head replaced by per-tier copies ``head.weight@t``."""
    head = state.pop("head.weight")
    return {**state, **{f"head.weight@{t}": head.clone() for t in tiers}}


@pytest.mark.parametrize("rule", [aggregate_segmentwise, aggregate_zeropad])
def test_tier_heads_average_over_the_clients_that_trained_them(rule):
    """head@t over the clients that sent it (renormalised weights); a head nobody sent is kept."""
    g = tiered(full_state(5.0), [1, 2, 4])
    low = update(0, 2, 1.0, examples=1)
    high = update(1, 4, 3.0, examples=3)
    low = ClientUpdate(0, tiered(dict(low.state), [1, 2]), 2, 1)
    high = ClientUpdate(1, tiered(dict(high.state), [4]), 4, 3)
    out = rule(g, [low, high])
    assert torch.allclose(out["head.weight@1"], torch.full((2, 2), 1.0))  # only the rank-2 client
    assert torch.allclose(out["head.weight@2"], torch.full((2, 2), 1.0))
    assert torch.allclose(out["head.weight@4"], torch.full((2, 2), 3.0))  # only the rank-4 client
    nobody = rule(g, [low])
    assert torch.equal(nobody["head.weight@4"], g["head.weight@4"])


def test_registry():
    assert get_method("prelort").nested == "all"
    assert get_method("zeropad").nested == "off"
    with pytest.raises(ConfigError, match="choose one of"):
        get_method("fedprox")
