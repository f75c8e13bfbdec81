"""Re-ordering a finished run's adapter once (benchmarks/rescore.py) keeps its top tier."""

import json

from benchmarks.rescore import rescore_run

from prelort.runtime.outputs import write_outputs
from prelort.simulation import run_simulation
from prelort.simulation.reload import load_comparison
from tests_helpers import tiny


def test_the_reordered_adapter_keeps_the_top_tier_and_is_summarised_beside_its_run(
    tiny_llama_dir, headline_jsonl, tmp_path
):
    config = tiny(tiny_llama_dir, headline_jsonl, tmp_path / "cmp" / "prelort-seed0")
    result = run_simulation(config, progress=False)
    write_outputs(result, config.out)
    out = tmp_path / "cmp" / "prelort-ordered-once-seed0"
    tiers = rescore_run(config.out, out, "fixed-a")
    top = str(max(config.ranks.ladder))
    # the same rank-R product: the top tier scores as the run's own, up to float rounding
    assert abs(tiers[top]["perplexity"] - result.final[top]["perplexity"]) < 1e-3
    examples = json.loads((out / "examples.json").read_text())["tiers"]
    assert len(examples[top]["nll"]) == config.eval_examples
    assert set(load_comparison(tmp_path / "cmp").methods) == {"prelort", "prelort-ordered-once"}
    # its one round is the re-scored final one, not the source run's curve under another name
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [result.rounds[-1]["round"]]
    assert rounds[0]["tiers"][top]["perplexity"] == tiers[top]["perplexity"]


def test_the_method_trains_as_prelort_and_serves_the_reordered_adapter(
    tiny_bert_dir, topic_jsonl, tmp_path
):
    import torch

    from prelort.aggregation.ordered import svd_ordered
    from prelort.io import load_adapter
    from prelort.runtime.checkpoint import load_checkpoint

    runs = {}
    for method in ("prelort", "prelort-ordered-once"):
        config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / method, method=method, rounds=2)
        result = run_simulation(config, progress=False, checkpoint_dir=config.out)
        runs[method] = (config, result)
        write_outputs(runs[method][1], config.out)
    (paper_config, paper), (once_config, once) = runs["prelort"], runs["prelort-ordered-once"]
    # training and aggregation are the paper's: the server state it checkpoints is prelort's
    checkpoint = load_checkpoint(once_config.out)
    for key, value in paper.global_state.items():
        assert torch.equal(checkpoint.global_state[key], value), key
    # what it serves, saves and scores is that state re-ordered
    served, _ = load_adapter(once_config.out / "adapter.safetensors")
    expected = svd_ordered(paper.global_state, "fixed-a")
    for key, value in expected.items():
        assert torch.allclose(served[key], value, atol=1e-6), key
    # the top tier is the same product; the shared head reads it alike (up to float rounding)
    top = str(max(paper_config.ranks.ladder))
    assert abs(once.final[top]["accuracy"] - paper.final[top]["accuracy"]) <= 1 / 24


def test_tiers_cut_a_run_of_one_rank_to_lower_ones_and_refuse_one_above_it(
    tiny_llama_dir, headline_jsonl, tmp_path
):
    import pytest

    from prelort.errors import ConfigError

    config = tiny(
        tiny_llama_dir,
        headline_jsonl,
        tmp_path / "fedit-seed0",
        method="fedit-max",
        ranks="4",
        rounds=1,
    )
    result = run_simulation(config, progress=False)
    write_outputs(result, config.out)
    assert list(result.final) == ["4"]
    tiers = rescore_run(config.out, tmp_path / "cut", "unit-a", tiers=[4, 1, 2])
    assert list(tiers) == ["1", "2", "4"]
    assert abs(tiers["4"]["perplexity"] - result.final["4"]["perplexity"]) < 1e-3
    with pytest.raises(ConfigError, match="tiers"):
        rescore_run(config.out, tmp_path / "above", "unit-a", tiers=[2, 8])


def test_more_test_examples_rescore_the_trained_and_the_calibrated_heads_alike(
    tiny_bert_dir, topic_jsonl, tmp_path
):
    config = tiny(
        tiny_bert_dir,
        topic_jsonl,
        tmp_path / "cmp" / "prelort-seed0",
        calibration="lda",
        eval_examples=12,
    )
    result = run_simulation(config, progress=False)
    write_outputs(result, config.out)
    # the run's own examples, re-scored: every head scores as in the run
    same = rescore_run(config.out, tmp_path / "same" / "prelort-seed0", "as-is")
    for tier, metrics in result.final.items():
        for name in ("accuracy", "calibrated_accuracy"):
            assert same[tier][name] == metrics[name], (tier, name)
    # more than the split holds: all of it, and the record says how many
    out = tmp_path / "all" / "prelort-seed0"
    rescore_run(config.out, out, "as-is", eval_examples=10_000)
    recorded = json.loads((out / "metrics.json").read_text())
    n = recorded["config"]["eval_examples"]
    assert 12 < n < 10_000
    # the cost a summary shows stays the training's; the re-scoring's time is stated apart
    assert recorded["wall_seconds"] == round(result.wall_seconds, 2)
    assert recorded["rescored"]["seconds"] > 0
    examples = json.loads((out / "examples.json").read_text())["tiers"]
    for tier in result.final:
        assert len(examples[tier]["accuracy"]) == n
        assert len(examples[tier]["calibrated_accuracy"]) == n
        assert "calibrated_accuracy" in recorded["final"]["tiers"][tier]


def test_held_out_scores_only_the_test_examples_the_run_never_scored(
    tiny_llama_dir, headline_jsonl, tmp_path
):
    import pytest
    from benchmarks.per_class import scored_labels

    from prelort.data.tasks import load_task
    from prelort.errors import ConfigError
    from prelort.runtime.workbench import eval_subset, scored_rows

    config = tiny(
        tiny_llama_dir,
        headline_jsonl,
        tmp_path / "prelort-seed0",
        rounds=1,
        eval_examples=4,
        generate_examples=2,
    )
    result = run_simulation(config, progress=False)
    write_outputs(result, config.out)
    task = load_task(config.task)
    n = len(task.test)
    rows, prompts = scored_rows(task, config, held_out=True)
    seen = set(eval_subset(n, 4)) | set(eval_subset(n, 2))
    assert rows and not seen & set(rows) and len(rows) == n - len(seen)
    assert len(prompts) == 2 and set(prompts) <= set(rows)
    # without held_out, the run's own rows: what build_workbench scores in every run
    assert scored_rows(task, config) == (eval_subset(n, 4), eval_subset(n, 2))
    out = tmp_path / "held" / "prelort-seed0"
    tiers = rescore_run(config.out, out, "as-is", held_out=True)
    recorded = json.loads((out / "metrics.json").read_text())
    assert recorded["config"]["eval_examples"] == len(rows)
    assert recorded["rescored"]["held_out"] is True
    # a reader of the record finds the rows it scored again, though its config states only a count
    assert scored_labels(out)[0] == [task.test.labels[i] for i in rows]
    del recorded["rescored"]["source_eval_examples"]
    (tmp_path / "old" / "prelort-seed0").mkdir(parents=True)
    (tmp_path / "old" / "prelort-seed0" / "metrics.json").write_text(json.dumps(recorded))
    with pytest.raises(ConfigError, match="source_eval_examples"):
        scored_labels(tmp_path / "old" / "prelort-seed0")
    examples = json.loads((out / "examples.json").read_text())["tiers"]
    for tier in result.final:
        assert len(examples[tier]["nll"]) == len(rows)
        # other examples, so (on a tiny random model) another perplexity than the run's own
        assert tiers[tier]["perplexity"] != result.final[tier]["perplexity"]
    with pytest.raises(ConfigError, match="held-out"):
        rescore_run(config.out, tmp_path / "both", "as-is", eval_examples=3, held_out=True)
    whole = tiny(
        tiny_llama_dir, headline_jsonl, tmp_path / "whole-seed0", rounds=1, eval_examples=10_000
    )
    write_outputs(run_simulation(whole, progress=False), whole.out)
    with pytest.raises(ConfigError, match="none is held out"):
        rescore_run(whole.out, tmp_path / "none", "as-is", held_out=True)
