import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from prelort.adapters import NestedLoRALinear, inject_nested_lora
from prelort.errors import AdapterError


def _layer(rank=8, scale=0.5, in_f=12, out_f=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = nn.Linear(in_f, out_f)
    layer = NestedLoRALinear(base, rank, scale)
    with torch.no_grad():
        layer.lora_a.normal_(generator=g)
        layer.lora_b.normal_(generator=g)
    return layer


def test_forward_at_rank_r_uses_only_the_prefix():
    layer = _layer()
    x = torch.randn(3, 12)
    layer.set_active_rank(3)
    expected = layer.base(x) + 0.5 * x @ layer.lora_a[:3].T @ layer.lora_b[:, :3].T
    torch.testing.assert_close(layer(x), expected)
    # the tail has no effect below the active rank
    with torch.no_grad():
        layer.lora_a[3:] = 100.0
    torch.testing.assert_close(layer(x), expected)


def test_scale_does_not_depend_on_rank():
    layer = _layer(rank=8, scale=0.25)
    for r in (1, 4, 8):
        torch.testing.assert_close(
            layer.delta_weight(r), 0.25 * layer.lora_b[:, :r] @ layer.lora_a[:r]
        )


def test_rank_zero_is_the_base_layer():
    layer = _layer()
    layer.set_active_rank(0)
    x = torch.randn(2, 12)
    torch.testing.assert_close(layer(x), layer.base(x))


def test_new_layer_is_a_no_op_after_reset():
    layer = _layer()
    layer.reset_parameters(torch.Generator().manual_seed(1))
    x = torch.randn(2, 12)
    torch.testing.assert_close(layer(x), layer.base(x))
    assert layer.lora_a.abs().sum() > 0


def test_set_factors_checks_shapes():
    layer = _layer()
    with pytest.raises(AdapterError, match="do not fit"):
        layer.set_factors(torch.zeros(4, 12), torch.zeros(10, 5))
    with pytest.raises(AdapterError, match="outside"):
        layer.set_active_rank(9)


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_nested_layer_equals_peft_lora_of_rank_r(tiny_llama, rank):
    """At active rank r the nested model equals a PEFT LoRA of rank r with the same factors and scale."""
    import copy

    max_rank, alpha = 4, 8.0
    nested_model = copy.deepcopy(tiny_llama)
    adapted = inject_nested_lora(nested_model, max_rank, alpha, ["q_proj", "v_proj"])
    g = torch.Generator().manual_seed(3)
    for layer in adapted.layers.values():
        with torch.no_grad():
            layer.lora_a.normal_(generator=g)
            layer.lora_b.normal_(generator=g)
    adapted.set_active_rank(rank)

    # PEFT's scale is lora_alpha / r; ours is alpha / R at every rank.
    peft_config = LoraConfig(
        r=rank, lora_alpha=alpha * rank / max_rank, target_modules=["q_proj", "v_proj"]
    )
    peft_model = get_peft_model(copy.deepcopy(tiny_llama), peft_config)
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            if hasattr(module, "lora_A") and "default" in module.lora_A:
                key = name.removeprefix("base_model.model.")
                module.lora_A["default"].weight.copy_(adapted.layers[key].lora_a[:rank])
                module.lora_B["default"].weight.copy_(adapted.layers[key].lora_b[:, :rank])
    ids = torch.randint(0, 120, (2, 9))
    with torch.no_grad():
        ours = nested_model(input_ids=ids).logits
        theirs = peft_model(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_bf16_base_with_fp32_adapter():
    base = nn.Linear(8, 6).to(torch.bfloat16)
    layer = NestedLoRALinear(base, 4, 1.0)
    layer.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.lora_b.fill_(0.1)
    x = torch.randn(2, 8, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16 and layer.lora_a.dtype == torch.float32
    y.float().sum().backward()
    assert layer.lora_a.grad is not None and base.weight.grad is None
