"""Property-based tests: parsers never crash on any input, aggregation invariants hold for any input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prelort.aggregation import ClientUpdate, aggregate_segmentwise, aggregate_zeropad
from prelort.config import config_from_mapping, parse_ranks
from prelort.data.tasks import normalize_label
from prelort.errors import ConfigError

IN, OUT, R = 3, 2, 8
LADDER = (1, 2, 4, 8)


@given(st.text(max_size=40))
def test_parse_ranks_reads_or_refuses_any_text(text):
    try:
        spec = parse_ranks(text)
    except ConfigError as e:
        assert str(e).startswith("ranks:")
    else:
        assert spec.ranks and all(r >= 1 for r in spec.ranks)


@given(
    st.sampled_from(["rounds", "lr", "alpha", "lora_dropout", "clients", "head_lr", "seed"]),
    st.one_of(st.text(max_size=12), st.floats(allow_nan=True), st.integers(), st.booleans()),
)
def test_config_reads_or_refuses_any_value_naming_the_field(name, value):
    try:
        config = config_from_mapping({name: value})
    except ConfigError as e:
        assert str(e).startswith(name), str(e)
    else:
        got = getattr(config, name)
        assert not isinstance(got, float) or math.isfinite(got)


@given(st.one_of(st.none(), st.text(max_size=10), st.integers(), st.floats(), st.booleans()))
def test_label_normalisation_is_idempotent(value):
    label = normalize_label(value)
    assert label is None or normalize_label(label) == label


def test_the_same_label_written_two_ways_is_one_class():
    assert (
        normalize_label(1) == normalize_label("1") == normalize_label(1.0) == normalize_label(" 1 ")
    )
    assert normalize_label(None) is None and normalize_label("  ") is None
    assert normalize_label("Sport") != normalize_label("sport")


def _state(rank: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "m.lora_a": torch.randn(rank, IN, generator=g, dtype=torch.float64).float(),
        "m.lora_b": torch.randn(OUT, rank, generator=g, dtype=torch.float64).float(),
        "head.weight": torch.randn(2, 2, generator=g),
    }


clients = st.lists(
    st.tuples(st.sampled_from(LADDER), st.integers(1, 50), st.integers(0, 10_000)),
    min_size=1,
    max_size=6,
)


@settings(max_examples=60, deadline=None)
@given(clients, st.randoms())
def test_any_permutation_of_clients_gives_the_same_result(spec, rnd):
    updates = [ClientUpdate(k, _state(r, s), r, n) for k, (r, n, s) in enumerate(spec)]
    shuffled = list(updates)
    rnd.shuffle(shuffled)
    g = _state(R, 99)
    for rule in (aggregate_segmentwise, aggregate_zeropad):
        a, b = rule(g, updates), rule(g, shuffled)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(clients)
def test_a_segment_nobody_holds_is_unchanged(spec):
    updates = [ClientUpdate(k, _state(r, s), r, n) for k, (r, n, s) in enumerate(spec)]
    g = _state(R, 7)
    out = aggregate_segmentwise(g, updates, ladder=LADDER)
    top = max(u.rank for u in updates)
    assert torch.equal(out["m.lora_a"][top:], g["m.lora_a"][top:])
    assert torch.equal(out["m.lora_b"][:, top:], g["m.lora_b"][:, top:])


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(LADDER),
    st.lists(st.tuples(st.integers(1, 50), st.integers(0, 999)), min_size=1, max_size=5),
)
def test_segmentwise_equals_fedavg_at_equal_ranks(rank, spec):
    updates = [ClientUpdate(k, _state(rank, s), rank, n) for k, (n, s) in enumerate(spec)]
    g = _state(R, 3)
    out = aggregate_segmentwise(g, updates, ladder=LADDER)
    total = sum(n for n, _ in spec)
    expected_a = sum(
        n / total * u.state["m.lora_a"].double() for (n, _), u in zip(spec, updates, strict=True)
    )
    torch.testing.assert_close(out["m.lora_a"][:rank], expected_a.float(), rtol=1e-5, atol=1e-6)
    assert torch.equal(out["m.lora_a"][rank:], g["m.lora_a"][rank:])


@pytest.mark.parametrize("rule", [aggregate_segmentwise, aggregate_zeropad])
def test_weights_scale_invariance(rule):
    updates = [ClientUpdate(0, _state(2, 1), 2, 3), ClientUpdate(1, _state(8, 2), 8, 5)]
    scaled = [ClientUpdate(u.client_id, u.state, u.rank, u.num_examples * 7) for u in updates]
    g = _state(R, 0)
    a, b = rule(g, updates), rule(g, scaled)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
