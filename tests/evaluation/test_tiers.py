"""Scoring one global adapter at every tier: what each objective gives, per tier."""

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from prelort.adapters.state import get_state
from prelort.data.encoding import EncodedSplit
from prelort.evaluation.objectives import SAMPLES, TaskObjective
from prelort.evaluation.tiers import (
    GENERATIVE,
    HEAD,
    EvalInputs,
    TierScore,
    evaluate_tiers,
)
from tests_helpers import trained_adapter

PAD = SimpleNamespace(pad_token_id=0)
CLASSIFIED = EncodedSplit([[2, 5, 6, 3], [2, 7, 3], [2, 8, 9, 10, 3], [2, 11, 3]], [0, 1, 0, 1])


def test_each_tier_is_scored_at_its_own_truncation(tiny_bert):
    adapted = trained_adapter(tiny_bert, rank=4, head=True)
    state = get_state(adapted)
    evaluation = evaluate_tiers(adapted, state, [1, 4], HEAD, EvalInputs(CLASSIFIED, PAD, 3))

    assert set(evaluation.metrics) == set(evaluation.per_example) == {"1", "4"}
    for tier in ("1", "4"):
        correct = evaluation.per_example[tier]["accuracy"]
        assert len(correct) == len(CLASSIFIED)
        assert evaluation.metrics[tier]["accuracy"] == pytest.approx(sum(correct) / len(correct))
        assert evaluation.head_inputs[tier].shape == (len(CLASSIFIED), tiny_bert.config.hidden_size)
    # a truncation that reads other adapter components gives other features
    assert not torch.allclose(evaluation.head_inputs["1"], evaluation.head_inputs["4"])
    adapted.set_active_rank(1)
    assert torch.equal(
        HEAD.score(adapted, EvalInputs(CLASSIFIED, PAD, 3)).head_inputs,
        evaluation.head_inputs["1"],
    )


@dataclass(frozen=True)
class Counting(TaskObjective):
    """Scores the active rank and counts its calls."""

    calls: list[int] = field(default_factory=list)

    def score(self, adapted, inputs):
        rank = next(iter(adapted.layers.values())).active_rank
        self.calls.append(rank)
        return TierScore({"rank": float(rank)}, per_example={"rank": [1.0]})


def test_a_model_the_same_at_every_tier_is_scored_once(tiny_bert):
    adapted = trained_adapter(tiny_bert, rank=4)
    state = get_state(adapted)
    counting = Counting("counting", "classification", 8)
    evaluation = evaluate_tiers(
        adapted, state, [1, 2, 4], counting, EvalInputs(CLASSIFIED, PAD), same_at_every_tier=True
    )
    assert counting.calls == [1]
    assert evaluation.metrics == {"1": {"rank": 1.0}, "2": {"rank": 1.0}, "4": {"rank": 1.0}}
    # one tier's record is its own, though scored once: what is added to one leaves the others
    evaluation.metrics["1"]["calibrated"] = 0.5
    evaluation.per_example["1"]["calibrated"] = [1.0]
    assert evaluation.metrics["2"] == {"rank": 1.0}
    assert set(evaluation.per_example["2"]) == {"rank"}

    evaluation = evaluate_tiers(adapted, state, [1, 2, 4], counting, EvalInputs(CLASSIFIED, PAD))
    assert counting.calls == [1, 1, 2, 4]
    assert evaluation.metrics["4"] == {"rank": 4.0}


def test_generation_scores_per_example_and_keeps_samples_where_rouge_ran(
    tiny_llama_dir, tiny_llama
):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    adapted = trained_adapter(tiny_llama, rank=4)
    prompts = [[2, 5 + i, 6 + i] for i in range(7)]
    targets = [[7 + i, 3] for i in range(7)]
    data = EncodedSplit(prompts, [0] * 7, targets, [f"word{i}" for i in range(7)])
    state = get_state(adapted)

    without = evaluate_tiers(adapted, state, [2], GENERATIVE, EvalInputs(data, tokenizer, 4))
    assert set(without.metrics["2"]) == {"perplexity"}
    assert len(without.per_example["2"]["nll"]) == 7
    assert not without.samples and not without.head_inputs

    inputs = EvalInputs(data, tokenizer, 4, generation=data, max_new_tokens=3)
    evaluation = evaluate_tiers(adapted, state, [2, 4], GENERATIVE, inputs)
    for tier in ("2", "4"):
        rouge = evaluation.per_example[tier]["rouge_l"]
        assert evaluation.metrics[tier]["rouge_l"] == pytest.approx(sum(rouge) / 7)
        assert len(evaluation.samples[tier]) == SAMPLES
        assert [s["reference"] for s in evaluation.samples[tier]] == data.references[:SAMPLES]
    assert evaluation.metrics["2"]["perplexity"] == without.metrics["2"]["perplexity"]
