"""benchmarks/step_turn.py: how far one client round moves a global adapter's product."""

import math

import pytest
import torch
from benchmarks.step_turn import movement


def rank_one(out_dir: torch.Tensor, in_dir: torch.Tensor, size: float) -> dict[str, torch.Tensor]:
    return {"m.lora_a": in_dir[None, :], "m.lora_b": size * out_dir[:, None]}


def test_an_unmoved_adapter_has_moved_nothing():
    g = torch.Generator().manual_seed(0)
    state = {"m.lora_a": torch.randn(3, 8, generator=g), "m.lora_b": torch.randn(6, 3, generator=g)}
    found = movement(state, state)
    assert found["change"] == 0.0 and found["sigma1"] == pytest.approx(1.0)
    assert found["turn_in"] < 1e-3 and found["turn_out"] < 1e-3


def test_a_turned_and_grown_direction_gives_its_angle_and_growth():
    e = torch.eye(4)
    before = rank_one(e[0], e[0], 2.0)
    angle = math.radians(30)
    turned_in = math.cos(angle) * e[0] + math.sin(angle) * e[1]
    after = rank_one(-e[0], turned_in, 3.0)  # a flipped sign is the same direction
    found = movement(before, after)
    assert found["turn_in"] == pytest.approx(30.0, abs=1e-6)
    assert found["turn_out"] == pytest.approx(0.0, abs=1e-6)
    assert found["sigma1"] == pytest.approx(1.5)
    expected = (torch.outer(-3 * e[0], turned_in) - torch.outer(2 * e[0], e[0])).norm() / 2.0
    assert found["change"] == pytest.approx(float(expected))


def test_a_run_gets_one_row_per_method_and_step(tiny_llama_dir, headline_jsonl, tmp_path):
    import csv

    from benchmarks.step_turn import main

    from prelort.runtime.outputs import write_outputs
    from prelort.simulation import run_simulation
    from tests_helpers import tiny

    config = tiny(tiny_llama_dir, headline_jsonl, tmp_path / "run", method="prelort-ordered-g")
    write_outputs(run_simulation(config, progress=False), config.out)
    out = tmp_path / "turn.csv"
    main([str(config.out), "--methods", "prelort-ordered-g,prelort-ordered-gb", "--lr",
          "1e-3,1e-2", "--clients", "2", "--csv", str(out)])  # fmt: skip
    with out.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["method"], float(r["lr"])) for r in rows] == [
        ("prelort-ordered-g", 1e-3), ("prelort-ordered-g", 1e-2),
        ("prelort-ordered-gb", 1e-3), ("prelort-ordered-gb", 1e-2),
    ]  # fmt: skip
    for small, large in ((rows[0], rows[1]), (rows[2], rows[3])):
        assert 0 < float(small["change"]) < float(large["change"])  # a larger step moves further
