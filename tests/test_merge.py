"""PEFT round trips for `prelort aggregate` and `prelort export` on a tiny Llama."""

import copy
import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from prelort.adapters import get_state, inject_nested_lora
from prelort.adapters.peft_io import read_peft_adapter
from prelort.cli import main
from prelort.errors import AdapterError
from prelort.io import save_adapter
from prelort.merge import aggregate_folders, export_prefix

TARGETS = ["q_proj", "v_proj"]


def make_peft(base, folder, rank, alpha, seed, base_name="tiny-llama"):
    model = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=rank, lora_alpha=alpha, target_modules=TARGETS)
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.peft_config["default"].base_model_name_or_path = base_name
    model.save_pretrained(folder)
    return model


def delta(peft_model, module="q_proj"):
    layer = next(
        m
        for n, m in peft_model.named_modules()
        if n.endswith("layers.0.self_attn." + module) and hasattr(m, "get_delta_weight")
    )
    return layer.get_delta_weight("default")


def test_flora_merge_reproduces_the_weighted_sum_exactly(tiny_llama, tmp_path):
    a = make_peft(tiny_llama, tmp_path / "a", 2, 4, 0)
    b = make_peft(tiny_llama, tmp_path / "b", 4, 16, 1)
    b.peft_config["default"].use_rslora = False
    rank = aggregate_folders([tmp_path / "a", tmp_path / "b"], tmp_path / "m", "flora", [1.0, 3.0])
    assert rank == 6
    merged = PeftModel.from_pretrained(copy.deepcopy(tiny_llama), tmp_path / "m")
    expected = 0.25 * delta(a) + 0.75 * delta(b)
    torch.testing.assert_close(delta(merged), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["prelort", "zeropad", "hetlora", "flexlora"])
def test_merged_folder_declares_the_product(tiny_llama, tmp_path, method):
    make_peft(tiny_llama, tmp_path / "a", 2, 2, 0)
    make_peft(tiny_llama, tmp_path / "b", 8, 16, 1)
    rank = aggregate_folders([tmp_path / "a", tmp_path / "b"], tmp_path / method, method)
    assert rank == 8
    merged = PeftModel.from_pretrained(copy.deepcopy(tiny_llama), tmp_path / method)
    state = read_peft_adapter(tmp_path / method).state
    key = next(k for k in state if "layers.0.self_attn.q_proj" in k and k.endswith("lora_a"))
    module = key[: -len(".lora_a")]
    torch.testing.assert_close(delta(merged), state[module + ".lora_b"] @ state[module + ".lora_a"])


def test_prelort_merge_of_equal_ranks_is_fedavg(tiny_llama, tmp_path):
    make_peft(tiny_llama, tmp_path / "a", 4, 8, 0)
    make_peft(tiny_llama, tmp_path / "b", 4, 8, 1)
    aggregate_folders([tmp_path / "a", tmp_path / "b"], tmp_path / "p", "prelort")
    aggregate_folders([tmp_path / "a", tmp_path / "b"], tmp_path / "f", "fedavg")
    p, f = read_peft_adapter(tmp_path / "p").state, read_peft_adapter(tmp_path / "f").state
    for k in p:
        torch.testing.assert_close(p[k], f[k])


def test_incompatible_inputs_are_refused(tiny_llama, tmp_path):
    make_peft(tiny_llama, tmp_path / "a", 2, 4, 0)
    make_peft(tiny_llama, tmp_path / "b", 4, 8, 1, base_name="other-model")
    with pytest.raises(AdapterError, match="base model"):
        aggregate_folders([tmp_path / "a", tmp_path / "b"], tmp_path / "m", "prelort")
    other = get_peft_model(copy.deepcopy(tiny_llama), LoraConfig(r=2, target_modules=["k_proj"]))
    other.peft_config["default"].base_model_name_or_path = "tiny-llama"
    other.save_pretrained(tmp_path / "k")
    with pytest.raises(AdapterError, match="adapts other modules"):
        aggregate_folders([tmp_path / "a", tmp_path / "k"], tmp_path / "m", "zeropad")
    (tmp_path / "c").mkdir()
    with pytest.raises(AdapterError, match="adapter_config.json: missing"):
        read_peft_adapter(tmp_path / "c")
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(AdapterError, match="not a readable safetensors"):
        read_peft_adapter(tmp_path / "a")
    assert not (tmp_path / "m").exists()


def test_export_prefix_matches_the_nested_model(tiny_llama, tmp_path):
    nested = copy.deepcopy(tiny_llama)
    adapted = inject_nested_lora(nested, 8, 16.0, TARGETS)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in adapted.layers.values():
            layer.lora_a.normal_(generator=g)
            layer.lora_b.normal_(0, 0.05, generator=g)
    save_adapter(
        tmp_path / "adapter.safetensors",
        get_state(adapted),
        {"model": "tiny", "scale": adapted.scale, "max_rank": 8},
    )
    assert (
        main(
            [
                "export",
                "--rank",
                "2",
                "--out",
                str(tmp_path / "r2"),
                str(tmp_path / "adapter.safetensors"),
            ]
        )
        == 0
    )
    config = json.loads((tmp_path / "r2" / "adapter_config.json").read_text())
    assert config["r"] == 2
    peft_model = PeftModel.from_pretrained(copy.deepcopy(tiny_llama), tmp_path / "r2")
    adapted.set_active_rank(2)
    ids = torch.randint(0, 120, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(
            peft_model(input_ids=ids).logits, nested(input_ids=ids).logits, rtol=1e-5, atol=1e-5
        )
    assert (
        main(
            [
                "export",
                "--rank",
                "9",
                "--out",
                str(tmp_path / "r9"),
                str(tmp_path / "adapter.safetensors"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "r9").exists()
    with pytest.raises(AdapterError):
        export_prefix(tmp_path / "missing.safetensors", 2, tmp_path / "x")


@pytest.mark.parametrize("head", ["shared", "per-tier"])
def test_classification_export_loads_in_peft_with_its_head(
    tiny_bert_dir, topic_jsonl, tmp_path, head
):
    """prelort simulate -> prelort export --rank r -> PeftModel.from_pretrained: the same logits."""
    from transformers import AutoModelForSequenceClassification

    from prelort.adapters import set_state
    from prelort.runtime.outputs import write_outputs
    from prelort.simulation import build_workbench, run_simulation
    from tests_helpers import tiny

    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "run", head=head, lr=3e-2, rounds=1)
    bench = build_workbench(config)
    result = run_simulation(config, bench, progress=False)
    write_outputs(result, config.out)
    out = tmp_path / "peft-r2"
    assert (
        main(["export", "--rank", "2", "--out", str(out), str(config.out / "adapter.safetensors")])
        == 0
    )
    peft_config = json.loads((out / "adapter_config.json").read_text())
    assert peft_config["task_type"] == "SEQ_CLS" and peft_config["modules_to_save"] == [
        "classifier"
    ]
    base = AutoModelForSequenceClassification.from_pretrained(
        peft_config["base_model_name_or_path"], num_labels=3
    )
    peft_model = PeftModel.from_pretrained(base, out).eval()
    set_state(bench.adapted, result.global_state)
    bench.adapted.set_active_rank(2)
    bench.adapted.model.eval()
    ids = torch.tensor([[2, 5, 6, 7, 3], [2, 9, 10, 3, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        ours = bench.adapted.model(input_ids=ids, attention_mask=mask).logits
        theirs = peft_model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_export_from_a_checkpoint_equals_export_from_the_adapter(
    tiny_bert_dir, topic_jsonl, tmp_path
):
    from prelort.runtime.checkpoint import load_checkpoint, save_checkpoint  # noqa: F401
    from prelort.runtime.outputs import write_outputs
    from prelort.simulation import run_simulation
    from tests_helpers import tiny

    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "run", rounds=1)
    result = run_simulation(config, progress=False, checkpoint_dir=config.out)
    write_outputs(result, config.out)
    for name in ("adapter", "checkpoint"):
        assert (
            main(
                [
                    "export",
                    "--rank",
                    "2",
                    "--out",
                    str(tmp_path / name),
                    str(config.out / f"{name}.safetensors"),
                ]
            )
            == 0
        )
    a = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "checkpoint" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_export_never_replaces_a_read_only_folder(tiny_llama, tmp_path):
    adapted = inject_nested_lora(copy.deepcopy(tiny_llama), max_rank=4, alpha=8.0)
    save_adapter(tmp_path / "a.safetensors", get_state(adapted), {"model": "tiny", "scale": 2.0})
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(AdapterError, match="read-only"):
            export_prefix(tmp_path / "a.safetensors", 2, locked)
        assert locked.is_dir() and not any(locked.iterdir())
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("weights", ["nan,1", "inf,1", "0,1", "-1,2"])
def test_non_finite_or_non_positive_weights_are_refused(tmp_path, capsys, weights):
    out = tmp_path / "merged"
    argv = ["aggregate", f"--weights={weights}", "--out", str(out), str(tmp_path), str(tmp_path)]
    assert main(argv) == 2
    assert "weights" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("method", ["prelort", "zeropad", "flexlora", "flora"])
def test_peft_trained_classifiers_of_two_ranks_merge_with_their_heads(tiny_bert, tmp_path, method):
    """Adapters that PEFT itself trained (SEQ_CLS, a head in modules_to_save) are accepted."""
    folders, heads = [], []
    for rank, seed in ((2, 1), (4, 2)):
        torch.manual_seed(seed)
        model = get_peft_model(
            copy.deepcopy(tiny_bert),
            LoraConfig(
                r=rank, lora_alpha=2 * rank, target_modules=["query", "value"], task_type="SEQ_CLS"
            ),
        )
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name or "modules_to_save" in name:
                    p.normal_(0, 0.1)
        model.save_pretrained(tmp_path / f"r{rank}")
        folders.append(tmp_path / f"r{rank}")
        heads.append(
            model.base_model.model.classifier.modules_to_save["default"].weight.detach().clone()
        )
    out = tmp_path / "merged"
    assert main(["aggregate", "--method", method, "--out", str(out), *map(str, folders)]) == 0
    merged = read_peft_adapter(out)
    torch.testing.assert_close(merged.state["classifier.weight"], (heads[0] + heads[1]) / 2)
    loaded = PeftModel.from_pretrained(copy.deepcopy(tiny_bert), out)
    torch.testing.assert_close(
        loaded.base_model.model.classifier.modules_to_save["default"].weight,
        (heads[0] + heads[1]) / 2,
    )
