"""prelort/cli/runs.py: what the run commands read from their flags."""

import pytest

from prelort.cli import main
from prelort.cli.runs import _references


def test_references_split_on_commas_outside_a_pooled_runs_label():
    assert _references(" fedit-min, fedit-max ,") == ["fedit-min", "fedit-max"]
    named = _references("fedit-min[lr_schedule=constant,rounds=72],prelort-ordered-g")
    assert named == ["fedit-min[lr_schedule=constant,rounds=72]", "prelort-ordered-g"]
    assert _references(None) == []


@pytest.mark.parametrize("text", ["{", '{"rounds": []}'])
def test_calibrate_names_a_malformed_metrics_file(tmp_path, capsys, text):
    (tmp_path / "metrics.json").write_text(text)
    (tmp_path / "adapter.safetensors").write_bytes(b"")
    assert main(["calibrate", str(tmp_path)]) == 2
    assert f"{tmp_path / 'metrics.json'}: not a " in capsys.readouterr().err
