"""The packaged real models and data, end to end (marked ``e2e``; CI runs them)."""

import json
import subprocess
import sys

import pytest

from prelort.config import config_from_mapping
from prelort.simulation import run_simulation

pytestmark = pytest.mark.e2e


def test_minilm_on_20newsgroups(tmp_path):
    config = config_from_mapping(
        dict(
            model="minilm-l6",
            task="20newsgroups",
            ranks="2,8",
            clients=2,
            rounds=2,
            local_steps=2,
            batch_size=8,
            eval_examples=64,
            train_examples=400,
            readout_examples=64,
            calibration_examples=64,
            out=str(tmp_path),
        )
    )
    result = run_simulation(config, progress=False)
    assert set(result.final) == {"2", "8"}
    assert all(0.0 <= m["accuracy"] <= 1.0 for m in result.final.values())


def test_smollm2_on_bbc_headlines(tmp_path):
    config = config_from_mapping(
        dict(
            model="smollm2-135m",
            task="bbc-headlines",
            ranks="2,4",
            clients=2,
            rounds=1,
            local_steps=1,
            batch_size=2,
            eval_examples=8,
            generate_examples=4,
            max_new_tokens=12,
            max_length=96,
            method="prelort",
            out=str(tmp_path),
        )
    )
    result = run_simulation(config, progress=False)
    for tier in ("2", "4"):
        # the instruct model already writes plausible headlines: perplexity far below the vocabulary
        assert 1.0 < result.final[tier]["perplexity"] < 500.0
        assert 0.0 <= result.final[tier]["rouge_l"] <= 1.0


def test_cli_simulate_runs_every_phase_and_writes_its_outputs(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "prelort.cli",
        "simulate",
        "--quiet",
        "--task",
        "bbc-news",
        "--ranks",
        "2,4",
        "--clients",
        "2",
        "--rounds",
        "1",
        "--local-steps",
        "1",
        "--batch-size",
        "4",
        "--eval-examples",
        "16",
        "--readout-examples",  # every phase runs, on a few rows (the defaults read all BBC News)
        "32",
        "--calibration-examples",
        "64",
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "| rank tier | accuracy |" in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["final"]["tiers"]) == {"2", "4"}
    assert (out / "accuracy.png").is_file() and (out / "adapter.safetensors").is_file()
    # a user's mistakes through the same command: tests/faults/test_cli_inputs.py


@pytest.mark.parametrize("task", ["bbc-news", "rotten-tomatoes", "20newsgroups", "file"])
def test_smollm2_classifies_by_writing_the_label(tmp_path, task, topic_jsonl):
    """Causal LM + classification task = verbalised labels by default: no head, label scoring."""
    config = config_from_mapping(
        dict(
            model="smollm2-135m",
            task=str(topic_jsonl) if task == "file" else task,
            ranks="2,4",
            clients=2,
            rounds=1,
            local_steps=1,
            batch_size=2,
            eval_examples=6,
            train_examples=40,
            max_length=96,
            out=str(tmp_path),
        )
    )
    result = run_simulation(config, progress=False)
    assert not [k for k in result.global_state if "@" in k or "score" in k]  # no head at all
    assert set(result.final) == {"2", "4"}
    assert all(0.0 <= m["accuracy"] <= 1.0 for m in result.final.values())
    assert result.rounds[-1]["train_loss"] > 0


def test_minilm_classification_export_loads_in_peft(tmp_path):
    """The default job's model: export a tier with its head, load it with PEFT, same logits."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from prelort.adapters import set_state
    from prelort.cli import main
    from prelort.runtime.outputs import write_outputs
    from prelort.simulation import build_workbench

    config = config_from_mapping(
        dict(
            model="minilm-l6",
            task="bbc-news",
            ranks="2,8",
            clients=2,
            rounds=1,
            local_steps=2,
            eval_examples=16,
            readout_examples=0,
            calibration_examples=64,  # the calibrated heads on a few rows, not 2,000 articles
            out=str(tmp_path / "run"),
        )
    )
    bench = build_workbench(config)
    result = run_simulation(config, bench, progress=False)
    write_outputs(result, config.out)
    out = tmp_path / "peft"
    assert (
        main(["export", "--rank", "2", "--out", str(out), str(config.out / "adapter.safetensors")])
        == 0
    )
    peft_config = json.loads((out / "adapter_config.json").read_text())
    base = AutoModelForSequenceClassification.from_pretrained(
        peft_config["base_model_name_or_path"], num_labels=5
    )
    peft_model = PeftModel.from_pretrained(base, out).eval()
    set_state(bench.adapted, result.global_state)
    bench.adapted.set_active_rank(2)
    bench.adapted.model.eval()
    batch = {"input_ids": torch.tensor([bench.test.input_ids[0][:20]])}
    with torch.no_grad():
        ours = bench.adapted.model(**batch).logits
        theirs = peft_model(**batch).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


def test_defaults_learn_a_user_file_with_a_dominant_class(tmp_path):
    """70 % of the records are one class: the default settings must beat that majority rate."""
    import random

    rng = random.Random(0)
    words = {
        "weather": "rain storm sunny cloudy forecast wind snow temperature",
        "football": "goal striker match league referee penalty midfield coach",
        "cooking": "recipe oven flour garlic simmer bake sauce spices",
    }
    path = tmp_path / "tickets.jsonl"
    with path.open("w") as f:
        for i in range(400):
            label = "weather" if i % 10 < 7 else ("football" if i % 10 < 9 else "cooking")
            text = " ".join(rng.choice(words[label].split()) for _ in range(8))
            f.write(json.dumps({"text": f"Today: {text}.", "label": label}) + "\n")
    config = config_from_mapping(
        dict(
            task=str(path),
            eval_examples=80,
            eval_every=8,
            readout_examples=0,
            out=str(tmp_path / "o"),
        )
    )
    result = run_simulation(config, progress=False)
    majority = 0.7
    assert min(m["accuracy"] for m in result.final.values()) > majority + 0.1, result.final


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("bitsandbytes") is None,
    reason="bitsandbytes is not installed",
)
def test_smollm2_in_4bit_with_checkpointing_learns_headlines(tmp_path):
    """QLoRA on the CPU: SmolLM2's linear layers in NF4, fp32 nested adapters, checkpointing."""
    from bitsandbytes.nn import Linear4bit

    from prelort.simulation import build_workbench

    config = config_from_mapping(
        dict(
            model="smollm2-135m",
            task="bbc-headlines",
            ranks="2,4",
            clients=2,
            rounds=2,
            local_steps=2,
            batch_size=4,
            lr=2e-3,
            eval_examples=8,  # NF4 on the CPU dequantizes every weight in each forward
            generate_examples=0,
            max_length=96,
            quantize="4bit",
            gradient_checkpointing=True,
            out=str(tmp_path),
        )
    )
    bench = build_workbench(config)
    assert all(isinstance(layer.base, Linear4bit) for layer in bench.adapted.layers.values())
    result = run_simulation(config, bench, progress=False)
    first, last = result.rounds[0]["tiers"], result.final
    for tier in ("2", "4"):
        assert 1.0 < last[tier]["perplexity"] < 500.0
    assert last["4"]["perplexity"] < first["4"]["perplexity"] * 1.05  # training did not break it
