"""Settings this machine or model cannot run: one line, exit 2, nothing written."""

import subprocess
import sys

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from prelort.cli import main

GOOD = ["--rounds", "1", "--clients", "2", "--ranks", "1,2", "--local-steps", "1", "--quiet"]


def run_cli(argv, prelude=""):
    """``prelort ARGV`` in a fresh process, after ``prelude`` (Python) has run."""
    code = f"{prelude}\nimport sys\nfrom prelort.cli import main\nsys.exit(main({argv!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def assert_one_line(done, word, out):
    lines = [line for line in done.stderr.splitlines() if line.startswith("prelort: error:")]
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(lines) == 1 and word in lines[0], done.stderr[-2000:]
    assert not out.exists()


def test_quantize_without_bitsandbytes_names_the_install_line(tmp_path):
    out = tmp_path / "run"
    argv = ["simulate", "--quantize", "4bit", *GOOD, "--out", str(out)]
    done = run_cli(argv, prelude="import sys; sys.modules['bitsandbytes'] = None")
    assert_one_line(done, "pip install", out)
    assert "bitsandbytes" in done.stderr


def test_quantize_on_a_device_bitsandbytes_cannot_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("prelort.device.mps_available", lambda: True)
    out = tmp_path / "run"
    code = main(["simulate", "--device", "mps", "--quantize", "4bit", *GOOD, "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "quantize" in err and "mps" in err
    assert not out.exists()


def test_a_family_with_no_known_target_modules(tmp_path, topic_jsonl):
    """GPT-2 names its attention ``c_attn`` (a Conv1D): no default; the message says what to do."""
    folder = tmp_path / "gpt2"
    config = GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(folder)
    out = tmp_path / "run"
    argv = [
        "simulate",
        "--model",
        str(folder),
        "--task",
        str(topic_jsonl),
        *GOOD,
        "--out",
        str(out),
    ]
    done = run_cli(argv)
    assert_one_line(done, "target_modules", out)
    assert "gpt2" in done.stderr


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="this machine has CUDA: nothing to refuse"
)
def test_flower_refuses_cuda_without_cuda(tmp_path):
    out = tmp_path / "run"
    done = run_cli(["flower", "--device", "cuda", *GOOD, "--out", str(out)])
    assert_one_line(done, "device", out)
