"""`prelort status` reads a run's progress from its folder: rounds, pace, time left, the last
evaluation; a run whose rounds stopped coming is told apart from one still running."""

import json
import os

import pytest
import torch
from tests.tests_helpers import finished_run

from prelort.cli import main
from prelort.config import SimulationConfig
from prelort.errors import AdapterError, DataError
from prelort.io import read_adapter_metadata
from prelort.runtime.checkpoint import CHECKPOINT_NAME, Checkpoint, save_checkpoint
from prelort.runtime.status import find_runs, format_statuses, run_status

EVALUATED = [
    {"round": 6, "tiers": {"2": {"perplexity": 20.5}, "8": {"perplexity": 19.0}}},
    {"round": 12, "tiers": {"2": {"perplexity": 18.25}, "8": {"perplexity": 17.5}}},
]


def running_run(root, name, done, rounds=48, wall=1000.0, written_ago=10.0, now=1e6):
    """A run folder after ``done`` of ``rounds`` rounds, its checkpoint written ``written_ago``
    seconds before ``now``."""
    run = root / name
    config = SimulationConfig(method="prelort", seed=3, rounds=rounds).to_dict()
    state = {"m.lora_a": torch.ones(2, 3), "m.lora_b": torch.zeros(4, 2)}
    history = [r for r in EVALUATED if r["round"] <= done]
    save_checkpoint(run, Checkpoint(done, state, [2, 8], history, [], None, config, None, wall))
    os.utime(run / CHECKPOINT_NAME, (now - written_ago, now - written_ago))
    (run / "metrics.json").write_text(json.dumps({"config": config, "rounds": history}))
    return run


def test_a_running_run_reports_its_round_pace_time_left_and_last_evaluation(tmp_path):
    run = running_run(tmp_path, "prelort-seed3", done=20, wall=2000.0, written_ago=60.0)
    status = run_status(run, now=1e6)
    assert (status.method, status.seed, status.round, status.rounds) == ("prelort", 3, 20, 48)
    assert status.state == "running"
    assert status.seconds_per_round == pytest.approx(100.0)
    assert status.eta_seconds == pytest.approx(28 * 100.0)
    assert status.idle_seconds == pytest.approx(60.0, abs=1.0)
    assert status.evaluated_round == 12
    assert status.last_evaluation["2"] == {"perplexity": 18.25}


def test_a_run_without_a_round_for_three_of_its_rounds_is_stalled(tmp_path):
    alive = run_status(running_run(tmp_path, "a-seed0", 20, wall=2000.0, written_ago=299.0), 1e6)
    dead = run_status(running_run(tmp_path, "b-seed0", 20, wall=2000.0, written_ago=301.0), 1e6)
    assert (alive.state, dead.state) == ("running", "stalled")


def test_a_checkpoint_without_its_wall_time_is_in_progress_not_stalled(tmp_path):
    status = run_status(running_run(tmp_path, "old-seed0", 20, wall=0.0, written_ago=1e5), 1e6)
    assert (status.state, status.seconds_per_round, status.eta_seconds) == (
        "in progress",
        None,
        None,
    )


def test_a_finished_run_is_finished_with_no_time_left(tmp_path):
    run = finished_run(tmp_path, "zeropad", {"2": [1.0, 0.0], "16": [1.0, 1.0]})
    status = run_status(run)
    assert status.state == "finished" and status.eta_seconds is None
    assert status.round == status.rounds == SimulationConfig().rounds
    assert status.idle_seconds is None  # no checkpoint: nothing to time


def test_runs_are_found_under_a_folder_and_listed_one_line_each(tmp_path):
    running_run(tmp_path / "cmp", "prelort-seed3", done=6)
    finished_run(tmp_path / "cmp", "zeropad", {"2": [1.0]})
    (tmp_path / "cmp" / "notes").mkdir()
    runs = find_runs([tmp_path / "cmp"])
    assert [r.name for r in runs] == ["prelort-seed3", "zeropad-seed0"]
    table = format_statuses([run_status(r, now=1e6) for r in runs], tmp_path / "cmp")
    lines = table.splitlines()
    assert len(lines) == 3 and lines[0].startswith("run")
    assert "6/48" in lines[1] and "r6 perplexity 20.5 / 19 (ranks 2/8)" in lines[1]
    assert "finished" in lines[2]


def test_a_missing_path_or_a_folder_without_runs_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        find_runs([tmp_path / "nowhere"])
    with pytest.raises(DataError, match="no run"):
        find_runs([tmp_path])


def test_a_corrupted_checkpoint_is_named(tmp_path):
    run = tmp_path / "prelort-seed0"
    run.mkdir()
    (run / CHECKPOINT_NAME).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(AdapterError, match=CHECKPOINT_NAME):
        run_status(run)
    with pytest.raises(AdapterError, match="not found"):
        read_adapter_metadata(run / "adapter.safetensors")


def test_the_status_command_prints_the_table_and_writes_json(tmp_path, capsys):
    running_run(tmp_path, "prelort-seed3", done=12)
    out = tmp_path / "status.json"
    assert main(["status", str(tmp_path), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "prelort-seed3" in printed and "12/48" in printed
    (record,) = json.loads(out.read_text())
    assert record["round"] == 12 and record["method"] == "prelort"
    assert main(["status", str(tmp_path / "none")]) == 2
