"""Where an adapter keeps its update: segment shares per round (benchmarks/segment_shares.py) and
the spectrum of a merged update (benchmarks/spectrum.py)."""

import json

import pytest
import torch
from benchmarks.segment_shares import main, method_shares, norms_per_step, rows_of

from prelort.errors import DataError


def write_run(folder, rounds, config=None):
    """A run folder whose metrics.json records ``rounds``: [(first segment's share, ranks)]."""
    folder.mkdir(parents=True)
    traffic = [
        {
            "round": i + 1,
            "ranks": ranks,
            "segments": [
                {"lo": 0, "hi": 2, "norm": 1.0, "share": first},
                {"lo": 2, "hi": 4, "norm": 0.5, "share": 1.0 - first},
            ],
        }
        for i, (first, ranks) in enumerate(rounds)
    ]
    (folder / "metrics.json").write_text(json.dumps({"traffic": traffic, "config": config or {}}))
    return folder


def test_shares_pool_seeds_per_method_and_round(tmp_path):
    runs = [
        write_run(tmp_path / "hetlora-seed0", [(0.5, [2, 4]), (1.0, [2, 2])]),
        write_run(tmp_path / "hetlora-seed1", [(0.7, [2, 4]), (0.9, [2, 3])]),
        write_run(tmp_path / "zeropad-seed0", [(0.6, [2, 4])]),
    ]
    rows = rows_of(method_shares(runs))
    first = rows[0]
    assert (first["method"], first["round"], first["seeds"]) == ("hetlora", 1, 2)
    assert first["share_outside_first"] == pytest.approx(0.4)  # (0.5 + 0.3) / 2
    assert (first["min"], first["max"]) == (pytest.approx(0.3), pytest.approx(0.5))
    assert rows[1]["mean_client_rank"] == pytest.approx(2.25)  # (2 + 2) / 2 and (2 + 3) / 2
    assert [r["method"] for r in rows] == ["hetlora", "hetlora", "zeropad"]
    main(
        [str(r) for r in runs]
        + ["--csv", str(tmp_path / "s.csv"), "--plot", str(tmp_path / "s.png")]
    )
    assert (tmp_path / "s.csv").read_text().count("\n") == 1 + 3
    assert (tmp_path / "s.png").stat().st_size > 0


def test_norms_per_step_divide_by_the_square_of_the_rounds_step_factor(tmp_path, capsys):
    config = {"lr_schedule": "cosine", "rounds": 2}
    run = write_run(tmp_path / "zeropad-seed0", [(0.8, [2, 4]), (0.9, [2, 4])], config)
    rows = norms_per_step(run)
    assert [(r["round"], r["segment"]) for r in rows] == [
        (1, "1-2"),
        (1, "3-4"),
        (2, "1-2"),
        (2, "3-4"),
    ]
    assert rows[1]["norm_per_step_squared"] == pytest.approx(0.5)  # round 1: factor 1
    assert rows[3]["step_factor"] == pytest.approx(0.5)  # (1 + cos(pi / 2)) / 2
    assert rows[3]["norm_per_step_squared"] == pytest.approx(0.5 / 0.25)
    constant = norms_per_step(write_run(tmp_path / "c-seed0", [(0.8, [2, 4])], {"rounds": 1}))
    assert constant[1]["norm_per_step_squared"] == pytest.approx(0.5)  # older runs: constant
    main([str(run), "--per-step", "--rounds", "2"])
    assert "| zeropad-seed0 | 2 | 3-4 | 0.5 | 0.500 | 2 |" in capsys.readouterr().out


def test_a_run_without_records_is_named(tmp_path):
    with pytest.raises(DataError, match="no metrics.json"):
        method_shares([tmp_path / "missing-seed0"])
    with pytest.raises(DataError, match="no round records"):
        method_shares([write_run(tmp_path / "no-adapter-seed0", [])])


def test_a_merged_update_counts_whole_in_the_spectrum():
    from benchmarks.spectrum import energy_shares, product_singular_values

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 6, generator=g), torch.randn(5, 2, generator=g)
    merged = torch.randn(5, 6, generator=g)
    state = {"m.lora_a": a, "m.lora_b": b}
    plain = product_singular_values(state)["m"]
    torch.testing.assert_close(plain, torch.linalg.svdvals((b @ a).double())[:2])
    whole = product_singular_values({**state, "m.merged": 3.0 * merged}, scale=3.0)["m"]
    torch.testing.assert_close(whole, torch.linalg.svdvals((merged + b @ a).double()))
    assert len(whole) == 5 and energy_shares(whole, [2])[0] < 1.0  # past the adapter's rank
