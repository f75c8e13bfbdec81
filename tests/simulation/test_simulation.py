"""End-to-end federations on tiny random models (seconds each)."""

import json
import math

import pytest
import torch

from prelort.adapters import state_rank
from prelort.aggregation import methods
from prelort.errors import ConfigError, DataError
from prelort.io import load_adapter
from prelort.runtime.outputs import write_outputs
from prelort.simulation import assign_ranks, build_workbench, run_simulation
from prelort.simulation.compare import run_comparison, write_comparison
from tests_helpers import tiny


def test_classification_federation_writes_every_output(tiny_bert_dir, topic_jsonl, tmp_path):
    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "out")
    result = run_simulation(config, progress=False)
    files = write_outputs(result, config.out)
    metrics = json.loads((config.out / "metrics.json").read_text())
    assert metrics["config"]["method"] == "prelort"
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert set(metrics["final"]["tiers"]) == {"1", "2", "4"}
    assert 0.0 <= metrics["final"]["tiers"]["4"]["accuracy"] <= 1.0
    assert (config.out / "metrics.csv").read_text().startswith("round,tier,metric,value")
    assert files["plot_accuracy"].stat().st_size > 1000
    assert files["plot_segments"].stat().st_size > 1000  # energy per rank segment, every round
    state, meta = load_adapter(config.out / "adapter.safetensors")
    assert state_rank(state) == 4 and meta["max_rank"] == 4
    assert result.client_ranks == [1, 2, 4]


def test_same_seed_same_result_and_other_seed_differs(tiny_bert_dir, topic_jsonl, tmp_path):
    config = tiny(
        tiny_bert_dir, topic_jsonl, tmp_path / "a", partition="dirichlet", dirichlet_alpha=1.0
    )
    bench = build_workbench(config)
    first = run_simulation(config, bench, progress=False)
    second = run_simulation(config, bench, progress=False)
    for key in first.global_state:
        assert torch.equal(first.global_state[key], second.global_state[key]), key
    assert first.final == second.final
    other = run_simulation(config.replace(seed=1), bench, progress=False)
    assert any(
        not torch.equal(first.global_state[k], other.global_state[k]) for k in first.global_state
    )


def test_generation_federation_reports_perplexity_and_rouge(
    tiny_llama_dir, headline_jsonl, tmp_path
):
    config = tiny(tiny_llama_dir, headline_jsonl, tmp_path / "gen", method="zeropad")
    result = run_simulation(config, progress=False)
    final = result.final["4"]
    assert final["perplexity"] > 1.0 and 0.0 <= final["rouge_l"] <= 1.0
    assert "rouge_l" not in result.rounds[0]["tiers"]["4"]  # generation only at the end by default
    assert set(result.samples) == {"1", "2", "4"}  # a few generations per tier, to read
    sample = result.samples["4"][0]
    assert set(sample) == {"prompt", "reference", "output"} and sample["reference"]
    from prelort.runtime.outputs import write_outputs

    files = write_outputs(result, config.out)
    assert files["samples"].name == "samples.json"
    # perplexity is one corpus-level ratio; each example's mean NLL is what a paired interval resamples
    nll = result.examples["4"]["nll"]
    assert len(nll) == config.eval_examples and all(v > 0 for v in nll)
    assert min(nll) <= math.log(final["perplexity"]) <= max(nll)


def test_the_progress_bar_shows_the_loss_of_clients_that_trained(
    tiny_llama_dir, headline_jsonl, tmp_path, capsys
):
    # lowest-alone's higher-rank clients of a causal LM train nothing and report NaN; the bar
    # showed "loss=nan" after them, which reads as a diverged run
    config = tiny(tiny_llama_dir, headline_jsonl, tmp_path / "alone", method="lowest-alone")
    result = run_simulation(config, progress=True)
    bar = capsys.readouterr().err
    assert "loss=" in bar and "nan" not in bar
    assert math.isfinite(result.rounds[-1]["train_loss"])


def test_learning_happens(tiny_bert_dir, topic_jsonl, tmp_path):
    config = tiny(
        tiny_bert_dir,
        topic_jsonl,
        tmp_path / "learn",
        rounds=4,
        local_steps=10,
        lr=3e-2,
        eval_examples=48,
    )
    result = run_simulation(config, progress=False)
    losses = [r["train_loss"] for r in result.rounds]
    assert losses[-1] < losses[0]
    assert result.final["4"]["accuracy"] > 0.5  # chance is 1/3


def test_comparison_shares_partitions_and_writes_tables(tiny_bert_dir, topic_jsonl, tmp_path):
    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "cmp", rounds=1)
    comparison = run_comparison(config, ["prelort", "zeropad"], [0, 1], progress=False)
    a, b = comparison.runs[("prelort", 0)], comparison.runs[("zeropad", 0)]
    assert a.client_ranks == b.client_ranks and a.client_examples == b.client_examples
    files = write_comparison(comparison, config.out)
    table = files["summary_md"].read_text()
    assert "| prelort |" in table and "±" in table
    assert (config.out / "prelort-seed1" / "metrics.json").is_file()
    assert "MB up / round" in table and (config.out / "rounds_accuracy.png").is_file()
    from prelort.simulation.reload import load_comparison

    reloaded = load_comparison(config.out)

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in rows]

    assert strip(reloaded.summary_rows()) == strip(comparison.summary_rows())
    assert "ε" not in table  # no DP, no privacy column
    # every run keeps each test example's final score, so methods are compared example by example
    examples = json.loads((config.out / "prelort-seed0" / "examples.json").read_text())["tiers"]
    assert len(examples["4"]["accuracy"]) == 24
    assert sum(examples["4"]["accuracy"]) / 24 == a.final["4"]["accuracy"]
    assert "Difference in accuracy to prelort" in table and "24 test examples x 2 seed(s)" in table
    differences = (config.out / "differences.csv").read_text().splitlines()
    assert differences[0].startswith("method,reference,tier") and len(differences) == 1 + 3
    assert (config.out / "differences_accuracy.png").is_file()
    # several references, each in turn: the claim table (e.g. fedit-min, lowest-alone, fedit-max)
    write_comparison(comparison, config.out, ["prelort", "zeropad"])
    rows = (config.out / "differences.csv").read_text().splitlines()[1:]
    assert sorted({r.split(",")[1] for r in rows}) == ["prelort", "zeropad"] and len(rows) == 6
    table = (config.out / "summary.md").read_text()
    assert (
        "Difference in accuracy to prelort" in table
        and "Difference in accuracy to zeropad" in table
    )
    assert (config.out / "differences_accuracy_vs_zeropad.png").is_file()


def test_a_reference_run_later_pools_with_a_comparison_as_if_run_beside_it(
    tiny_bert_dir, topic_jsonl, tmp_path
):
    from prelort.simulation.reload import load_comparison

    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "both", rounds=1)
    together = run_comparison(config, ["prelort", "zeropad"], [0], progress=False)
    write_comparison(together, config.out, ["zeropad"])
    run_comparison(config.replace(out=tmp_path / "a"), ["prelort"], [0], progress=False)
    run_comparison(config.replace(out=tmp_path / "b"), ["zeropad"], [0], progress=False)
    pooled = load_comparison(tmp_path / "a", tmp_path / "b")
    assert pooled.run_dir("zeropad", 0) == tmp_path / "b" / "zeropad-seed0"
    write_comparison(pooled, tmp_path / "pooled", ["zeropad"])
    rows = (tmp_path / "pooled" / "differences.csv").read_text().splitlines()
    assert len(rows) == 1 + 3  # prelort - zeropad at each tier, paired across the two folders
    assert rows == (config.out / "differences.csv").read_text().splitlines()
    run_comparison(config.replace(out=tmp_path / "b"), ["zeropad"], [1], progress=False)
    table = write_comparison(load_comparison(tmp_path / "a", tmp_path / "b"), tmp_path / "pooled")
    assert "| zeropad (n = 2) |" in table["summary_md"].read_text()  # seeds differ: say so
    with pytest.raises(DataError, match="two of the pooled folders"):
        load_comparison(tmp_path / "a", tmp_path / "both")
    other = config.replace(out=tmp_path / "c", local_steps=1)
    run_comparison(other, ["zeropad"], [1], progress=False)
    with pytest.raises(DataError, match="runs differ in local_steps"):
        load_comparison(tmp_path / "a", tmp_path / "c")
    # a sweep: named, the setting may differ, and the swept run stands as its own row
    swept = load_comparison(tmp_path / "a", tmp_path / "b", tmp_path / "c", vary=["local_steps"])
    assert swept.methods == ["prelort", "zeropad", "zeropad[local_steps=1]"]
    assert swept.run_dir("zeropad[local_steps=1]", 1) == tmp_path / "c" / "zeropad-seed1"
    write_comparison(swept, tmp_path / "swept", ["zeropad"])
    differences = (tmp_path / "swept" / "differences.csv").read_text()
    assert differences.count("zeropad[local_steps=1],zeropad,") == 3  # paired on seed 1, per tier
    for wrong, named in (["lr", "stepz"], "stepz"), (["method"], "anyway"):
        with pytest.raises(ConfigError, match=f"vary: .*{named}"):
            load_comparison(tmp_path / "a", vary=wrong)


def test_a_dp_comparison_states_the_privacy_it_spent(tiny_bert_dir, topic_jsonl, tmp_path):
    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "dp", rounds=1, dp_clip=1.0, dp_noise=1.0)
    comparison = run_comparison(config, ["prelort", "zeropad"], [0], progress=False)
    files = write_comparison(comparison, config.out)
    table = files["summary_md"].read_text()
    epsilon = comparison.runs[("prelort", 0)].privacy_budget()["epsilon"]
    assert "ε (δ)" in table and f"| {epsilon:.2f} (" in table
    assert f"client-level DP: ε = {epsilon:.2f}" in table
    costs = (config.out / "costs.csv").read_text().splitlines()
    assert costs[0].endswith("epsilon,delta") and all(line.split(",")[-2] for line in costs[1:])


def test_a_comparisons_nested_mode_reaches_only_the_methods_that_train_nested(
    tiny_bert_dir, topic_jsonl, tmp_path
):
    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "nested", rounds=1, nested="sample")
    comparison = run_comparison(config, ["prelort", "zeropad"], [0], progress=False)
    assert comparison.runs[("prelort", 0)].config["nested"] == "sample"
    assert comparison.runs[("zeropad", 0)].config["nested"] == "off"  # FlexLoRA & co. stay plain


def test_comparison_in_worker_processes_equals_the_one_in_turn(
    tiny_bert_dir, topic_jsonl, tmp_path, capfd
):
    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "turn", eval_every=2)
    in_turn = run_comparison(config, ["prelort", "zeropad"], [0], progress=False)
    capfd.readouterr()
    side_by_side = run_comparison(
        config.replace(out=tmp_path / "jobs"), ["prelort", "zeropad"], [0], True, jobs=2
    )
    lines = capfd.readouterr().out.splitlines()  # the workers' own stdout
    assert sum(line.startswith("prelort seed 0 round 2:") for line in lines) == 1
    assert not any("round 1:" in line for line in lines)  # round 1 was not evaluated
    assert set(side_by_side.runs) == set(in_turn.runs)
    for key, result in in_turn.runs.items():
        other = side_by_side.runs[key]
        for name, tensor in result.global_state.items():  # another thread count: rounding only
            torch.testing.assert_close(other.global_state[name], tensor, atol=1e-5, rtol=1e-4)
        assert other.client_ranks == result.client_ranks
    assert (tmp_path / "jobs" / "zeropad-seed0" / "adapter.safetensors").is_file()


def test_partial_participation_keeps_uncovered_segments(tiny_bert_dir, topic_jsonl, tmp_path):
    config = tiny(
        tiny_bert_dir,
        topic_jsonl,
        tmp_path / "p",
        clients=3,
        clients_per_round=1,
        rounds=1,
        ranks="1,2,4",
    )
    result = run_simulation(config, progress=False)
    assert len(result.rounds) == 1


def test_rank_distribution_is_seeded():
    from prelort.config import parse_ranks

    spec = parse_ranks("2:0.5,8:0.5")
    assert assign_ranks(spec, 20, 0) == assign_ranks(spec, 20, 0)
    assert set(assign_ranks(spec, 50, 0)) == {2, 8}
    assert assign_ranks(parse_ranks("2,4,8"), 5, 0) == [2, 4, 8, 2, 4]


def test_too_few_examples_is_a_data_error(tiny_bert_dir, topic_jsonl, tmp_path):
    from prelort.errors import DataError

    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "x", clients=200)
    with pytest.raises(DataError, match="too few"):
        run_simulation(config, progress=False)


@pytest.mark.parametrize("method", list(methods()))  # a newly registered method runs here too
def test_every_method_runs_and_accounts_traffic(tiny_bert_dir, topic_jsonl, tmp_path, method):
    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / method, method=method)
    result = run_simulation(config, progress=False)
    assert set(result.final) == {"1", "2", "4"}
    assert len(result.traffic) == 2 and all(t["bytes_up"] > 0 for t in result.traffic)
    assert all(t["clients"] == 3 and not t["rejected"] for t in result.traffic), result.traffic
    if method == "fedit-min":
        assert result.client_ranks == [1, 1, 1]
    if method == "flora":
        # the stacked downlink of round 2 carries every round-1 client's factors
        assert result.traffic[1]["bytes_down"] > result.traffic[0]["bytes_down"]
        assert "merged" in " ".join(result.global_state)


def test_reference_rows_account_only_what_their_clients_train(tiny_bert_dir, topic_jsonl, tmp_path):
    from prelort.adapters.state import is_head_key

    runs = {
        m: run_simulation(tiny(tiny_bert_dir, topic_jsonl, tmp_path / m, method=m), progress=False)
        for m in ("zeropad", "lowest-alone", "no-adapter")
    }
    up = {m: r.traffic[0]["bytes_up"] for m, r in runs.items()}
    head_bytes = 4 * sum(
        v.numel() for k, v in runs["zeropad"].global_state.items() if is_head_key(k)
    )
    # a frozen adapter never travels: the no-adapter clients exchange their heads only, and the
    # lowest-alone clients above the lowest rank send their heads only
    assert up["no-adapter"] == runs["no-adapter"].traffic[0]["bytes_down"] == 3 * head_bytes
    assert 3 * head_bytes < up["lowest-alone"] < up["zeropad"]


def test_flora_state_is_merged_into_the_model(tiny_bert_dir, topic_jsonl, tmp_path):
    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "fl", method="flora", rounds=2)
    result = run_simulation(config, progress=False)
    merged = [v for k, v in result.global_state.items() if k.endswith(".merged")]
    assert merged and any(m.abs().sum() > 0 for m in merged)


@pytest.mark.parametrize("head", ["per-tier", "shared"])
def test_head_modes_learn_and_keep_their_keys(tiny_bert_dir, topic_jsonl, tmp_path, head):
    config = tiny(
        tiny_bert_dir,
        topic_jsonl,
        tmp_path / head,
        head=head,
        rounds=4,
        local_steps=10,
        lr=3e-2,
        eval_examples=48,
        readout_examples=96,
    )
    result = run_simulation(config, progress=False)
    tiered = {k for k in result.global_state if "@" in k}
    assert bool(tiered) == (head == "per-tier")
    assert result.config["head"] == head
    assert max(m["accuracy"] for m in result.final.values()) > 0.5  # chance is 1/3
    # the refitted readout is reported next to the federated head at the end
    assert all("readout_accuracy" in m for m in result.final.values())
    segments = result.traffic[-1]["segments"]
    assert [(s["lo"], s["hi"]) for s in segments] == [(0, 1), (1, 2), (2, 4)]
    assert abs(sum(s["share"] for s in segments) - 1.0) < 1e-9


def test_no_adapter_reference_trains_only_the_head(tiny_bert_dir, topic_jsonl, tmp_path):
    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "ref", method="no-adapter", rounds=2)
    result = run_simulation(config, progress=False)
    for key, value in result.global_state.items():
        if key.endswith(".lora_b"):
            assert torch.count_nonzero(value) == 0, key  # B stays zero: the adapter is a no-op
    assert len({m["accuracy"] for m in result.final.values()}) == 1


def test_no_adapter_calibration_computes_one_set_of_statistics(
    tiny_bert_dir, topic_jsonl, tmp_path
):
    from prelort.runtime.calibrate import client_statistics
    from prelort.runtime.federation import prepare_federation

    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "ref", method="no-adapter", rounds=1)
    fed = prepare_federation(config, build_workbench(config))
    stats = client_statistics(fed, fed.initial.global_state, 0, [1, 2, 4])
    assert stats[1] is stats[2] is stats[4]  # the same features at every tier: computed once
    trained = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "p", rounds=1)
    fed = prepare_federation(trained, build_workbench(trained))
    stats = client_statistics(fed, fed.initial.global_state, 0, [1, 2])
    assert stats[1] is not stats[2]


def test_sgd_optimizer_runs_and_differs_from_adamw(tiny_bert_dir, topic_jsonl, tmp_path):
    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "sgd", optimizer="sgd", lr=0.05)
    bench = build_workbench(config)
    sgd = run_simulation(config, bench, progress=False)
    adamw = run_simulation(config.replace(optimizer="adamw"), bench, progress=False)
    assert sgd.config["optimizer"] == "sgd"
    key = next(k for k in sgd.global_state if k.endswith(".lora_b"))
    assert not torch.equal(sgd.global_state[key], adamw.global_state[key])


def test_compare_runs_both_heads_and_the_reference(tiny_bert_dir, topic_jsonl, tmp_path):
    from prelort.simulation.reload import load_comparison
    from prelort.simulation.tables import reference_note

    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "cmp", rounds=1)
    comparison = run_comparison(
        config, ["prelort"], [0], progress=False, heads=["per-tier", "shared"], reference=True
    )
    assert comparison.methods == ["prelort-per-tier-head", "prelort-shared-head", "no-adapter"]
    write_comparison(comparison, config.out)
    reloaded = load_comparison(config.out)
    assert set(reloaded.methods) == set(comparison.methods)
    assert "no adapter" in reference_note(comparison.summary_rows())


def test_balanced_method_differs_from_prelort_only_in_training(
    tiny_bert_dir, topic_jsonl, tmp_path
):
    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "bal", method="prelort-balanced")
    bench = build_workbench(config)
    balanced = run_simulation(config, bench, progress=False)
    plain = run_simulation(config.replace(method="prelort"), bench, progress=False)
    key = next(k for k in plain.global_state if k.endswith(".lora_b"))
    assert not torch.equal(balanced.global_state[key], plain.global_state[key])


def test_calibrate_refits_a_head_per_tier_from_client_statistics(
    tiny_bert_dir, topic_jsonl, tmp_path
):
    from prelort.cli import main

    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "run")
    write_outputs(run_simulation(config, progress=False), config.out)
    assert main(["calibrate", str(config.out)]) == 0
    report = json.loads((config.out / "calibrated-lda" / "calibration.json").read_text())
    assert set(report["tiers"]) == {"1", "2", "4"}
    for row in report["tiers"].values():
        assert row["examples"] == 192 and row["clients"] == 3  # every client, every tier
        assert row["accuracy"] >= row["head_accuracy"]  # a learnable toy: LDA reads it at once
    state, meta = load_adapter(config.out / "calibrated-lda" / "adapter.safetensors")
    assert {k for k in state if "@" in k} == {
        f"classifier.{p}@{t}" for p in ("weight", "bias") for t in (1, 2, 4)
    }
    assert meta["head"] == "per-tier" and meta["calibration"] == "calibrated-lda"
    capped = tmp_path / "capped"
    assert main(["calibrate", str(config.out), "--examples", "48", "--out", str(capped)]) == 0
    report = json.loads((capped / "calibration.json").read_text())
    assert report["calibration_examples"] == 48
    assert {row["examples"] for row in report["tiers"].values()} == {48}
    assert main(["calibrate", str(config.out), "--holders-only"]) == 0
    holders = json.loads((config.out / "calibrated-lda-holders" / "calibration.json").read_text())
    assert [holders["tiers"][t]["clients"] for t in ("1", "2", "4")] == [3, 2, 1]
    peft = tmp_path / "peft"
    exported = ["export", "--rank", "2", "--out", str(peft)]
    assert main([*exported, str(config.out / "calibrated-lda" / "adapter.safetensors")]) == 0


def test_calibration_setting_adds_the_calibrated_accuracy_of_every_tier(
    tiny_bert_dir, tiny_llama_dir, topic_jsonl, headline_jsonl, tmp_path
):
    from prelort.errors import ConfigError
    from prelort.runtime.calibrate import evaluate_calibration
    from prelort.runtime.federation import prepare_federation

    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "run", calibration="lda")
    result = run_simulation(config, progress=False)
    assert all(0 <= result.final[t]["calibrated_accuracy"] <= 1 for t in ("1", "2", "4"))
    assert all("calibrated_accuracy" not in r["tiers"]["4"] for r in result.rounds[:-1])
    # scored on the final evaluation's test features: what a forward pass of its own gives
    assert {t: tuple(x.shape) for t, x in result.head_inputs.items()} == {
        t: (24, 32) for t in ("1", "2", "4")
    }
    for tier, metrics in result.final.items():  # per example too, for paired intervals
        scores = result.examples[tier]["calibrated_accuracy"]
        assert len(scores) == 24 and sum(scores) / 24 == pytest.approx(
            metrics["calibrated_accuracy"]
        )
    fed = prepare_federation(config, build_workbench(config))
    fresh = evaluate_calibration(fed, result.calibrated_state)
    assert {t: m["accuracy"] for t, m in fresh.items()} == {
        t: m["calibrated_accuracy"] for t, m in result.final.items()
    }
    generation = tiny(
        tiny_llama_dir, headline_jsonl, tmp_path / "llm", calibration="lda", rounds=50
    )
    with pytest.raises(ConfigError, match="calibration: only runs with a classifier head"):
        run_simulation(generation, progress=False)  # refused before 50 rounds of training
    with pytest.raises(ConfigError, match="calibration"):
        tiny(tiny_bert_dir, topic_jsonl, tmp_path / "x", calibration="ncm")


def test_calibration_auto_runs_where_a_run_can_take_it_and_keeps_the_heads(
    tiny_bert_dir, tiny_llama_dir, topic_jsonl, headline_jsonl, tmp_path
):
    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "auto", calibration="auto", rounds=1)
    result = run_simulation(config, progress=False)
    assert all("calibrated_accuracy" in result.final[t] for t in ("1", "2", "4"))
    files = write_outputs(result, config.out)
    state, meta = load_adapter(files["calibrated"])
    assert meta["head"] == "per-tier"
    assert {k for k in state if "@" in k} == {
        f"classifier.{p}@{t}" for p in ("weight", "bias") for t in (1, 2, 4)
    }
    # where the calibration would not keep the run's guarantees or has no head to refit: none
    for name, settings in (
        ("secure", {"secure_aggregation": True}),
        ("dp", {"dp_clip": 1.0, "dp_noise": 0.1}),
    ):
        run = tiny(
            tiny_bert_dir, topic_jsonl, tmp_path / name, calibration="auto", rounds=1, **settings
        )
        assert "calibrated_accuracy" not in run_simulation(run, progress=False).final["4"]
    generation = tiny(
        tiny_llama_dir, headline_jsonl, tmp_path / "gen", calibration="auto", rounds=1
    )
    result = run_simulation(generation, progress=False)
    assert not result.calibrated_state and "calibrated" not in write_outputs(result, generation.out)


def test_calibration_examples_caps_the_round_by_each_clients_share(
    tiny_bert_dir, topic_jsonl, tmp_path
):
    from prelort.runtime.calibrate import calibrate, calibration_rows
    from prelort.runtime.federation import prepare_federation

    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "cap", calibration_examples=48)
    fed = prepare_federation(config, build_workbench(config))
    sizes = [len(r) for r in fed.plan.client_rows]  # 64 each: 192 training examples
    chosen = [calibration_rows(fed, c) for c in range(len(sizes))]
    assert [len(c) for c in chosen] == [round(48 * n / sum(sizes)) for n in sizes]
    for client, rows in enumerate(chosen):
        assert set(rows) <= set(fed.plan.client_rows[client])  # a client reads only its own rows
    assert chosen == [calibration_rows(fed, c) for c in range(len(sizes))]  # seeded
    everything = prepare_federation(config.replace(calibration_examples=0), fed.bench)
    assert calibration_rows(everything, 0) == list(fed.plan.client_rows[0])
    calibration = calibrate(fed, fed.initial.global_state)
    assert set(calibration.examples.values()) == {48}


@pytest.mark.parametrize(("method", "head"), [("prelort", "per-tier"), ("zeropad", "shared")])
def test_secure_aggregation_in_process_equals_the_plain_run(
    tiny_bert_dir, topic_jsonl, tmp_path, method, head
):
    config = tiny(
        tiny_bert_dir, topic_jsonl, tmp_path / "plain", method=method, head=head, rounds=2
    )
    plain = run_simulation(config, progress=False)
    secure = run_simulation(
        config.replace(out=str(tmp_path / "secure"), secure_aggregation=True), progress=False
    )
    for key, value in plain.global_state.items():
        torch.testing.assert_close(secure.global_state[key], value, rtol=0, atol=1e-5)
    assert [t["ranks"] for t in secure.traffic] == [t["ranks"] for t in plain.traffic]


def test_train_dtype_runs_the_steps_in_bf16_and_scores_in_the_base_precision(
    tiny_bert_dir, topic_jsonl, tmp_path
):
    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "bf16", train_dtype="bfloat16")
    bench = build_workbench(config)
    layer = next(iter(bench.adapted.layers.values()))
    x = torch.randn(2, layer.base.in_features)
    with bench.adapted.train_autocast():
        assert layer(x).dtype == torch.bfloat16  # the training step's matmuls
    with bench.adapted.autocast():
        assert layer(x).dtype == torch.float32  # evaluation, readout and calibration
    assert layer.base.weight.dtype == torch.float32  # the base is kept as it was loaded
    result = run_simulation(config, progress=False)
    assert all(math.isfinite(r["train_loss"]) for r in result.rounds)
    assert all(v.dtype == torch.float32 for v in result.global_state.values())


def test_16_bit_steps_or_scoring_on_a_cpu_without_native_bf16_are_warned_about(
    tiny_bert_dir, topic_jsonl, tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr("prelort.device.cpu_has_native_bf16", lambda: False)
    config = tiny(
        tiny_bert_dir, topic_jsonl, tmp_path, train_dtype="bfloat16", eval_dtype="bfloat16"
    )
    with caplog.at_level("WARNING", logger="prelort.runtime.workbench"):
        build_workbench(config)
        build_workbench(config.replace(train_dtype="auto", eval_dtype="float16"))
    warned = [
        r.getMessage().partition(":")[0] for r in caplog.records if "native bf16" in r.getMessage()
    ]
    assert warned == ["train_dtype", "eval_dtype"]
    caplog.clear()
    native_only = config.replace(train_dtype="bfloat16-if-native", eval_dtype="bfloat16-if-native")
    with caplog.at_level("WARNING", logger="prelort.runtime.workbench"):
        bench = build_workbench(native_only)
    assert not [r for r in caplog.records if "native bf16" in r.getMessage()]
    assert bench.adapted.train_autocast_dtype is None  # the steps keep the fp32 base's precision
    assert bench.adapted.eval_autocast_dtype is None


def test_eval_dtype_scores_in_bf16_and_keeps_the_scores_close(tiny_bert_dir, topic_jsonl, tmp_path):
    fp32 = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "fp32", calibration="lda")
    bench = build_workbench(fp32.replace(eval_dtype="bfloat16"))
    layer = next(iter(bench.adapted.layers.values()))
    x = torch.randn(2, layer.base.in_features)
    with bench.adapted.autocast():
        assert layer(x).dtype == torch.bfloat16  # evaluation, readout and calibration
    with bench.adapted.train_autocast():
        assert layer(x).dtype == torch.float32  # training steps keep train_dtype (auto)
    assert layer.base.weight.dtype == torch.float32
    plain = run_simulation(fp32, progress=False)
    half = run_simulation(
        fp32.replace(eval_dtype="bfloat16", out=str(tmp_path / "bf16")), progress=False
    )
    for key, value in plain.global_state.items():  # training is untouched by eval_dtype
        torch.testing.assert_close(half.global_state[key], value, rtol=0, atol=0)
    print("HALF", half.final)
    for tier, metrics in plain.final.items():
        for name in ("accuracy", "calibrated_accuracy", "readout_accuracy"):
            assert abs(half.final[tier][name] - metrics[name]) <= 0.25, (tier, name)
