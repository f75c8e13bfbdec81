"""benchmarks/round_step.py: how far one more round moves a run's strongest direction."""

import csv
import math

import torch
from benchmarks.round_step import downhill, main, movement, products, weight_gradients

from prelort.data.encoding import make_batch
from prelort.runtime.outputs import write_outputs
from prelort.simulation import run_simulation
from tests_helpers import tiny


def test_a_step_along_the_strongest_direction_counts_as_top_and_nothing_else():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(7, 5, generator=g, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    found = movement(w, w + 0.3 * torch.outer(u[:, 0], vh[0]))
    assert math.isclose(found["s1"], float(s[0]))
    assert math.isclose(found["step"], 0.3, rel_tol=1e-9)
    assert math.isclose(found["top"], 0.3 / float(s[0]), rel_tol=1e-9)
    assert found["rest"] < 1e-12 and found["turn"] < 1e-12


def test_a_step_outside_it_counts_as_rest_and_turns_the_direction():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(7, 5, generator=g, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    step = 0.5 * float(s[0]) * torch.outer(u[:, 1], vh[0])  # the strongest input, another output
    found = movement(w, w + step)
    assert found["top"] < 1e-12
    assert math.isclose(found["rest"], 0.5, rel_tol=1e-9)
    assert found["turn"] > 0.01


def test_one_more_round_of_a_finished_run_reports_the_global_and_every_client_rank(
    tiny_llama_dir, headline_jsonl, tmp_path
):
    config = tiny(tiny_llama_dir, headline_jsonl, tmp_path / "run", method="prelort-ordered-g")
    write_outputs(run_simulation(config, progress=False, checkpoint_dir=config.out), config.out)
    main([str(config.out), "--csv", str(tmp_path / "step.csv")])
    with (tmp_path / "step.csv").open(encoding="utf-8") as handle:
        rows = {row["what"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"global", "client r1", "client r2", "client r4"}
    for row in rows.values():
        found = {k: float(v) for k, v in row.items() if k not in ("run", "what")}
        assert set(found) == {"s1", "step", "top", "turn", "rest", "descent", "align"}
        assert all(math.isfinite(v) for v in found.values())
        assert found["step"] > 0  # every update moved the product
        assert -1 <= found["align"] <= 1


def test_a_merged_term_counts_in_the_product_and_a_reply_takes_it_from_the_prefix():
    g = torch.Generator().manual_seed(2)
    a, b, merged = (torch.randn(*shape, generator=g) for shape in [(2, 5), (7, 2), (7, 5)])
    prefix = {"m.lora_a": a, "m.lora_b": b, "m.merged": merged}
    reply = {"m.lora_a": a, "m.lora_b": 2 * b}  # a client's reply carries no merged term
    assert torch.allclose(products(prefix, 0.5)["m"], (0.5 * b @ a + merged).double())
    moved = products(reply, 0.5, merged=prefix)["m"] - products(prefix, 0.5)["m"]
    assert torch.allclose(moved, (0.5 * b @ a).double())


def test_flora_s_round_is_measured_by_what_it_merged(tiny_llama_dir, headline_jsonl, tmp_path):
    config = tiny(tiny_llama_dir, headline_jsonl, tmp_path / "run", method="flora")
    write_outputs(run_simulation(config, progress=False, checkpoint_dir=config.out), config.out)
    main([str(config.out), "--csv", str(tmp_path / "step.csv")])
    with (tmp_path / "step.csv").open(encoding="utf-8") as handle:
        rows = {row["what"]: row for row in csv.DictReader(handle)}
    # its adapter is zero after every merge: without the merged term s1 would be 0 and top undefined
    assert float(rows["global"]["s1"]) > 0 and float(rows["global"]["step"]) > 0
    assert all(
        math.isfinite(float(v)) for k, v in rows["global"].items() if k not in ("run", "what")
    )


def test_descent_is_the_update_s_first_order_loss_decrease_and_align_its_cosine_with_it():
    g = torch.Generator().manual_seed(3)
    grads = {"m": torch.randn(4, 3, generator=g, dtype=torch.float64)}
    before = {"m": torch.zeros(4, 3, dtype=torch.float64)}
    found = downhill(grads, before, {"m": -0.5 * grads["m"]})
    assert math.isclose(found["descent"], 0.5 * float(grads["m"].square().sum()), rel_tol=1e-12)
    assert math.isclose(found["align"], 1.0, rel_tol=1e-12)
    sideways = torch.randn(4, 3, generator=g, dtype=torch.float64)
    sideways -= (sideways * grads["m"]).sum() / grads["m"].square().sum() * grads["m"]
    assert abs(downhill(grads, before, {"m": sideways})["align"]) < 1e-12


def test_the_weight_gradient_is_the_one_the_adapter_s_factors_see(
    tiny_llama_dir, headline_jsonl, tmp_path
):
    from prelort.adapters.state import get_state
    from prelort.runtime.workbench import build_workbench

    config = tiny(tiny_llama_dir, headline_jsonl, tmp_path / "run", method="prelort-ordered-g")
    result = run_simulation(config, progress=False)
    bench = build_workbench(config)
    adapted, rows = bench.adapted, list(range(6))
    pad = bench.tokenizer.pad_token_id
    grads = weight_gradients(
        adapted, result.global_state, bench.train, rows, bench.batch_kind, pad, 4
    )
    assert get_state(adapted).keys() == result.global_state.keys()  # the state is left loaded
    adapted.model.eval()
    adapted.model.zero_grad(set_to_none=True)
    for start in (0, 4):  # the same loss, differentiated by the factors instead
        chunk = rows[start : start + 4]
        loss = adapted.model(**make_batch(bench.batch_kind, bench.train, chunk, pad)).loss
        (loss * len(chunk) / len(rows)).backward()
    for name, layer in adapted.layers.items():
        expected = layer.scale * grads[name] @ layer.lora_a.double().T  # dL/dB = s G A^T
        assert torch.allclose(layer.lora_b.grad.double(), expected, rtol=1e-4, atol=1e-7)
        assert layer.base.weight.grad is None and not layer.base.weight.requires_grad
