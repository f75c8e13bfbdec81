import pytest

from prelort.simulation.tables import MISSING, tier_table


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
