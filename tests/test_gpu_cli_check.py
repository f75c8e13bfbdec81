"""``python -m benchmarks.gpu_cli`` must run every part where flwr and bitsandbytes are absent."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = """
import runpy, sys
for name in ("flwr", "bitsandbytes"):
    sys.modules[name] = None
sys.argv = ["gpu_cli", *{argv!r}]
runpy.run_module("benchmarks.gpu_cli", run_name="__main__")
"""


def test_the_cli_check_runs_simulate_export_and_plan_ranks_on_the_cpu(
    tiny_llama_dir, headline_jsonl, tmp_path
):
    argv = ["--tokenizer", str(tiny_llama_dir), "--task", str(headline_jsonl), "--size", "tiny",
            "--device", "cpu", "--rounds", "2", "--out", str(tmp_path / "out")]  # fmt: skip
    env = {"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "PRELORT_CACHE": str(tmp_path / "cache")}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", RUN.format(argv=argv)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "gpu_cli.json").read_text())
    bf16 = results["bf16"]
    assert bf16["exit_code"] == 0 and len(bf16["train_loss"]) == 2
    assert set(bf16["final"]) == {"2", "4", "8", "16"}
    assert bf16["environment"]["device"] == "cpu"
    assert results["4bit"] == {"skipped": "bitsandbytes is not installed"}
    export = results["export"]
    assert export["rank"] == 8 and export["mean_abs_diff_over_mean_abs"] < 0.05
    plan = results["plan"]
    assert plan["exit_code"] == 0 and set(plan["peak_bytes"]) == {"2", "4", "8", "16"}
    assert "## bf16:" in done.stdout and "## plan-ranks" in done.stdout
