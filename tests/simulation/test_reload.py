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
