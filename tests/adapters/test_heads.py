"""Per-tier classifier heads: one head per ladder rank, swapped in with the active rank."""

import pytest
import torch

from prelort.adapters import get_state, set_state, slice_to_rank
from prelort.adapters.heads import head_key, split_head_key, tier_of
from prelort.adapters.inject import inject_nested_lora
from prelort.errors import AdapterError


def test_key_naming_and_tier_of():
    assert head_key("classifier.weight", 4) == "classifier.weight@4"
    assert split_head_key("classifier.weight@4") == ("classifier.weight", 4)
    assert split_head_key("classifier.weight") == ("classifier.weight", None)
    assert tier_of(12, (2, 4, 8, 16)) == 8  # a HetLoRA-pruned rank uses the tier below
    assert tier_of(2, (2, 4)) == 2
    with pytest.raises(ValueError):
        tier_of(1, (2, 4))


def test_the_active_rank_selects_its_tiers_head(tiny_bert):
    adapted = inject_nested_lora(tiny_bert, max_rank=4, alpha=8.0, train_head=True)
    adapted.use_tier_heads((1, 2, 4))
    adapted.reset_parameters(torch.Generator().manual_seed(0))
    state = get_state(adapted)
    assert {k for k in state if "@" in k} == {
        f"classifier.{p}@{t}" for p in ("weight", "bias") for t in (1, 2, 4)
    }
    assert torch.equal(state["classifier.weight@1"], state["classifier.weight@4"])  # same init
    state["classifier.bias@2"] = torch.tensor([5.0, 0.0, 0.0])
    set_state(adapted, state)
    ids = torch.tensor([[2, 5, 6, 3]])
    adapted.set_active_rank(2)
    with torch.no_grad():
        assert adapted.model(input_ids=ids).logits.argmax(-1).item() == 0
        adapted.set_active_rank(4)
        tier4 = adapted.model(input_ids=ids).logits
    assert adapted.active_tier == 4
    assert not torch.allclose(tier4, adapted.model.classifier(torch.zeros(1, 32)) + 5.0)


def test_slices_and_partial_states(tiny_bert):
    adapted = inject_nested_lora(tiny_bert, max_rank=4, alpha=8.0, train_head=True)
    adapted.use_tier_heads((1, 2, 4))
    state = get_state(adapted)
    sent = slice_to_rank(state, 2)
    assert "classifier.weight@4" not in sent and "classifier.weight@2" in sent
    set_state(adapted, sent)  # a client receives only the tiers up to its rank
    assert set(get_state(adapted, head_tiers={2})) >= {"classifier.weight@2"}
    assert "classifier.weight@1" not in get_state(adapted, head_tiers={2})
    shared = inject_nested_lora(
        type(tiny_bert)(tiny_bert.config), max_rank=4, alpha=8.0, train_head=True
    )
    with pytest.raises(AdapterError, match="head parameters do not match"):
        set_state(shared, state)  # per-tier keys into a shared-head model


def test_shared_head_again_restores_the_models_own_parameters(tiny_bert):
    adapted = inject_nested_lora(tiny_bert, max_rank=4, alpha=8.0, train_head=True)
    own = adapted.model.classifier.weight
    adapted.use_tier_heads((1, 4))
    assert adapted.model.classifier.weight is not own
    adapted.use_tier_heads(None)
    assert adapted.model.classifier.weight is own and not adapted.tier_heads


def test_reset_gives_back_rank_r(tiny_bert):
    adapted = inject_nested_lora(tiny_bert, max_rank=4, alpha=8.0, train_head=True)
    set_state(adapted, slice_to_rank(get_state(adapted), 1))  # a rank-1 client's adapter
    adapted.reset_parameters(torch.Generator().manual_seed(0))
    assert all(layer.rank == 4 and layer.active_rank == 4 for layer in adapted.layers.values())


def test_set_state_without_heads_loads_the_adapter_and_keeps_the_models_head(tiny_bert):
    adapted = inject_nested_lora(tiny_bert, max_rank=4, alpha=8.0, train_head=True)
    adapted.reset_parameters(torch.Generator().manual_seed(0))
    shared = get_state(adapted)
    # a calibrated state: other factors, and one head per tier, which the model lacks
    calibrated = {k: v + 1.0 for k, v in shared.items() if not k.startswith("classifier")}
    for tier in (2, 4):
        for name in ("classifier.weight", "classifier.bias"):
            calibrated[head_key(name, tier)] = torch.zeros_like(shared[name])
    with pytest.raises(AdapterError, match="head parameters"):
        set_state(adapted, calibrated)
    set_state(adapted, calibrated, heads=False)
    loaded = get_state(adapted)
    for key, value in calibrated.items():
        if "@" not in key:
            assert torch.equal(loaded[key], value), key
    assert {k for k in loaded if k.startswith("classifier")} == {
        "classifier.weight",
        "classifier.bias",
    }
    assert torch.equal(loaded["classifier.weight"], shared["classifier.weight"])
