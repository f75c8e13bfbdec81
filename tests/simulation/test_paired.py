"""Paired bootstrap intervals: exact where the answer is known, and from a comparison's runs."""

import pytest
import torch

from prelort.errors import DataError
from prelort.simulation.paired import (
    Difference,
    difference_table,
    paired_differences,
    paired_interval,
    run_examples,
)
from prelort.simulation.reload import load_comparison
from tests_helpers import finished_run


def test_a_constant_difference_has_a_point_interval():
    mean, low, high = paired_interval(torch.full((3, 50), 0.2, dtype=torch.float64))
    assert abs(mean - 0.2) < 1e-12 and abs(low - 0.2) < 1e-12 and abs(high - 0.2) < 1e-12


def test_noise_around_zero_is_not_separated_and_a_shift_is():
    g = torch.Generator().manual_seed(0)
    noise = (
        torch.randint(0, 2, (3, 300), generator=g).double()
        - torch.randint(0, 2, (3, 300), generator=g).double()
    )
    mean, low, high = paired_interval(noise)
    assert low < 0 < high and low <= mean <= high
    shifted = noise.clone()
    shifted[:, :60] = 1.0  # one method gets 60 more examples right in every seed
    _, low, high = paired_interval(shifted)
    assert low > 0


def test_the_interval_narrows_with_more_examples():
    g = torch.Generator().manual_seed(1)
    wide = paired_interval(torch.randn(2, 50, generator=g))
    narrow = paired_interval(torch.randn(2, 2000, generator=g))
    assert (narrow[2] - narrow[1]) < (wide[2] - wide[1]) / 3


def test_the_table_marks_separated_differences():
    diffs = [
        Difference("a", "ref", 2, "accuracy", 0.05, 0.01, 0.09, 300, 3),
        Difference("a", "ref", 4, "accuracy", 0.01, -0.02, 0.04, 300, 3),
    ]
    table = difference_table(diffs)
    assert "+0.050 [+0.010, +0.090] *" in table and "+0.010 [-0.020, +0.040] |" in table
    assert "300 test examples x 3 seed(s)" in table


def test_rows_paired_over_different_seeds_say_how_many():
    diffs = [
        Difference("a", "ref", 2, "nll", 0.01, 0.0, 0.02, 100, 3),
        Difference("b", "ref", 2, "nll", 0.02, 0.01, 0.03, 100, 1),
    ]
    table = difference_table(diffs)
    assert "x the seeds both ran (n per row)" in table
    assert "| a (n = 3) |" in table and "| b (n = 1) |" in table


def test_differences_are_read_from_the_runs_examples(tmp_path):
    finished_run(tmp_path, "prelort-ordered-g", {"2": [1.0, 1.0, 0.0, 1.0]})
    finished_run(tmp_path, "fedit-min", {"2": [0.0, 1.0, 0.0, 1.0], "4": [1.0] * 4})
    (diff,) = paired_differences(load_comparison(tmp_path), ["prelort-ordered-g"])
    assert (diff.method, diff.tier, diff.examples, diff.seeds) == ("fedit-min", 2, 4, 1)
    assert diff.mean == -0.25  # the tier only one run scored is left out


def test_runs_scored_on_other_examples_are_not_paired(tmp_path, caplog):
    finished_run(tmp_path, "prelort-ordered-g", {"2": [1.0] * 4}, eval_examples=4)
    finished_run(tmp_path, "fedit-min", {"2": [1.0] * 5}, eval_examples=5)
    comparison = load_comparison(tmp_path, vary=["eval_examples"])
    assert paired_differences(comparison, [comparison.methods[0]]) == []
    assert "scored on 4 and 5 test examples" in caplog.text


@pytest.mark.parametrize("text", ["{", '{"scores": []}', '{"tiers": {"2": {"accuracy": 3}}}'])
def test_a_malformed_examples_file_is_named(tmp_path, text):
    run = finished_run(tmp_path, "fedit-min", {"2": [1.0]})
    (run / "examples.json").write_text(text)
    with pytest.raises(DataError, match="fedit-min-seed0/examples.json: not a readable"):
        run_examples(run)
