"""Device, precision, 4-bit and checkpointing settings through whole runs of tiny models."""

import importlib.util
import json

import pytest
import torch

from prelort.cli import main
from prelort.simulation import build_workbench
from prelort.simulation.run import run_simulation
from tests_helpers import tiny

needs_bnb = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed"
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def llama64_dir(tmp_path):
    """A tiny Llama of width 64: bitsandbytes' CPU 4-bit inference kernel needs blocks of 64."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import _tokenizer

    folder = tmp_path / "llama64"
    tokenizer = _tokenizer(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=120, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def final_state(config):
    return run_simulation(config, build_workbench(config), progress=False).global_state


@pytest.mark.parametrize("nested", ["all", "split", "off"])
def test_gradient_checkpointing_trains_the_same_adapter(
    tiny_llama_dir, headline_jsonl, tmp_path, nested
):
    base = tiny(tiny_llama_dir, headline_jsonl, tmp_path / "a", nested=nested, rounds=1)
    plain = final_state(base)
    checkpointed = final_state(base.replace(gradient_checkpointing=True))
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], atol=1e-6, rtol=1e-5)


def test_an_explicit_cpu_device_is_recorded_and_changes_nothing(
    tiny_bert_dir, topic_jsonl, tmp_path
):
    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "a", rounds=1)
    default = final_state(config)
    explicit = final_state(config.replace(device="cpu", server_device="cpu"))
    for key in default:
        torch.testing.assert_close(explicit[key], default[key], atol=0, rtol=0)
    assert config.replace(device="cpu").to_dict()["device"] == "cpu"
    result = run_simulation(config.replace(device="cpu"), progress=False)
    environment = result.to_json()["environment"]
    assert environment["device"] == "cpu" and environment["torch"] == torch.__version__


@needs_bnb
def test_a_4bit_base_trains_and_its_export_loads_in_peft(llama64_dir, headline_jsonl, tmp_path):
    """QLoRA on the CPU: NF4 base, fp32 adapters; the export loads onto full and 4-bit bases."""
    from bitsandbytes.nn import Linear4bit
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from prelort.adapters import set_state
    from prelort.models import placement_for, quantization_config
    from prelort.runtime.outputs import write_outputs

    config = tiny(llama64_dir, headline_jsonl, tmp_path / "run", quantize="4bit", rounds=2)
    bench = build_workbench(config)
    layer = next(iter(bench.adapted.layers.values()))
    assert isinstance(layer.base, Linear4bit) and layer.lora_a.dtype == torch.float32
    result = run_simulation(config, bench, progress=False)
    write_outputs(result, config.out)
    losses = [t["train_loss"] for t in result.rounds]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(v.abs().sum() > 0 for k, v in result.global_state.items() if k.endswith("lora_b"))

    out = tmp_path / "peft"
    adapter = str(config.out / "adapter.safetensors")
    assert main(["export", "--rank", "2", "--out", str(out), adapter]) == 0
    set_state(bench.adapted, result.global_state)
    bench.adapted.set_active_rank(2)
    ids = torch.tensor([[5, 9, 12, 7, 30, 4]])
    with torch.no_grad():
        ours = bench.adapted.model(input_ids=ids).logits.float()
    full = AutoModelForCausalLM.from_pretrained(llama64_dir, dtype=torch.bfloat16)
    ours_placed = placement_for(str(llama64_dir), "cpu", "auto", "4bit")  # fp32 compute if no bf16
    four_bit = AutoModelForCausalLM.from_pretrained(
        llama64_dir,
        dtype=ours_placed.dtype,
        quantization_config=quantization_config("4bit", ours_placed.compute_dtype),
        device_map={"": "cpu"},
    )
    for base in (four_bit, full):
        with torch.no_grad():
            theirs = PeftModel.from_pretrained(base, out).eval()(input_ids=ids).logits.float()
        assert theirs.shape == ours.shape
        if base is four_bit:  # the very model we trained on: the same numbers
            torch.testing.assert_close(theirs, ours, atol=2e-2, rtol=2e-2)
        else:  # the unquantized base: close, not equal (NF4 rounding of the base weights)
            assert (theirs - ours).abs().mean() < 0.5 * ours.abs().mean()


@needs_bnb
def test_8bit_base_runs(llama64_dir, headline_jsonl, tmp_path):
    config = tiny(llama64_dir, headline_jsonl, tmp_path / "run", quantize="8bit", rounds=1)
    result = run_simulation(config, build_workbench(config), progress=False)
    assert all(torch.isfinite(v).all() for v in result.global_state.values())


def test_plan_ranks_and_client_memory(
    tiny_llama_dir, headline_jsonl, tmp_path, monkeypatch, capsys
):
    """plan-ranks measures each rank in a child; simulate --client-memory uses the same table."""
    monkeypatch.setenv("PRELORT_CACHE", str(tmp_path / "cache"))
    flags = [
        *("--model", str(tiny_llama_dir), "--task", str(headline_jsonl), "--ranks", "1,2"),
        *("--clients", "2", "--rounds", "1", "--local-steps", "1", "--batch-size", "4"),
        *("--max-length", "32", "--eval-examples", "8", "--generate-examples", "0"),
        *("--partition", "iid", "--device", "cpu", "--quiet"),
    ]
    table_file = tmp_path / "plan.json"
    assert main(["plan-ranks", *flags, "--memory", "100GB,1MB", "--json", str(table_file)]) == 0
    table = json.loads(table_file.read_text())
    peaks = {int(r): b for r, b in table["peak_bytes"].items()}
    assert set(peaks) == {1, 2} and all(100 * 2**20 < b < 8 * 2**30 for b in peaks.values())
    assert table["budgets"] == {"100GB": 2, "0.000976562GB": None}
    printed = capsys.readouterr().out
    assert "| 100 GB | 2 |" in printed and "| rank | peak GB |" in printed

    out = tmp_path / "run"
    budget = f"{max(peaks.values()) / 2**20 + 1:.0f}MB"
    assert main(["simulate", *flags, "--client-memory", budget, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["client_ranks"] == [2, 2]
    plan = metrics["rank_plan"]
    assert plan["client_ranks"] == [2, 2] and plan["measured"]["peak_bytes"].keys() == {"1", "2"}

    refused = tmp_path / "refused"
    code = main(["simulate", *flags, "--client-memory", "1MB", "--out", str(refused)])
    assert code == 2
    assert "client 0's budget of 0.00 GB fits no rank" in capsys.readouterr().err
    assert not refused.exists()


@needs_cuda
def test_cuda_and_cpu_federations_agree(tiny_llama_dir, headline_jsonl, tmp_path):
    config = tiny(tiny_llama_dir, headline_jsonl, tmp_path / "a", rounds=1, dtype="float32")
    cpu = final_state(config.replace(device="cpu"))
    gpu = final_state(config.replace(device="cuda", server_device="cuda"))
    for key in cpu:
        torch.testing.assert_close(gpu[key], cpu[key], atol=1e-4, rtol=1e-3)


@needs_cuda
def test_bf16_on_cuda_keeps_fp32_adapters_and_head(tiny_bert_dir, topic_jsonl, tmp_path):
    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "a", rounds=1, device="cuda")
    bench = build_workbench(config)
    assert bench.adapted.autocast_dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in bench.adapted.trainable_parameters())
    assert all(p.is_cuda for p in bench.adapted.trainable_parameters())
    result = run_simulation(config, bench, progress=False)
    assert all(not v.is_cuda for v in result.global_state.values())  # the wire is device-free


@needs_bnb
def test_quiet_leaves_no_third_party_warning(llama64_dir, headline_jsonl, tmp_path):
    import subprocess
    import sys

    flags = [
        *("--model", str(llama64_dir), "--task", str(headline_jsonl), "--ranks", "1,2"),
        *("--clients", "2", "--rounds", "1", "--local-steps", "1", "--batch-size", "4"),
        *("--max-length", "32", "--eval-examples", "8", "--generate-examples", "0"),
        *("--partition", "iid", "--quantize", "4bit", "--gradient-checkpointing", "--quiet"),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "prelort.cli", "simulate", *flags, "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    noise = [line for line in done.stderr.splitlines() if not line.startswith("INFO prelort")]
    assert noise == [], noise[:5]
