import pytest
import torch

from prelort.adapters import (
    get_state,
    inject_nested_lora,
    pad_to_rank,
    set_state,
    slice_to_rank,
    state_rank,
)
from prelort.errors import AdapterError, ModelError


def test_default_targets_and_head_for_bert(tiny_bert):
    adapted = inject_nested_lora(tiny_bert, 8, 16.0, train_head=True)
    assert sorted(n.rsplit(".", 1)[-1] for n in adapted.layers) == ["query"] * 2 + ["value"] * 2
    assert set(adapted.head) == {"classifier.weight", "classifier.bias"}
    trainable = {n for n, p in tiny_bert.named_parameters() if p.requires_grad}
    assert all(n.endswith(("lora_a", "lora_b")) or n.startswith("classifier") for n in trainable)
    assert adapted.scale == 2.0


def test_default_targets_for_llama(tiny_llama):
    adapted = inject_nested_lora(tiny_llama, 4, 8.0)
    assert {n.rsplit(".", 1)[-1] for n in adapted.layers} == {"q_proj", "v_proj"}
    assert adapted.head == {}


def test_unknown_target_is_an_error(tiny_llama):
    with pytest.raises(ModelError, match="no module"):
        inject_nested_lora(tiny_llama, 4, 8.0, ["nope"])
    with pytest.raises(ModelError, match="not an nn.Linear"):
        inject_nested_lora(tiny_llama, 4, 8.0, ["embed_tokens"])


def test_slice_and_pad_round_trip(tiny_llama):
    adapted = inject_nested_lora(tiny_llama, 8, 16.0)
    adapted.reset_parameters(torch.Generator().manual_seed(0))
    full = get_state(adapted)
    assert state_rank(full) == 8
    low = slice_to_rank(full, 2)
    assert state_rank(low) == 2
    key = next(k for k in low if k.endswith("lora_a"))
    torch.testing.assert_close(low[key], full[key][:2])
    padded = pad_to_rank(low, 8)
    assert torch.all(padded[key][2:] == 0)
    torch.testing.assert_close(padded[key][:2], full[key][:2])
    with pytest.raises(AdapterError):
        slice_to_rank(full, 9)
    with pytest.raises(AdapterError):
        pad_to_rank(full, 4)


def test_client_holds_only_its_prefix(tiny_llama):
    adapted = inject_nested_lora(tiny_llama, 8, 16.0)
    adapted.reset_parameters(torch.Generator().manual_seed(0))
    set_state(adapted, slice_to_rank(get_state(adapted), 2))
    assert all(layer.lora_a.shape[0] == 2 for layer in adapted.layers.values())
    assert state_rank(get_state(adapted)) == 2


def test_set_state_rejects_bad_states(tiny_llama):
    adapted = inject_nested_lora(tiny_llama, 4, 8.0)
    state = get_state(adapted)
    with pytest.raises(AdapterError, match="above the global max_rank"):
        set_state(adapted, pad_to_rank(state, 6))
    broken = dict(state)
    broken.pop(next(iter(k for k in state if k.endswith("lora_b"))))
    with pytest.raises(AdapterError):
        set_state(adapted, broken)
    renamed = {("x." + k): v for k, v in state.items()}
    with pytest.raises(AdapterError, match="do not match"):
        set_state(adapted, renamed)
