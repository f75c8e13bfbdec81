"""simulation/reload.py: a comparison loaded back from its run folders, and what a malformed one gets."""

import json

import pytest

from prelort.errors import DataError
from prelort.simulation.reload import load_comparison
from tests_helpers import finished_run


@pytest.mark.parametrize("text", ["[1, 2]", '{"final": {"tiers": {"2": {"accuracy": 1}}}}'])
def test_a_metrics_file_without_a_config_is_named(tmp_path, text):
    finished_run(tmp_path, "prelort-ordered-g", {"2": [1.0]})
    run = finished_run(tmp_path, "fedit-min", {"2": [1.0]})
    (run / "metrics.json").write_text(text)
    with pytest.raises(DataError, match="fedit-min-seed0/metrics.json: not a run's metrics file"):
        load_comparison(tmp_path)


def test_a_finished_run_without_its_client_lists_is_named(tmp_path):
    run = finished_run(tmp_path, "fedit-min", {"2": [1.0]})
    metrics = json.loads((run / "metrics.json").read_text())
    del metrics["client_ranks"]
    (run / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(DataError, match="without client_ranks"):
        load_comparison(tmp_path)


def test_a_folder_that_is_no_run_is_left_out(tmp_path, caplog):
    finished_run(tmp_path, "prelort-ordered-g", {"2": [1.0]})
    copy = finished_run(tmp_path / "elsewhere", "fedit-min", {"2": [0.0]})
    copy.rename(tmp_path / "fedit-min-seed0-old")
    comparison = load_comparison(tmp_path)
    assert comparison.methods == ["prelort-ordered-g"] and comparison.seeds == [0]
    assert "fedit-min-seed0-old: not a run folder" in caplog.text


def test_seeds_keep_those_seeds_runs_and_a_missing_seed_is_named(tmp_path):
    for seed in (0, 1):
        run = finished_run(tmp_path / f"s{seed}", "prelort-ordered-g", {"2": [float(seed)]})
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["config"]["seed"] = seed
        (run / "metrics.json").write_text(json.dumps(metrics))
        run.rename(tmp_path / f"prelort-ordered-g-seed{seed}")
    assert load_comparison(tmp_path).seeds == [0, 1]
    one = load_comparison(tmp_path, seeds={1})
    assert one.seeds == [1] and list(one.runs) == [("prelort-ordered-g", 1)]
    with pytest.raises(
        DataError, match="seeds: no finished run of seed 2; the folders hold seeds 0, 1"
    ):
        load_comparison(tmp_path, seeds={1, 2})
    with pytest.raises(DataError, match="no finished run of seed 5"):
        load_comparison(tmp_path, seeds={5})
