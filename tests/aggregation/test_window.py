"""Window training: moving windows above a frozen prefix, averaged over the window's holders."""

import pytest
import torch

from prelort.adapters import get_state
from prelort.aggregation import get_method
from prelort.aggregation.window import (
    FrozenPrefixObjective,
    aggregate_windows,
    window_ends,
)
from prelort.errors import AdapterError, MethodUnsupported
from prelort.training.local import LocalTrainingConfig
from prelort.training.nested import truncation_ranks
from prelort.training.objective import PLAIN
from tests_helpers import ladder_run, lora_update, token_rows, trained_adapter, without_dropout

METHOD = get_method("prelort-window")


def test_a_clients_windows_climb_its_width_at_a_time_and_wrap():
    assert window_ends(2, 8) == [2, 4, 6, 8]
    assert window_ends(3, 8) == [3, 6]  # the last R mod b components are left to others
    schedule, rank = [], 2
    for _ in range(5):
        rank = METHOD.next_rank(rank, 0.0, (2, 4, 8), assigned=2)
        schedule.append(rank)
    assert schedule == [4, 6, 8, 2, 4]
    assert METHOD.next_rank(8, 0.0, (2, 4, 8), assigned=8) == 8
    assert METHOD.next_rank(4, 0.0, (2, 4, 8)) == 4  # no assigned rank: no schedule
    assert METHOD.allowed_ranks((2, 4, 8), [2, 4, 8]) == {2, 4, 6, 8}


def test_a_window_trains_only_the_truncations_above_its_frozen_prefix():
    objective = METHOD.local_objective(6, (2, 4, 8), (2, 4, 8), assigned=2)
    assert objective == FrozenPrefixObjective(start=4)
    ladder = objective.truncation_ladder((2, 4, 8))
    assert truncation_ranks("all", 6, ladder, torch.Generator()) == [6]
    assert METHOD.local_objective(2, (2, 4, 8), (2, 4, 8), assigned=2) == PLAIN
    assert METHOD.local_objective(8, (2, 4, 8), (2, 4, 8), assigned=8) == PLAIN


def product(state, module="m"):
    return state[module + ".lora_b"].double() @ state[module + ".lora_a"].double()


def test_each_index_is_averaged_over_the_clients_whose_window_held_it():
    fresh = lora_update(9, 4, 1, seed=0, in_features=6, out_features=5).state
    # client 0 (assigned 2) trained the window [2, 4) above the frozen [0, 2); client 1
    # (assigned 4) the whole prefix [0, 4)
    window = lora_update(0, 4, 3, seed=1, in_features=6, out_features=5)
    window.state["m.lora_a"][:2] = fresh["m.lora_a"][:2]  # the frozen prefix, sent back as is
    window.state["m.lora_b"][:, :2] = fresh["m.lora_b"][:, :2]
    whole = lora_update(1, 4, 1, seed=2, in_features=6, out_features=5)
    out = aggregate_windows(fresh, [window, whole], assigned=(2, 4))
    a = whole.state["m.lora_a"].clone()
    b = whole.state["m.lora_b"].clone()
    a[2:] = 0.75 * window.state["m.lora_a"][2:] + 0.25 * whole.state["m.lora_a"][2:]
    b[:, 2:] = 0.75 * window.state["m.lora_b"][:, 2:] + 0.25 * whole.state["m.lora_b"][:, 2:]
    # re-factorised in SVD order: the factors change, their product does not
    torch.testing.assert_close(product(out), b.double() @ a.double(), rtol=1e-5, atol=1e-6)


def test_an_index_no_window_held_keeps_its_value():
    fresh = lora_update(9, 4, 1, seed=0, in_features=6, out_features=5).state
    window = lora_update(0, 4, 1, seed=1, in_features=6, out_features=5)
    expected_a, expected_b = fresh["m.lora_a"].clone(), fresh["m.lora_b"].clone()
    expected_a[2:], expected_b[:, 2:] = (
        window.state["m.lora_a"][2:],
        window.state["m.lora_b"][:, 2:],
    )
    out = aggregate_windows(fresh, [window], assigned=(2,))
    torch.testing.assert_close(
        product(out), expected_b.double() @ expected_a.double(), rtol=1e-5, atol=1e-6
    )


def test_an_update_that_is_no_window_of_its_client_is_refused():
    fresh = lora_update(9, 4, 1, seed=0, in_features=6, out_features=5).state
    odd = lora_update(0, 3, 1, seed=1, in_features=6, out_features=5)
    with pytest.raises(AdapterError, match="not the end of a window"):
        aggregate_windows(fresh, [odd], assigned=(2,))
    stranger = lora_update(5, 4, 1, seed=1, in_features=6, out_features=5)
    with pytest.raises(AdapterError, match="no assigned rank"):
        aggregate_windows(fresh, [stranger], assigned=(2,))


def test_windows_support_neither_secure_aggregation_nor_dp():
    with pytest.raises(MethodUnsupported, match="secure"):
        METHOD.secure_rule()
    with pytest.raises(MethodUnsupported, match="dp_clip"):
        METHOD.sensitivity()


def test_local_training_leaves_the_frozen_prefix_exactly_as_sent(tiny_bert):
    adapted = trained_adapter(without_dropout(tiny_bert), rank=8)
    start = get_state(adapted)
    config = LocalTrainingConfig(steps=2, batch_size=8, lr=1e-2, weight_decay=0.1)
    result = ladder_run(adapted, token_rows(8), config, FrozenPrefixObjective(start=6))
    assert result.trained_ranks == frozenset({8})
    after = get_state(adapted)
    for key in start:
        if key.endswith("lora_a"):
            assert torch.equal(after[key][:6], start[key][:6])
            assert not torch.equal(after[key][6:], start[key][6:])
        elif key.endswith("lora_b"):
            assert torch.equal(after[key][:, :6], start[key][:, :6])


def test_a_federation_moves_each_client_through_its_windows(
    tiny_llama_dir, headline_jsonl, tmp_path
):
    from prelort.simulation.run import run_simulation
    from tests_helpers import tiny

    config = tiny(tiny_llama_dir, headline_jsonl, tmp_path / "w", method="prelort-window", rounds=4)
    result = run_simulation(config, progress=False)
    # assigned ranks 1, 2, 4 of R = 4: windows ending at 1-2-3-4, 2-4, and 4
    assert [t["ranks"] for t in result.traffic] == [[1, 2, 4], [2, 4, 4], [3, 2, 4], [4, 4, 4]]
    assert not any(t["rejected"] for t in result.traffic)


def test_merging_finished_adapters_treats_each_as_a_prefix():
    updates = [
        lora_update(0, 2, 1, seed=1, in_features=6, out_features=5),
        lora_update(1, 4, 1, seed=2, in_features=6, out_features=5),
    ]
    zeros = {"m.lora_a": torch.zeros(4, 6), "m.lora_b": torch.zeros(5, 4)}
    merged = METHOD.merge(updates, lambda rank: dict(zeros))
    ordered = get_method("prelort-ordered-u").merge(updates, lambda rank: dict(zeros))
    torch.testing.assert_close(product(merged), product(ordered))
