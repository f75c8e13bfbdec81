"""The federation plan is a pure function of the config; the client step can reuse one model."""

import copy

import torch

from prelort.adapters import get_state, inject_nested_lora, slice_to_rank
from prelort.aggregation import get_method
from prelort.data.encoding import EncodedSplit
from prelort.federation import build_plan, client_step
from prelort.training import LocalTrainingConfig
from tests_helpers import tiny


def test_the_plan_is_a_function_of_the_config(tmp_path):
    config = tiny(
        "unused", "unused", tmp_path, clients=6, clients_per_round=4, partition="dirichlet"
    )
    labels = [i % 3 for i in range(120)]
    plan, again = build_plan(config, labels), build_plan(config, labels)
    assert plan == again
    assert plan.client_ranks == (1, 2, 4, 1, 2, 4)
    assert sorted(r for rows in plan.client_rows for r in rows) == list(range(120))
    for round_index in (1, 2, 3):
        sampled = plan.sampled(round_index)
        assert len(sampled) == 4 and sampled == sorted(sampled)
        assert plan.fails(round_index, sampled) == [False] * 4  # no simulated failures
    assert plan.client_seed(1, 0) != plan.client_seed(1, 1) != plan.client_seed(2, 1)
    failing = build_plan(config.replace(client_failure_rate=0.999), labels)
    assert failing.fails(1, failing.sampled(1)) == [True] * 4
    assert build_plan(config.replace(seed=1), labels) != plan


def test_a_model_reused_across_clients_gives_each_the_reply_a_fresh_model_gives(tiny_bert):
    g = torch.Generator().manual_seed(0)
    data = EncodedSplit(
        [torch.randint(3, 120, (10,), generator=g).tolist() for _ in range(16)],
        [i % 3 for i in range(16)],
    )
    fresh_bert = copy.deepcopy(tiny_bert)
    adapted = inject_nested_lora(tiny_bert, 4, 8.0, train_head=True)
    adapted.reset_parameters(torch.Generator().manual_seed(1))
    global_state = get_state(adapted)
    config = LocalTrainingConfig(steps=2, batch_size=8, lr=1e-2, nested="all")
    args = (data, list(range(16)), "classification", 0, (1, 2, 4), config)

    small = client_step(adapted, slice_to_rank(global_state, 1), *args, client_id=0, seed=5)
    a_key = next(k for k in small.state if k.endswith(".lora_a"))
    assert small.rank == 1 and small.state[a_key].shape[0] == 1
    reused = client_step(adapted, slice_to_rank(global_state, 4), *args, client_id=1, seed=7)

    other = inject_nested_lora(fresh_bert, 4, 8.0, train_head=True)
    other.reset_parameters(torch.Generator().manual_seed(1))
    alone = client_step(other, slice_to_rank(global_state, 4), *args, client_id=1, seed=7)
    assert reused.rank == alone.rank == 4 and reused.num_examples == 16
    assert reused.state.keys() == alone.state.keys()
    for key in alone.state:
        assert torch.equal(reused.state[key], alone.state[key]), key


def test_flora_clients_train_a_new_adapter_each_round_on_the_same_batches(tiny_bert):
    g = torch.Generator().manual_seed(0)
    data = EncodedSplit(
        [torch.randint(3, 120, (10,), generator=g).tolist() for _ in range(16)],
        [i % 3 for i in range(16)],
    )
    adapted = inject_nested_lora(tiny_bert, 4, 8.0, train_head=True)
    adapted.reset_parameters(torch.Generator().manual_seed(1))  # B = 0, as FLoRA's server sends
    sent = slice_to_rank(get_state(adapted), 2)
    config = LocalTrainingConfig(steps=1, batch_size=8, lr=1e-2, nested="off")
    args = (data, list(range(16)), "classification", 0, (2, 4), config)
    flora = get_method("flora").objective

    def a_rows(reply):
        return torch.cat([v for k, v in sorted(reply.state.items()) if k.endswith(".lora_a")])

    plain = client_step(adapted, sent, *args, client_id=0, seed=5)
    first = client_step(adapted, sent, *args, client_id=0, seed=5, objective=flora)
    again = client_step(adapted, sent, *args, client_id=0, seed=5, objective=flora)
    other = client_step(adapted, sent, *args, client_id=0, seed=6, objective=flora)
    # B = 0 makes the first step's loss blind to A: equal losses mean the same batches
    assert first.loss == plain.loss
    assert torch.equal(a_rows(first), a_rows(again))  # reproducible from the client's seed
    assert not torch.allclose(a_rows(first), a_rows(plain), atol=1e-3)  # not the A it was sent
    assert not torch.allclose(a_rows(first), a_rows(other), atol=1e-3)  # a new draw each round
