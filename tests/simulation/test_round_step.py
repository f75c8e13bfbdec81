"""benchmarks/round_step.py: how far one more round moves a run's strongest direction."""

import csv
import math

import torch
from benchmarks.round_step import main, movement

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
        assert set(found) == {"s1", "step", "top", "turn", "rest"}
        assert all(math.isfinite(v) for v in found.values())
        assert found["step"] > 0  # every update moved the product
