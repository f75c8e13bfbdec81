"""Re-ordering a finished run's adapter once (benchmarks/ordered_once.py) keeps its top tier."""

import json

from benchmarks.ordered_once import score_ordered

from prelort.runtime.outputs import write_outputs
from prelort.simulation import run_simulation
from prelort.simulation.compare import load_comparison
from tests_helpers import tiny


def test_the_reordered_adapter_keeps_the_top_tier_and_is_summarised_beside_its_run(
    tiny_llama_dir, headline_jsonl, tmp_path
):
    config = tiny(tiny_llama_dir, headline_jsonl, tmp_path / "cmp" / "prelort-seed0")
    result = run_simulation(config, progress=False)
    write_outputs(result, config.out)
    out = tmp_path / "cmp" / "prelort-ordered-once-seed0"
    tiers = score_ordered(config.out, out, "fixed-a")
    top = str(max(config.ranks.ladder))
    # the same rank-R product: the top tier scores as the run's own, up to float rounding
    assert abs(tiers[top]["perplexity"] - result.final[top]["perplexity"]) < 1e-3
    examples = json.loads((out / "examples.json").read_text())["tiers"]
    assert len(examples[top]["nll"]) == config.eval_examples
    assert set(load_comparison(tmp_path / "cmp").methods) == {"prelort", "prelort-ordered-once"}
