"""Client-level DP: clipping bounds each update, noise is calibrated to the rule's sensitivity."""

import math

import pytest
import torch

from prelort.aggregation import AggregationContext, get_method
from prelort.aggregation.base import ClientUpdate
from prelort.aggregation.privacy import (
    add_noise,
    average_sensitivity,
    clip_update,
    segment_sensitivity,
    update_norm_l2,
)
from prelort.errors import ConfigError
from prelort.federation import ClientReply, ServerRules, server_step
from prelort.federation.server import PrivacySettings, initial_server_state
from prelort.simulation import run_simulation
from tests_helpers import tiny


def test_clipping_scales_the_update_into_the_ball_and_keeps_its_direction():
    sent = {"a": torch.ones(2, 3), "h": torch.zeros(4)}
    state = {"a": torch.ones(2, 3) + 3.0, "h": torch.full((4,), 4.0)}  # ||delta|| = sqrt(54 + 64)
    clipped, norm = clip_update(sent, state, 2.0)
    assert math.isclose(norm, math.sqrt(118))
    assert math.isclose(update_norm_l2(sent, clipped), 2.0, rel_tol=1e-6)
    ratio = (clipped["a"] - sent["a"]) / (state["a"] - sent["a"])
    assert torch.allclose(ratio, torch.full_like(ratio, 2.0 / math.sqrt(118)))
    same, _ = clip_update(sent, state, 100.0)
    assert all(torch.equal(same[k], state[k]) for k in state)


def test_sensitivity_is_the_largest_weight_in_any_average():
    def u(k, rank, n):
        return ClientUpdate(
            k, {"m.lora_a": torch.zeros(rank, 2), "m.lora_b": torch.zeros(2, rank)}, rank, n
        )

    updates = [u(0, 2, 10), u(1, 2, 10), u(2, 16, 5)]
    assert average_sensitivity(updates) == pytest.approx(0.4)
    assert segment_sensitivity(updates) == 1.0  # the rank-16 client alone holds [2, 16)
    assert segment_sensitivity([u(0, 4, 1), u(1, 4, 3)]) == pytest.approx(0.75)


def test_noise_falls_only_where_some_update_covered():
    global_state = {
        "m.lora_a": torch.zeros(8, 400),
        "m.lora_b": torch.zeros(400, 8),
        "head@4": torch.zeros(3),
        "head@8": torch.zeros(3),
    }
    update = ClientUpdate(
        0,
        {
            "m.lora_a": torch.zeros(4, 400),
            "m.lora_b": torch.zeros(400, 4),
            "head@4": torch.zeros(3),
        },
        4,
        1,
    )
    out = add_noise(global_state, [update], 0.5, torch.Generator().manual_seed(0))
    assert out["m.lora_a"][4:].eq(0).all() and out["m.lora_b"][:, 4:].eq(0).all()
    assert out["head@8"].eq(0).all() and not out["head@4"].eq(0).all()
    assert out["m.lora_a"][:4].std().item() == pytest.approx(0.5, rel=0.05)


IN, OUT, R = 3, 2, 4


def reply(client, rank, value, examples=1):
    state = {"m.lora_a": torch.full((rank, IN), value), "m.lora_b": torch.full((OUT, rank), value)}
    return ClientReply(client, state, rank, examples, 0.5)


def rules_for(method, privacy):
    m = get_method(method)
    fresh = {"m.lora_a": torch.zeros(R, IN), "m.lora_b": torch.zeros(OUT, R)}
    context = AggregationContext((1, 2, 4), 1.0, fresh)
    server = initial_server_state(m, fresh, (1, 2, 4))
    return server, ServerRules.for_run(m, context, (1, 2, 4), privacy=privacy)


def test_the_server_step_clips_adds_calibrated_noise_and_reports_it():
    replies = [reply(0, 1, 1.0, 3), reply(1, 2, 0.01, 1), reply(2, 4, 5.0, 2)]
    server, plain = rules_for("prelort", None)
    _, loose = rules_for("prelort", PrivacySettings(1e6, 0.0, 0))
    reference = server_step(server, [0, 1, 2], replies, plain).server.global_state
    same = server_step(server, [0, 1, 2], replies, loose)
    for key, value in reference.items():
        assert torch.equal(same.server.global_state[key], value)  # no clip, no noise: no change
    assert same.traffic["privacy"]["clipped"] == 0

    _, strict = rules_for("prelort", PrivacySettings(1.0, 2.0, 7))
    outcome = server_step(server, [0, 1, 2], replies, strict)
    record = outcome.traffic["privacy"]
    assert (
        record["clipped"] == 2
    )  # the updates of norm sqrt(5) and 5 * sqrt(20); not 0.01 * sqrt(10)
    assert record["noise_std"] == pytest.approx(2.0 * 1.0 * 1.0)  # the lone rank-4 client: weight 1
    again = server_step(server, [0, 1, 2], replies, strict)  # a resumed round draws the same noise
    for key, value in outcome.server.global_state.items():
        assert torch.equal(again.server.global_state[key], value)
    assert plain.privacy is None and outcome.traffic["privacy"] is not None


def test_dp_settings_are_checked_once_at_the_edge(tiny_bert_dir, topic_jsonl, tmp_path):
    with pytest.raises(ConfigError, match="dp_noise: needs dp_clip"):
        tiny(tiny_bert_dir, topic_jsonl, tmp_path, dp_noise=1.0)
    with pytest.raises(ConfigError, match="dp_clip: method 'flexlora'"):
        tiny(tiny_bert_dir, topic_jsonl, tmp_path, method="flexlora", dp_clip=1.0)
    with pytest.raises(ConfigError, match="dp_clip: must be > 0"):
        tiny(tiny_bert_dir, topic_jsonl, tmp_path, dp_clip=0.0)


def test_a_private_run_reports_the_privacy_of_every_round(tiny_bert_dir, topic_jsonl, tmp_path):
    config = tiny(
        tiny_bert_dir, topic_jsonl, tmp_path, method="zeropad", dp_clip=0.05, dp_noise=1.0
    )
    result = run_simulation(config, progress=False)
    for traffic in result.traffic:
        privacy = traffic["privacy"]
        assert privacy["clip"] == 0.05 and privacy["noise_multiplier"] == 1.0
        assert privacy["noise_std"] == pytest.approx(
            0.05 * max(result.client_examples) / sum(result.client_examples)
        )
    assert all(torch.isfinite(v).all() for v in result.global_state.values())
