import math

import pytest

from prelort.config import SimulationConfig
from prelort.runtime.result import SimulationResult
from prelort.simulation.compare import Comparison
from prelort.simulation.convergence import (
    Trend,
    gap_table,
    gaps,
    trend_table,
    trends,
    window_start,
)


def run(curve: dict[int, float], metric: str = "perplexity") -> SimulationResult:
    rounds = [
        {"round": r, "tiers": {"2": {metric: v}, "8": {metric: v - 1}}} for r, v in curve.items()
    ]
    return SimulationResult({}, [2, 8], [10, 10], rounds)


def comparison(runs: dict[tuple[str, int], SimulationResult]) -> Comparison:
    methods = list(dict.fromkeys(m for m, _ in runs))
    seeds = sorted({s for _, s in runs})
    return Comparison(SimulationConfig(), methods, seeds, runs)


@pytest.mark.parametrize(
    ("evaluated", "start"),
    [
        ([24], None),  # one evaluation: no trend
        ([12, 24], 12),  # the only earlier one, though more than a quarter back
        ([3, 6, 9, 12, 15, 18, 21, 24], 18),  # a quarter of 24 rounds back
        ([4, 8], 4),
        ([12, 15, 18, 21, 24, 27, 30, 33, 36], 27),
        ([1, 2], 1),
    ],
)
def test_the_window_reaches_a_quarter_of_the_run_back(evaluated, start):
    assert window_start(evaluated) == start


def test_a_falling_curve_is_not_a_plateau_and_a_flat_one_is():
    falling = {r: 40.0 - r for r in range(3, 25, 3)}  # 22 at round 18, 16 at 24
    flat = {r: 20.0 + (0.1 if r == 24 else 0.0) for r in range(3, 25, 3)}
    found = trends(comparison({("a", 0): run(falling), ("b", 0): run(flat)}))
    a2 = next(t for t in found if t.method == "a" and t.tier == 2)
    assert (a2.start_round, a2.end_round, a2.start, a2.end) == (18, 24, 22.0, 16.0)
    assert a2.relative_change == pytest.approx(-6 / 22) and not a2.plateau
    b2 = next(t for t in found if t.method == "b" and t.tier == 2)
    assert b2.relative_change == pytest.approx(0.1 / 20) and b2.plateau
    table = trend_table(found)
    assert "| a | 18 → 24 (n = 1) | 22 → 16, -27.3 % (fit -27.3 %)" in table
    assert "**20 → 20.1, +0.5 % (fit +0.5 %)**" in table


def test_the_plateau_is_read_off_the_line_through_the_window_not_its_two_ends():
    # 72 rounds evaluated every 6: the window is 54..72; one spike at its last evaluation
    spiked = {r: 20.0 for r in range(6, 73, 6)} | {72: 20.5}
    t = next(t for t in trends(comparison({("a", 0): run(spiked)})) if t.tier == 2)
    assert [r for r, _ in t.points] == [54, 60, 66, 72]
    assert t.relative_change == pytest.approx(0.025)
    # pairwise slopes 0, 0, 0, 0.5/18, 0.5/12, 0.5/6: the median 0.5/36 per round
    slope = 0.5 / 36
    at_start = (20 - 60 * slope + 20 - 54 * slope) / 2 + 54 * slope
    assert t.fitted_change == pytest.approx(slope * 18 / at_start)  # 1.25 %, half the spike's
    # one seed's spike inside the window does not move it at all
    mid = {r: 20.0 for r in range(6, 73, 6)} | {60: 21.0}
    m = next(t for t in trends(comparison({("a", 0): run(mid)})) if t.tier == 2)
    assert m.fitted_change == 0.0 and m.plateau
    # a steady fall is one however it is read
    falling = {r: 30.0 - 0.1 * r for r in range(6, 73, 6)}
    f = next(t for t in trends(comparison({("a", 0): run(falling)})) if t.tier == 2)
    assert f.fitted_change == pytest.approx(f.relative_change) and not f.plateau


def test_seeds_are_averaged_and_a_seed_without_the_windows_rounds_is_left_out():
    seeds = {
        ("a", 0): run({12: 10.0, 18: 8.0, 24: 6.0}),
        ("a", 1): run({12: 20.0, 18: 12.0, 24: 10.0}),
        ("a", 2): run({12: 30.0, 24: 1.0}),  # evaluated once before round 24: left out
    }
    found = trends(comparison(seeds))
    t = next(t for t in found if t.tier == 2)
    assert (t.start, t.end, t.seeds) == (10.0, 8.0, 2)


def test_runs_evaluated_once_have_no_trend():
    assert trends(comparison({("a", 0): run({12: 5.0})})) == []


def test_a_metric_starting_at_zero_moves_infinitely_or_not_at_all():
    assert Trend("a", 2, "accuracy", 1, 2, 0.0, 0.0, 1).plateau
    moved = Trend("a", 2, "accuracy", 1, 2, 0.0, 0.5, 1)
    assert moved.relative_change == math.inf and not moved.plateau


def test_the_summary_and_trends_csv_say_whether_the_runs_settled(tmp_path):
    from prelort.simulation.compare import write_comparison

    write_comparison(comparison({("a", 0): run({4: 30.0, 8: 24.0})}), tmp_path)
    assert (
        "Change of perplexity over the last 25% of the rounds"
        in (tmp_path / "summary.md").read_text()
    )
    rows = (tmp_path / "trends.csv").read_text().splitlines()
    assert rows[0].startswith("method,tier,metric,start_round,end_round") and len(rows) == 3
    assert "fitted_change" in rows[0] and "points" not in rows[0]
    assert rows[1].endswith(",False")


def test_the_rounds_plot_starts_at_the_round_asked_for(tmp_path):
    from prelort.simulation.compare import write_comparison

    runs = comparison({("a", 0): run({4: 30.0, 8: 24.0})})
    write_comparison(runs, tmp_path / "all")
    write_comparison(runs, tmp_path / "late", rounds_from=9)  # after every evaluated round
    assert (tmp_path / "all" / "rounds_perplexity.png").is_file()
    assert not (tmp_path / "late" / "rounds_perplexity.png").exists()


def test_round_rows_average_the_seeds_that_evaluated_each_round_and_rounds_csv_keeps_them_all(
    tmp_path,
):
    from prelort.simulation.compare import write_comparison

    runs = comparison({("a", 0): run({4: 30.0, 8: 24.0}), ("a", 1): run({8: 20.0})})
    rows = [r for r in runs.round_rows() if r["tier"] == 2]
    assert [(r["round"], r["mean"], r["seeds"]) for r in rows] == [(4, 30.0, 1), (8, 22.0, 2)]
    assert rows[1]["std"] == pytest.approx(math.sqrt(8.0))
    write_comparison(runs, tmp_path, rounds_from=9)
    lines = (tmp_path / "rounds.csv").read_text().splitlines()
    assert lines[0] == "method,tier,metric,round,mean,std,seeds" and len(lines) == 5


def test_gaps_pair_each_seed_with_the_reference_and_read_perplexity_in_nats():
    runs = comparison(
        {
            ("a", 0): run({12: 20.0, 18: 16.0, 24: 12.0}),
            ("ref", 0): run({12: 10.0, 24: 12.0}),  # round 18 not evaluated: no gap there
            ("a", 1): run({12: 40.0, 24: 24.0}),
            ("ref", 1): run({12: 10.0, 24: 12.0}),
            ("a", 2): run({12: 5.0, 24: 5.0}),  # no reference run for seed 2: left out
        }
    )
    found = [g for g in gaps(runs, ["ref"]) if g.tier == 2]
    assert [(g.method, g.metric, g.round, g.seeds) for g in found] == [
        ("a", "log_perplexity", 12, 2),
        ("a", "log_perplexity", 24, 2),
    ]
    assert found[0].mean == pytest.approx((math.log(2) + math.log(4)) / 2)
    assert found[0].std == pytest.approx(math.log(2) / math.sqrt(2))
    assert found[1].mean == pytest.approx(math.log(2) / 2)  # closing: seed 0 at 0, seed 1 at log 2
    top = next(g for g in gaps(runs, ["ref"]) if g.tier == 8 and g.round == 12)
    assert top.mean == pytest.approx((math.log(19 / 9) + math.log(39 / 9)) / 2)


def test_gaps_keep_accuracy_as_it_is_and_the_table_shows_the_window_ends():
    runs = comparison(
        {
            ("a", 0): run({4: 0.5, 8: 0.7, 12: 0.8, 16: 0.9}, "accuracy"),
            ("ref", 0): run({4: 0.6, 8: 0.8, 12: 0.8, 16: 0.85}, "accuracy"),
        }
    )
    found = gaps(runs, ["ref"])
    assert {g.metric for g in found} == {"accuracy"}
    table = gap_table(found)
    assert "Gap to ref, each method minus ref in accuracy" in table
    assert "| a | 12 → 16 (n = 1) | +0.000 → +0.050 | +0.000 → +0.050 |" in table
    assert gaps(runs, ["a"])[0].method == "ref"  # every other method, whichever is the reference


def test_the_summary_gaps_csv_and_plot_follow_the_gap_to_the_reference(tmp_path):
    from prelort.simulation.compare import write_comparison

    runs = comparison({("a", 0): run({4: 30.0, 8: 24.0}), ("b", 0): run({4: 20.0, 8: 20.0})})
    write_comparison(runs, tmp_path, references=["b"])
    assert (
        "Gap to b, each method minus b in log perplexity" in (tmp_path / "summary.md").read_text()
    )
    lines = (tmp_path / "gaps.csv").read_text().splitlines()
    assert lines[0] == "method,reference,tier,metric,round,mean,std,seeds" and len(lines) == 5
    last = lines[-1].split(",")
    assert last[:5] == ["a", "b", "8", "log_perplexity", "8"]
    assert float(last[5]) == pytest.approx(math.log(23 / 19))
    assert (tmp_path / "gaps_log_perplexity.png").is_file()
    single = comparison({("a", 0): run({4: 30.0, 8: 24.0})})
    write_comparison(single, tmp_path / "one")
    assert not (tmp_path / "one" / "gaps.csv").exists()
