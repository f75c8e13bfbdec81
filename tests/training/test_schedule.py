"""The clients' step over the rounds: the schedule's factor, and a client trained at its round's step."""

import math

import pytest

from prelort.errors import ConfigError
from prelort.runtime import federation as federation_module
from prelort.runtime.federation import prepare_federation
from prelort.runtime.workbench import build_workbench
from prelort.training.local import LocalTrainingConfig
from prelort.training.schedule import at_round, round_lr_factor
from tests_helpers import tiny


def test_a_constant_step_is_the_same_every_round():
    assert [round_lr_factor("constant", t, 5) for t in range(1, 6)] == [1.0] * 5


def test_the_cosine_step_starts_full_halves_midway_and_still_trains_in_the_last_round():
    factors = [round_lr_factor("cosine", t, 8) for t in range(1, 9)]
    assert factors[0] == 1.0
    assert factors[4] == pytest.approx(0.5)  # round 5 of 8: (1 + cos(pi / 2)) / 2
    assert all(a > b for a, b in zip(factors, factors[1:], strict=False))
    assert factors[-1] == pytest.approx((1 + math.cos(math.pi * 7 / 8)) / 2) and factors[-1] > 0


def test_an_unknown_schedule_and_a_round_outside_the_run_are_refused():
    with pytest.raises(ValueError, match="schedule 'linear'"):
        round_lr_factor("linear", 1, 4)
    for outside in (0, 5):
        with pytest.raises(ValueError, match="outside the run's rounds 1..4"):
            round_lr_factor("cosine", outside, 4)


def test_at_round_scales_the_adapter_and_the_head_alike():
    config = LocalTrainingConfig(lr=4e-3, head_lr=0.12)
    scaled = at_round(config, 0.25)
    assert (scaled.lr, scaled.head_lr) == (pytest.approx(1e-3), pytest.approx(0.03))
    assert at_round(LocalTrainingConfig(lr=1e-3), 0.5).head_lr is None  # the head follows lr
    assert at_round(config, 1.0) is config


def test_an_unknown_schedule_is_refused_in_the_config_by_its_field_name(tiny_bert_dir, topic_jsonl):
    with pytest.raises(ConfigError, match="lr_schedule"):
        tiny(tiny_bert_dir, topic_jsonl, "unused", lr_schedule="linear")


def test_each_client_trains_at_its_rounds_step(tiny_bert_dir, topic_jsonl, tmp_path, monkeypatch):
    """The in-process simulation and every Flower node go through ``train_client``; it must hand
    local training the round's decayed step, whoever calls it."""
    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "run", rounds=4, lr_schedule="cosine")
    fed = prepare_federation(config, build_workbench(config))
    seen = []

    class Recorded(Exception):
        pass

    def recording_step(*args):
        seen.append(args[7].lr)  # client_step's eighth argument: the local training settings
        raise Recorded

    monkeypatch.setattr(federation_module, "client_step", recording_step)
    prefix = fed.initial.prefix(0)
    for round_index in (1, 3, 4):
        with pytest.raises(Recorded):
            fed.train_client(prefix, 0, round_index)
    expected = [config.lr * round_lr_factor("cosine", t, 4) for t in (1, 3, 4)]
    assert seen == pytest.approx(expected)
    assert seen[0] == config.lr and seen[2] < seen[1] < seen[0]
