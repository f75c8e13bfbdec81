"""Results are never silently wrong: NaN refused at every edge, mixed runs refused, failures exit non-zero."""

import json
import subprocess
import sys

import pytest

from prelort.errors import AdapterError, DataError
from prelort.io import load_adapter, save_adapter
from prelort.merge import export_prefix
from prelort.runtime.checkpoint import load_checkpoint
from prelort.simulation import run_simulation
from prelort.simulation.compare import run_comparison, write_comparison
from prelort.simulation.reload import load_comparison
from tests_helpers import tiny


def test_checkpoint_or_adapter_with_nan_is_refused(tiny_bert_dir, topic_jsonl, tmp_path):
    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "run", rounds=1)
    run_simulation(config, progress=False, checkpoint_dir=config.out)
    state, meta = load_adapter(config.out / "checkpoint.safetensors")
    key = next(k for k in state if k.endswith(".lora_b"))
    state[key][0, 0] = float("nan")
    save_adapter(config.out / "checkpoint.safetensors", state, meta)
    with pytest.raises(AdapterError, match="NaN or Inf"):
        load_checkpoint(config.out)
    with pytest.raises(AdapterError, match="NaN or Inf"):
        export_prefix(config.out / "checkpoint.safetensors", 1, tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


def test_summarize_refuses_mixed_runs_and_names_unfinished_ones(
    tiny_bert_dir, topic_jsonl, tmp_path
):
    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "cmp", rounds=1)
    write_comparison(
        run_comparison(config, ["prelort", "zeropad"], [0], progress=False), config.out
    )
    metrics = config.out / "zeropad-seed0" / "metrics.json"
    data = json.loads(metrics.read_text())
    unfinished = config.out / "flora-seed0"
    unfinished.mkdir()
    (unfinished / "metrics.json").write_text(json.dumps({**data, "final": {"tiers": {}}}))
    assert load_comparison(config.out).unfinished == ["flora-seed0"]
    older = {k: v for k, v in data["config"].items() if k not in ("wire_dtype", "dp_noise")}
    metrics.write_text(json.dumps({**data, "config": older}))  # a run of an earlier version
    assert load_comparison(config.out).runs  # missing settings are their defaults
    # a calibration ceiling changes nothing in runs without calibration (tiny's default)...
    metrics.write_text(
        json.dumps({**data, "config": {**data["config"], "calibration_examples": 7}})
    )
    assert load_comparison(config.out).runs
    # ...and matters where they calibrate
    calibrating = {**data["config"], "calibration_examples": 7, "calibration": "lda"}
    metrics.write_text(json.dumps({**data, "config": calibrating}))
    with pytest.raises(DataError, match="runs differ in calibration"):
        load_comparison(config.out)
    data["config"]["task"] = "other.jsonl"
    metrics.write_text(json.dumps(data))
    with pytest.raises(DataError, match="runs differ in task"):
        load_comparison(config.out)


def test_a_run_whose_every_update_is_rejected_exits_1(tiny_bert_dir, topic_jsonl, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable, "-m", "prelort.cli", "simulate", "--quiet",
            "--model", str(tiny_bert_dir), "--task", str(topic_jsonl), "--ranks", "1,2",
            "--clients", "2", "--rounds", "1", "--local-steps", "1", "--eval-examples", "8",
            "--readout-examples", "0", "--max-length", "32", "--max-update-norm", "1e-12",
            "--out", str(out),
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "every client update of every round was rejected" in done.stderr
    assert (out / "metrics.json").is_file()  # what was measured is still written


def test_packaged_alias_and_its_folder_are_one_base_model():
    from prelort.adapters.peft_io import same_base_model
    from prelort.models import minilm_path

    assert same_base_model("minilm-l6", str(minilm_path()))
    assert not same_base_model("minilm-l6", "other/model")
