from pathlib import Path

import pytest
import tomllib

from prelort.config import (
    RECOMMENDED_METHOD,
    SimulationConfig,
    config_from_mapping,
    load_config,
    parse_ranks,
)
from prelort.errors import ConfigError


def test_defaults_resolve():
    config = config_from_mapping({})
    assert config.resolved_max_rank == 16 and config.resolved_alpha == 32.0
    assert config.resolved_nested == "all"
    assert config_from_mapping({"method": "zeropad"}).resolved_nested == "off"
    assert config.to_dict()["ranks"] == "2,4,8,16"


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"method": "nope"}, "method"),
        ({"ranks": "2,x"}, "ranks"),
        ({"ranks": "0,2"}, "ranks"),
        ({"ranks": "2:0.5,4:0.2"}, "ranks"),
        ({"ranks": "2,32", "max_rank": 16}, "ranks"),
        ({"clients": 0}, "clients"),
        ({"clients": 2, "clients_per_round": 3}, "clients_per_round"),
        ({"rounds": "three"}, "rounds"),
        ({"lr": -1}, "lr"),
        ({"partition": "random"}, "partition"),
        ({"nested": "some"}, "nested"),
        ({"dtype": "int8"}, "dtype"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_values_name_the_field(values, field):
    with pytest.raises(ConfigError, match=f"^{field}"):
        config_from_mapping(values)


def test_toml_and_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[simulate]\nmethod = "zeropad"\nranks = [2, 8]\nrounds = 3\n')
    config = load_config(path, {"rounds": "5", "seed": None})
    assert config.method == "zeropad" and config.ranks.ranks == (2, 8) and config.rounds == 5
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml", {})
    (tmp_path / "bad.toml").write_text("rounds = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml", {})


def test_rank_distribution():
    spec = parse_ranks("2:0.25,16:0.75")
    assert spec.ladder == (2, 16) and spec.probabilities == (0.25, 0.75)


def test_local_task_and_model_paths_are_stored_absolute(tmp_path, monkeypatch):
    """A relative --task (or model folder) must still be found by --resume from elsewhere."""
    from prelort.config import config_from_mapping

    (tmp_path / "model").mkdir()
    monkeypatch.chdir(tmp_path)
    config = config_from_mapping({"task": "data/mine.jsonl", "model": "model"})
    assert config.task == str(tmp_path / "data" / "mine.jsonl")
    assert config.model == str(tmp_path / "model")
    named = config_from_mapping({"task": "bbc-news", "model": "org/some-model"})
    assert (named.task, named.model) == ("bbc-news", "org/some-model")  # names stay names


def test_every_setting_carries_its_whole_help():
    import dataclasses

    from prelort.cli import build_parser
    from prelort.config import SimulationConfig

    for f in dataclasses.fields(SimulationConfig):
        assert len(f.metadata.get("help", "")) > 10, f.name
    text = build_parser()._subparsers._group_actions[0].choices["simulate"].format_help()
    assert "batch, the cost of a plain step) or" in " ".join(text.split())  # a help's 3rd line


def test_the_workbench_key_follows_every_field_marked_workbench():
    """A field that changes the loaded model or data can never reuse a stale workbench."""
    import dataclasses

    from prelort.config import SimulationConfig
    from prelort.runtime.workbench import workbench_key

    base = SimulationConfig()
    changed = {
        "task": "rotten-tomatoes", "model": "smollm2-135m", "dtype": "float32",
        "device": "cpu", "train_dtype": "bfloat16", "eval_dtype": "bfloat16", "quantize": "4bit", "gradient_checkpointing": True, "max_length": 99,
        "max_rank": 32, "alpha": 3.0, "target_modules": ("query",), "lora_dropout": 0.1,
        "eval_examples": 7, "generate_examples": 3, "classifier": "head", "readout_examples": 5,
        "text_field": "t", "label_field": "l", "instruction_field": "i", "response_field": "r",
    }  # fmt: skip
    marked = {f.name for f in dataclasses.fields(SimulationConfig) if f.metadata["workbench"]}
    assert marked == set(changed)
    for name, value in changed.items():
        assert workbench_key(base.replace(**{name: value})) != workbench_key(base), name
    for name, value in {"rounds": 3, "lr": 0.5, "seed": 4, "method": "zeropad"}.items():
        assert workbench_key(base.replace(**{name: value})) == workbench_key(base), name


def test_print_config_writes_a_table_that_reads_back(tmp_path, capsys):
    from prelort.cli import main
    from prelort.config import load_config

    flags = [
        "--ranks",
        "2,8",
        "--secure-aggregation",
        "--lr",
        "0.002",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(["simulate", *flags, "--print-config"]) == 0
    table = tmp_path / "printed.toml"
    table.write_text(capsys.readouterr().out)
    config = load_config(table, {})
    assert config.secure_aggregation is True  # a bare boolean flag is a switch
    assert (str(config.ranks), config.lr, config.max_rank) == ("2,8", 0.002, 8)
    assert not (tmp_path / "o").exists()  # nothing ran
    assert main(["compare", "--config", str(table), "--print-config"]) == 0


def test_booleans_take_a_value_or_none_and_verbose_goes_anywhere():
    from prelort.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["simulate", "--gradient-checkpointing"]).gradient_checkpointing == "true"
    assert (
        parse(["simulate", "--gradient-checkpointing", "false"]).gradient_checkpointing == "false"
    )
    assert parse(["-v", "simulate"]).verbose and parse(["simulate", "-v"]).verbose
    assert not parse(["simulate"]).verbose


def test_every_method_is_listed_in_exactly_one_group(capsys):
    from prelort.aggregation import methods
    from prelort.aggregation.registry import GROUPS
    from prelort.cli import main

    known = methods()
    assert all(m.group in GROUPS for m in known.values())
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("recommended") and all(f"  {name} " in out for name in known)
    assert [m.name for m in known.values() if m.group == "recommended"] == [RECOMMENDED_METHOD]
    assert SimulationConfig().method == RECOMMENDED_METHOD
    flwr_app = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["tool"][
        "flwr"
    ]["app"]["config"]
    assert flwr_app["method"] == RECOMMENDED_METHOD  # the Flower app's default too


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[1] / "configs").glob("*.toml")), ids=lambda p: p.name
)
def test_every_packaged_config_loads_and_names_a_packaged_task_and_model(path):
    config = load_config(path, {})
    assert config.task in ("20newsgroups", "bbc-news", "rotten-tomatoes", "bbc-headlines")
    assert config.model in ("minilm-l6", "smollm2-135m")


def test_the_plateau_config_is_the_run_of_results_43():
    config = load_config(
        Path(__file__).parents[1] / "configs/bbc-headlines-smollm2-plateau.toml", {}
    )
    assert (config.rounds, config.lr, config.lr_schedule) == (48, 4e-3, "cosine")
    assert config.method == RECOMMENDED_METHOD


def test_a_rank_below_one_is_named_as_such():
    with pytest.raises(ConfigError, match="every rank must be >= 1, got 0"):
        parse_ranks("0,2")
