import pytest

from prelort.simulation.tables import (
    MISSING,
    REFERENCE,
    cost_table,
    markdown_table,
    reference_note,
    tier_table,
)


def test_a_row_per_method_a_column_per_tier_and_a_gap_where_a_tier_is_missing():
    table = tier_table(
        "method",
        [2, 8],
        [(["a", "1 → 2"], {2: "x", 8: "y"}), (["b", "1 → 2"], {2: "z"})],
        ["rounds"],
    )
    assert table.splitlines() == [
        "| method | rounds | rank 2 | rank 8 |",
        "|---|---|---|---|",
        "| a | 1 → 2 | x | y |",
        f"| b | 1 → 2 | z | {MISSING} |",
    ]


def test_a_row_whose_leading_cells_do_not_fit_the_header_is_refused():
    with pytest.raises(ValueError, match="leading cells"):
        tier_table("method", [2], [(["a", "extra"], {2: "x"})])


def _row(method, tier, mean, std=0.0, seeds=1, metric="accuracy"):
    return {
        "method": method,
        "tier": tier,
        "metric": metric,
        "mean": mean,
        "std": std,
        "seeds": seeds,
    }


def test_the_result_table_shows_mean_and_std_only_over_several_seeds():
    rows = [_row("a", 2, 0.5, 0.1, seeds=3), _row("a", 4, 0.6, 0.0, seeds=3), _row("b", 2, 0.7)]
    lines = markdown_table(rows).splitlines()
    assert lines[2] == "| a (n = 3) | 0.5000 ± 0.1000 | 0.6000 ± 0.0000 |"
    assert lines[3] == f"| b (n = 1) | 0.7000 | {MISSING} |"


def test_the_reference_note_warns_when_the_adapters_add_little_and_reads_perplexity_downward():
    small = [_row(REFERENCE, 2, 0.90), _row("a", 2, 0.905)]
    assert "say" in reference_note(small) and "gain +0.0050" in reference_note(small)
    large = [_row(REFERENCE, 2, 40.0, metric="perplexity"), _row("a", 2, 20.0, metric="perplexity")]
    note = reference_note(large)
    assert "gain +20.0000" in note and "little" not in note
    assert reference_note([_row("a", 2, 0.9)]) == ""


def test_the_cost_table_adds_the_privacy_column_only_under_dp():
    plain = {
        "method": "a",
        "bytes_up_per_round": 2e6,
        "bytes_down_per_round": 1e6,
        "aggregation_ms_per_round": 3.25,
        "wall_seconds": 12.4,
    }
    assert cost_table([plain]).splitlines()[2] == "| a | 2.000 | 1.000 | 3.2 | 12 |"
    private = cost_table([{**plain, "epsilon": 1.234, "delta": 1e-5}, plain]).splitlines()
    assert private[0].endswith(" ε (δ) |")
    assert private[2].endswith("| 1.23 (1e-05) |") and private[3].endswith("| - |")
