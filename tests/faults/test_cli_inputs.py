"""Every malformed input a user can give, through the real command line.

Each case must end with exit status 2, one line on stderr naming the field or file, no traceback,
and nothing written where the run would have gone.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

GOOD = ["--rounds", "1", "--clients", "2", "--ranks", "2,4", "--local-steps", "1"]


def _files(folder: Path) -> dict[str, Path]:
    """Small malformed task and config files."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {
        "nonutf8.jsonl": b'{"text": "caf\xe9", "label": "a"}\n',
        "badjson.jsonl": b'{"text": "a", "label": \n',
        "list.jsonl": b"[1, 2]\n",
        "onelabel.jsonl": b"".join(
            json.dumps({"text": f"t {i}", "label": "x"}).encode() + b"\n" for i in range(20)
        ),
        "nulllabel.jsonl": b'{"text": "a", "label": "x"}\n{"text": "b", "label": null}\n',
        "nofields.jsonl": b'{"body": "a", "tag": "x"}\n',
        "empty.jsonl": b"",
        "notes.txt": b"hello\n",
        "bad.toml": b"[simulate\nrounds = 2\n",
        "unknown.toml": b"[simulate]\nroundz = 2\n",
        "badvalue.toml": b"[simulate]\nrounds = 'many'\n",
        "nanalpha.toml": b"[simulate]\nalpha = nan\n",
        "emptylabel.csv": b"text,label\nhello,a\nworld,\n",
    }
    for name, data in made.items():
        (folder / name).write_bytes(data)
    (folder / "afile").write_text("not a folder")
    return {name: folder / name for name in made} | {"afile": folder / "afile"}


# (id, command after `prelort`, the word the one-line error must name)
CASES = [
    ("rounds-zero", ["simulate", "--rounds", "0"], "rounds"),
    ("rounds-text", ["simulate", "--rounds", "abc"], "rounds"),
    ("rounds-huge", ["simulate", "--rounds", "1e400"], "rounds"),
    ("rounds-float", ["simulate", "--rounds", "2.5"], "rounds"),
    ("lr-nan", ["simulate", "--lr", "nan"], "lr"),
    ("lr-inf", ["simulate", "--lr", "inf"], "lr"),
    ("lr-negative", ["simulate", "--lr", "-1"], "lr"),
    ("head-lr-zero", ["simulate", "--head-lr", "0"], "head_lr"),
    ("alpha-nan", ["simulate", "--alpha", "nan"], "alpha"),
    ("alpha-zero", ["simulate", "--alpha", "0"], "alpha"),
    ("weight-decay-inf", ["simulate", "--weight-decay", "inf"], "weight_decay"),
    ("dropout-above-one", ["simulate", "--lora-dropout", "1.5"], "lora_dropout"),
    ("dirichlet-zero", ["simulate", "--dirichlet-alpha", "0"], "dirichlet_alpha"),
    ("failure-rate-one", ["simulate", "--client-failure-rate", "1"], "client_failure_rate"),
    ("update-norm-negative", ["simulate", "--max-update-norm", "-1"], "max_update_norm"),
    ("rank-zero", ["simulate", "--ranks", "0,2"], "ranks"),
    ("rank-text", ["simulate", "--ranks", "a,b"], "ranks"),
    ("rank-probabilities", ["simulate", "--ranks", "2:0.5,4:0.6"], "ranks"),
    ("rank-above-max", ["simulate", "--ranks", "32", "--max-rank", "16"], "ranks"),
    (
        "too-many-per-round",
        ["simulate", "--clients", "8", "--clients-per-round", "20"],
        "clients_per_round",
    ),
    ("unknown-method", ["simulate", "--method", "fedprox"], "method"),
    ("unknown-nested", ["simulate", "--nested", "bogus"], "nested"),
    ("unknown-partition", ["simulate", "--partition", "bogus"], "partition"),
    ("unknown-dtype", ["simulate", "--dtype", "int8"], "dtype"),
    ("unknown-head", ["simulate", "--head", "bogus"], "head"),
    ("unknown-optimizer", ["simulate", "--optimizer", "adam"], "optimizer"),
    ("unknown-classifier", ["simulate", "--classifier", "bogus"], "classifier"),
    ("readout-negative", ["simulate", "--readout-examples", "-1"], "readout_examples"),
    (
        "calibration-examples-negative",
        ["simulate", "--calibration-examples", "-5"],
        "calibration_examples",
    ),
    ("seed-negative", ["simulate", "--seed", "-1"], "seed"),
    ("seed-huge", ["simulate", "--seed", str(2**40)], "seed"),
    ("generation-with-encoder", ["simulate", "--task", "bbc-headlines", *GOOD], "causal"),
    ("compare-twice", ["compare", "--methods", "prelort,prelort"], "more than once"),
    ("resume-other-out", ["simulate", "--resume", "{dir}/no-run", "--out", "{out}"], "out"),
    ("device-unknown", ["simulate", "--device", "gpu0"], "device"),
    ("server-device-unknown", ["simulate", "--server-device", "tpu"], "server_device"),
    ("server-device-mps", ["simulate", "--server-device", "mps"], "server_device"),
    ("quantize-unknown", ["simulate", "--quantize", "3bit"], "quantize"),
    ("client-memory-text", ["simulate", "--client-memory", "lots"], "client_memory"),
    ("client-memory-zero", ["simulate", "--client-memory", "0GB,4GB"], "client_memory"),
    ("client-memory-probs", ["simulate", "--client-memory", "4GB:0.5,8GB:0.7"], "client_memory"),
    ("plan-ranks-memory", ["plan-ranks", "--memory", "4XB"], "memory"),
    ("target-unknown", ["simulate", "--target-modules", "query,foo", *GOOD], "foo"),
    ("unknown-task", ["simulate", "--task", "nosuch", *GOOD], "task"),
    ("missing-task-file", ["simulate", "--task", "{dir}/missing.jsonl", *GOOD], "missing.jsonl"),
    ("task-wrong-suffix", ["simulate", "--task", "{dir}/notes.txt", *GOOD], "task"),
    ("task-not-utf8", ["simulate", "--task", "{dir}/nonutf8.jsonl", *GOOD], "UTF-8"),
    ("task-bad-json", ["simulate", "--task", "{dir}/badjson.jsonl", *GOOD], "badjson.jsonl"),
    ("task-not-objects", ["simulate", "--task", "{dir}/list.jsonl", *GOOD], "list.jsonl"),
    ("task-one-class", ["simulate", "--task", "{dir}/onelabel.jsonl", *GOOD], "two classes"),
    ("task-null-label", ["simulate", "--task", "{dir}/nulllabel.jsonl", *GOOD], "label"),
    ("task-empty-csv-label", ["simulate", "--task", "{dir}/emptylabel.csv", *GOOD], "label"),
    ("task-no-fields", ["simulate", "--task", "{dir}/nofields.jsonl", *GOOD], "fields"),
    ("task-empty", ["simulate", "--task", "{dir}/empty.jsonl", *GOOD], "no records"),
    ("missing-model", ["simulate", "--model", "{dir}/no-model", *GOOD], "model"),
    ("verbalized-encoder", ["simulate", "--classifier", "verbalized", *GOOD], "classifier"),
    ("config-missing", ["simulate", "--config", "{dir}/missing.toml"], "missing.toml"),
    ("config-not-toml", ["simulate", "--config", "{dir}/bad.toml"], "bad.toml"),
    ("config-unknown-key", ["simulate", "--config", "{dir}/unknown.toml"], "roundz"),
    ("config-bad-value", ["simulate", "--config", "{dir}/badvalue.toml"], "rounds"),
    ("config-nan", ["simulate", "--config", "{dir}/nanalpha.toml"], "alpha"),
    ("out-is-a-file", ["simulate", "--out", "{dir}/afile", *GOOD], "out"),
    ("out-unwritable", ["simulate", "--out", "/proc/prelort-run", *GOOD], "out"),
    ("resume-nothing", ["simulate", "--resume", "{dir}/no-run"], "resume"),
    ("compare-no-seeds", ["compare", "--seeds", "0"], "seeds"),
    ("compare-no-jobs", ["compare", "--jobs", "0"], "jobs"),
    ("compare-no-methods", ["compare", "--methods", " , "], "methods"),
    ("compare-bad-heads", ["compare", "--heads", "bogus"], "heads"),
    ("compare-unknown-method", ["compare", "--methods", "prelort,nope"], "method"),
    (
        "compare-reference-absent",
        ["compare", "--methods", "prelort", "--reference", "x"],
        "reference",
    ),
    ("compare-reference-empty", ["compare", "--reference", " , "], "reference"),
    (
        "export-missing",
        ["export", "--rank", "2", "--out", "{out}", "{dir}/none.safetensors"],
        "none.safetensors",
    ),
    ("aggregate-missing", ["aggregate", "--out", "{out}", "{dir}/nofolder"], "nofolder"),
    (
        "aggregate-weights-text",
        ["aggregate", "--weights", "a,b", "--out", "{out}", "{dir}/x"],
        "weights",
    ),
    ("summarize-empty", ["summarize", "{dir}"], "no finished run"),
    ("summarize-rounds-from", ["summarize", "{dir}", "--rounds-from", "-3"], "rounds-from"),
    ("summarize-pooled-no-out", ["summarize", "{dir}", "{dir}"], "--out"),
    ("summarize-missing", ["summarize", "{dir}/no-compare"], "no-compare"),
    ("summarize-vary-unknown", ["summarize", "{dir}", "--vary", "lr,stepz"], "vary: stepz"),
    ("summarize-seeds-text", ["summarize", "{dir}", "--seeds", "1,two"], "seeds: '1,two'"),
    *(
        []
        if torch.cuda.is_available()
        else [
            ("device-cuda-absent", ["simulate", "--device", "cuda", *GOOD], "device"),
            ("server-device-cuda-absent", ["simulate", "--server-device", "cuda"], "server"),
            ("plan-ranks-cuda-absent", ["plan-ranks", "--device", "cuda:0"], "device"),
            ("compare-cuda-absent", ["compare", "--device", "cuda", *GOOD], "device"),
        ]
    ),
    (
        "export-unwritable",
        ["export", "--rank", "1", "--out", "/proc/prelort-x", "{adapter}"],
        "/proc",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_gets_one_line_and_exit_2(case, tmp_path):
    name, args, word = case
    folder = tmp_path / "inputs"
    _files(folder)
    out = tmp_path / "run"
    adapter = tmp_path / "adapter.safetensors"
    if "{adapter}" in args:
        from safetensors.torch import save_file

        tensors = {"m.lora_a": torch.zeros(2, 3), "m.lora_b": torch.zeros(3, 2)}
        save_file(tensors, str(adapter), metadata={"scale": "2.0", "model": '"x"'})
    argv = [
        a.replace("{dir}", str(folder))
        .replace("{out}", str(out))
        .replace("{adapter}", str(adapter))
        for a in args
    ]
    if argv[0] in ("simulate", "compare"):
        argv.append("--quiet")
        if "--out" not in argv and "--resume" not in argv:
            argv += ["--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "prelort.cli", *argv], capture_output=True, text=True, timeout=300
    )
    lines = [line for line in done.stderr.splitlines() if line.startswith("prelort: error:")]
    assert done.returncode == 2, (name, done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(lines) == 1, done.stderr[-2000:]
    assert word.lower() in lines[0].lower(), lines[0]
    assert not out.exists(), f"{name}: wrote {sorted(p.name for p in out.rglob('*'))}"


def test_a_folder_that_holds_a_run_is_refused_without_overwrite(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    (out / "old.png").write_bytes(b"png")
    cmd = [sys.executable, "-m", "prelort.cli", "simulate", *GOOD, "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "already holds a run" in done.stderr
    assert (out / "metrics.json").read_text() == "{}"  # untouched


def test_a_mistyped_value_is_refused_before_torch_loads():
    """A config error answers at once: the value checks run before anything imports torch."""
    code = (
        "import sys\n"
        "from prelort.cli import main\n"
        "status = main(['simulate', '--rounds', '0', '--quiet'])\n"
        "print(status, 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["2", "False", "False"], done.stdout + done.stderr[-2000:]
    assert "rounds: must be >= 1" in done.stderr
