"""Real model families, offline: tiny random models built from each family's transformers config."""

import pytest
import torch
import transformers
from torch import nn

from prelort.adapters.inject import ALL_LINEAR, default_target_modules, inject_nested_lora
from prelort.adapters.layer import NestedLoRALinear
from prelort.data.encoding import encode_split
from prelort.data.tasks import GENERATION, Split, TaskData
from prelort.errors import ModelError

SIZES = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
# family config class -> the targets its family gets by default
FAMILIES = {
    "LlamaConfig": ("q_proj", "v_proj"),
    "MistralConfig": ("q_proj", "v_proj"),
    "Qwen2Config": ("q_proj", "v_proj"),
    "Qwen3Config": ("q_proj", "v_proj"),
    "GemmaConfig": ("q_proj", "v_proj"),
    "Gemma2Config": ("q_proj", "v_proj"),
    "PhiConfig": ("q_proj", "v_proj"),
    "Phi3Config": ("qkv_proj",),
}


def tiny_causal_lm(config_name: str) -> nn.Module:
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**SIZES, pad_token_id=0, eos_token_id=1)
    if config_name.startswith("Gemma"):
        config.head_dim = 8
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_gets_its_default_targets_and_a_working_adapter(family):
    model = tiny_causal_lm(family)
    assert default_target_modules(model) == FAMILIES[family]
    ids = torch.randint(0, 96, (2, 7))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    adapted = inject_nested_lora(model, max_rank=4, alpha=8)
    layers = adapted.layers
    assert layers and all(n.rsplit(".", 1)[-1] in FAMILIES[family] for n in layers)
    adapted.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before)  # B = 0: a no-op
        for layer in layers.values():
            layer.lora_b.normal_()
        adapted.set_active_rank(2)
        changed = model(input_ids=ids).logits
    assert not torch.allclose(changed, before)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert all(layer.lora_a.grad is not None for layer in layers.values())


def test_all_linear_adapts_every_linear_layer_but_the_output_head():
    model = tiny_causal_lm("LlamaConfig")
    linear = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    adapted = inject_nested_lora(model, max_rank=2, alpha=4, target_modules=[ALL_LINEAR])
    assert set(adapted.layers) == linear - {"lm_head"}
    assert {n.rsplit(".", 1)[-1] for n in adapted.layers} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }  # fmt: skip
    assert isinstance(model.get_submodule("model.layers.0.mlp.down_proj"), NestedLoRALinear)


def test_all_linear_leaves_a_classification_head_to_train():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**SIZES, num_labels=3, pad_token_id=0)
    model = transformers.LlamaForSequenceClassification(config)
    adapted = inject_nested_lora(
        model, max_rank=2, alpha=4, target_modules=[ALL_LINEAR], train_head=True
    )
    assert "score" not in adapted.layers and set(adapted.head) == {"score.weight"}


def test_a_target_no_module_has_is_refused_by_name():
    with pytest.raises(ModelError, match="foo"):
        inject_nested_lora(tiny_causal_lm("LlamaConfig"), 2, 4, target_modules=["q_proj", "foo"])


def test_instruction_prompts_use_the_tokenizers_chat_template(tiny_llama_dir):
    """Where a tokenizer has a chat template, the prompt is rendered through it."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.chat_template = "{% for m in messages %}sport {{ m['content'] }} goal{% endfor %}"
    task = TaskData("t", GENERATION, Split([], []), Split([], []), ("g",), prompt="{text}")
    split = Split(["the team won"], [0], ["match"])
    enc = encode_split(tokenizer, task, split, max_length=32)
    words = tokenizer.convert_ids_to_tokens(enc.input_ids[0])
    assert words == ["sport", "the", "team", "won", "goal"]
