"""Scores per true class of a finished run (benchmarks/per_class.py) add up to its scores."""

import json

import pytest
from benchmarks.per_class import main, per_class, rows_by_rank, scored_labels

from prelort.errors import ConfigError
from prelort.runtime.outputs import write_outputs
from prelort.runtime.workbench import build_workbench
from prelort.simulation import run_simulation
from tests_helpers import tiny


def test_per_class_scores_weigh_back_to_each_tiers_accuracy(
    tiny_bert_dir, topic_jsonl, tmp_path, capsys
):
    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "prelort-seed0", rounds=1)
    result = run_simulation(config, progress=False)
    write_outputs(result, config.out)
    # the labels read from the task alone are those of the rows the run scored, in its order
    labels, names = scored_labels(config.out)
    bench = build_workbench(config)
    assert labels == bench.test.labels and names == bench.task.label_names
    table = per_class(config.out)
    assert set(table) == {str(t) for t in config.ranks.ladder}
    for tier, classes in table.items():
        assert sum(n for _, n in classes.values()) == config.eval_examples
        weighted = sum(score * n for score, n in classes.values()) / config.eval_examples
        assert weighted == pytest.approx(result.final[tier]["accuracy"])
    # the partition rebuilt from the settings is the run's: each rank's rows add up to its clients'
    held = rows_by_rank(config.out)
    for rank in set(result.client_ranks):
        mine = [
            n for r, n in zip(result.client_ranks, result.client_examples, strict=True) if r == rank
        ]
        assert sum(by_rank[rank] for by_rank in held.values()) == sum(mine)
    main([str(config.out), "--tiers", "1", "--holders", "--out", str(tmp_path / "classes.csv")])
    shown = capsys.readouterr().out
    assert "rank 1 |" in shown and "prelort-seed0, clients of rank 4 |" in shown
    assert (tmp_path / "classes.csv").read_text().startswith("run,tier,class,score,n")


def test_scores_that_do_not_match_the_test_rows_are_refused(tiny_bert_dir, topic_jsonl, tmp_path):
    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "prelort-seed0", rounds=1)
    write_outputs(run_simulation(config, progress=False), config.out)
    examples = config.out / "examples.json"
    data = json.loads(examples.read_text())
    data["tiers"]["1"]["accuracy"] = data["tiers"]["1"]["accuracy"][:-1]
    examples.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="scores at tier 1"):
        per_class(config.out)


def test_a_generation_run_is_scored_per_partition_group(tiny_llama_dir, headline_jsonl, tmp_path):
    config = tiny(tiny_llama_dir, headline_jsonl, tmp_path / "fedit-min-seed0", rounds=1)
    result = run_simulation(config, progress=False)
    write_outputs(result, config.out)
    table = per_class(config.out, "nll")
    assert set(table) == {str(t) for t in config.ranks.ladder}
    examples = json.loads((config.out / "examples.json").read_text())["tiers"]
    for tier, groups in table.items():
        assert sum(n for _, n in groups.values()) == config.eval_examples
        weighted = sum(score * n for score, n in groups.values()) / config.eval_examples
        assert weighted == pytest.approx(sum(examples[tier]["nll"]) / config.eval_examples)
