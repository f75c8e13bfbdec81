"""prelort/cli/runs.py: what the run commands read from their flags."""

from prelort.cli.runs import _references


def test_references_split_on_commas_outside_a_pooled_runs_label():
    assert _references(" fedit-min, fedit-max ,") == ["fedit-min", "fedit-max"]
    named = _references("fedit-min[lr_schedule=constant,rounds=72],prelort-ordered-g")
    assert named == ["fedit-min[lr_schedule=constant,rounds=72]", "prelort-ordered-g"]
    assert _references(None) == []
