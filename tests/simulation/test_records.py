"""The run records kept in results/ (cited by docs/RESULTS.md) still load and pair."""

from pathlib import Path

import pytest

from prelort.simulation.paired import paired_differences
from prelort.simulation.reload import load_comparison

RESULTS = Path(__file__).resolve().parents[2] / "results"
KEPT = sorted({p.parent.parent for p in RESULTS.glob("**/*-seed*/metrics.json")})


@pytest.mark.parametrize("folder", KEPT, ids=[str(f.relative_to(RESULTS)) for f in KEPT])
def test_every_kept_comparison_summarizes(folder):
    comparison = load_comparison(folder)
    assert not comparison.unfinished, "keep the records of finished runs only"
    diffs = paired_differences(comparison, [comparison.methods[0]])
    assert {d.method for d in diffs} == set(comparison.methods[1:])
