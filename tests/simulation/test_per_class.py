"""Accuracy per true class of a finished run (benchmarks/per_class.py) adds up to its accuracy."""

import json

import pytest
from benchmarks.per_class import main, per_class, scored_labels

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
    main([str(config.out), "--tiers", "1", "--out", str(tmp_path / "classes.csv")])
    assert "rank 1 |" in capsys.readouterr().out
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
