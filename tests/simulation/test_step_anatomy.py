"""benchmarks/step_anatomy.py: per-component gradient measures of a global adapter."""

import torch
from benchmarks.step_anatomy import agreement, anatomy

from prelort.aggregation.ordered import svd_ordered


def test_agreement_is_one_for_repeated_gradients_and_minus_one_for_opposed():
    g = torch.randn(1, 3, 5)
    assert torch.allclose(agreement(torch.cat([g, g, 2 * g])), torch.ones(3))
    assert torch.allclose(agreement(torch.cat([g, -g])), -torch.ones(3))


def test_top_dir_is_each_a_rows_cosine_with_the_products_strongest_direction():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 9, generator=g), torch.randn(7, 4, generator=g)
    grads = {"m": (torch.randn(2, 7, 4, generator=g), torch.randn(2, 4, 9, generator=g))}
    strongest = torch.linalg.svd((b @ a).double()).Vh[0]
    expected = (torch.nn.functional.normalize(a.double(), dim=-1) @ strongest).abs()
    found = anatomy(grads, {"m.lora_a": a, "m.lora_b": b})["top_dir"]
    torch.testing.assert_close(
        torch.tensor(found, dtype=torch.float64), expected, atol=1e-5, rtol=0
    )


def test_an_svd_ordered_adapter_keeps_the_strongest_direction_in_component_one_alone():
    g = torch.Generator().manual_seed(0)
    state = {"m.lora_a": torch.randn(4, 9, generator=g), "m.lora_b": torch.randn(7, 4, generator=g)}
    ordered = svd_ordered(state, "unit-a")
    grads = {"m": (torch.randn(3, 7, 4, generator=g), torch.randn(3, 4, 9, generator=g))}
    plain, svd = anatomy(grads, state), anatomy(grads, ordered)
    assert svd["top_dir"][0] > 1 - 1e-5 and max(svd["top_dir"][1:]) < 1e-5
    assert min(plain["top_dir"]) > 0.01  # random factors: every row holds some of it
    assert plain["norm"][0] == 1.0 and abs(svd["with_1"][0] - 1.0) < 1e-6


def test_a_finished_run_gets_one_row_per_measure_in_the_csv(
    tiny_llama_dir, headline_jsonl, tmp_path
):
    import csv

    from benchmarks.step_anatomy import main

    from prelort.runtime.outputs import write_outputs
    from prelort.simulation import run_simulation
    from tests_helpers import tiny

    config = tiny(tiny_llama_dir, headline_jsonl, tmp_path / "run", method="prelort-ordered-g")
    write_outputs(run_simulation(config, progress=False), config.out)
    main([str(config.out), "--batches", "2", "--csv", str(tmp_path / "anatomy.csv")])
    with (tmp_path / "anatomy.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["measure"] for r in rows] == ["norm", "agree_b", "agree_a", "with_1", "top_dir"]
    assert all(len([k for k in r if k.startswith("c")]) == 4 for r in rows)  # components of R = 4
    assert float(rows[0]["c1"]) == 1.0  # component 1's norm is the unit
