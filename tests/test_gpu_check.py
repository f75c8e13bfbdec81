"""``python -m benchmarks.gpu`` must run where only torch, transformers, peft and accelerate are."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# What a bare GPU machine lacks: importing them fails, and find_spec says they are absent.
ABSENT = ("flwr", "flwr_datasets", "datasets", "bitsandbytes", "rouge_score", "matplotlib")
RUN = """
import runpy, sys
for name in {absent!r}:
    sys.modules[name] = None
sys.argv = ["gpu", *{argv!r}]
runpy.run_module("benchmarks.gpu", run_name="__main__")
"""


def run_check(argv, tmp_path):
    code = RUN.format(absent=ABSENT, argv=list(argv))
    env = {"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_gpu_check_runs_every_part_without_flwr_datasets_or_bitsandbytes(tmp_path):
    done = run_check(["--device", "cpu", "--quick", "--out", str(tmp_path)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu.json").read_text())
    assert results["parity"]["max_abs_diff"] == 0.0  # CPU against CPU: the same numbers
    assert len(results["bf16"]["round_losses"]) == 2
    assert set(results["steps"]["steps"]) == {
        "peft", "ours plain", "all looped", "all stacked", "split"
    }  # fmt: skip
    assert results["quantized"] == {"skipped": "bitsandbytes is not installed"}
    assert results["aggregation"]["ratio"] > 0
    assert "gpu_agg_vs_memcpy" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_says_so_in_one_line(tmp_path):
    done = run_check([], tmp_path)
    assert done.returncode == 0 and done.stdout.strip().splitlines() == [
        "gpu benchmark: skipped, torch sees no CUDA device"
    ]
