"""Device names, the base's dtype, autocast, memory sizes: the rules of ``prelort.device``."""

import pytest
import torch

from prelort.budgets import RankMemory, draw_budgets, longest_rows, ranks_for_budgets
from prelort.config import BudgetSpec, parse_budgets, parse_memory
from prelort.device import autocast_dtype, base_dtype, resolve_device, uses_autocast
from prelort.errors import ConfigError
from prelort.models import Placement

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def test_auto_is_cuda_when_there_is_one():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == CPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_refused_by_field(name):
    with pytest.raises(ConfigError, match="server_device.*no CUDA"):
        resolve_device(name, "server_device")


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "CPU", ""])
def test_malformed_device_names(name):
    with pytest.raises(ConfigError, match="device"):
        resolve_device(name)


def test_auto_dtype_is_bf16_on_cuda_and_the_packaged_choice_on_the_cpu(monkeypatch):
    assert base_dtype("auto", CUDA) == torch.bfloat16
    assert base_dtype("auto", CPU) == torch.float32
    monkeypatch.setattr("prelort.device.cpu_has_native_bf16", lambda: True)
    assert base_dtype("auto", CPU, torch.bfloat16) == torch.bfloat16
    monkeypatch.setattr("prelort.device.cpu_has_native_bf16", lambda: False)
    assert base_dtype("auto", CPU, torch.bfloat16) == torch.float32  # emulated bf16: slower
    assert base_dtype("bfloat16", CPU) == torch.bfloat16  # asked for outright: kept
    assert base_dtype("float16", CUDA) == torch.float16


def test_autocast_only_over_a_16_bit_base_on_a_gpu():
    assert uses_autocast(CUDA, torch.bfloat16) and uses_autocast(CUDA, torch.float16)
    assert not uses_autocast(CUDA, torch.float32)
    assert not uses_autocast(CPU, torch.bfloat16)  # the CPU path keeps its numbers
    assert Placement(CUDA, torch.float32, "4bit").autocast_dtype == torch.bfloat16
    assert Placement(CPU, torch.bfloat16, "4bit").autocast_dtype is None


def test_memory_sizes():
    assert parse_memory("4GB") == 4 * 2**30
    assert parse_memory("512MB") == 512 * 2**20
    assert parse_memory("1.5") == int(1.5 * 2**30)
    for bad in ("", "GB", "-1GB", "0", "4XB", "four"):
        with pytest.raises(ConfigError, match="client_memory"):
            parse_memory(bad)
    assert parse_budgets("4GB,8GB") == BudgetSpec((4 * 2**30, 8 * 2**30))


def test_budgets_cycle_or_are_drawn_with_the_seed():
    spec = parse_budgets("1GB,2GB,3GB")
    assert draw_budgets(spec, 5, 0) == [2**30, 2 * 2**30, 3 * 2**30, 2**30, 2 * 2**30]
    drawn = parse_budgets("1GB:0.5,2GB:0.5")
    assert draw_budgets(drawn, 50, 3) == draw_budgets(drawn, 50, 3)
    assert set(draw_budgets(drawn, 50, 3)) == {2**30, 2 * 2**30}


def test_each_budget_gets_the_largest_rank_that_fits():
    table = RankMemory({2: 100, 4: 120, 8: 150, 16: 400}, "cpu", "test")
    assert ranks_for_budgets([100, 149, 150, 10_000], table) == [2, 4, 8, 16]


def test_a_budget_no_rank_fits_names_the_client_and_the_smallest_need():
    table = RankMemory({2: 3 * 2**30, 4: 4 * 2**30}, "cuda", "test")
    with pytest.raises(ConfigError, match=r"client 1's budget of 1.00 GB.*3.00 GB \(rank 2"):
        ranks_for_budgets([8 * 2**30, 2**30], table)


def test_a_flower_node_and_the_simulation_share_a_measurement():
    """A node's settings come through the run config with every default spelt out (nested, head,
    max_rank...); the cache key must not tell them apart, or each node measures again."""
    from prelort.budgets import measurement_key
    from prelort.config import config_from_mapping
    from prelort.flower.deploy import run_config
    from prelort.flower.settings import config_from_run_config

    config = config_from_mapping(dict(model="m", task="t.jsonl", ranks="2,8", out="o"))
    spelt_out, _ = config_from_run_config(run_config(config, resume=False))
    assert (spelt_out.nested, spelt_out.head, config.nested) == ("all", "shared", None)
    assert measurement_key(spelt_out) == measurement_key(config)
    assert measurement_key(config.replace(batch_size=4)) != measurement_key(config)


def test_the_measured_batch_is_the_longest_rows():
    assert longest_rows([3, 9, 1, 9, 5], 2) == [1, 3]


def test_a_bf16_base_on_a_cpu_without_native_bf16_is_warned_about(monkeypatch, caplog):
    import prelort.models as models

    monkeypatch.setattr("prelort.device.cpu_has_native_bf16", lambda: False)
    with caplog.at_level("WARNING", logger=models.log.name):
        models.placement_for("minilm-l6", "cpu", "bfloat16")
        models.placement_for("minilm-l6", "cpu", "float32")
    assert [r.getMessage() for r in caplog.records if "native bf16" in r.getMessage()] == [
        "dtype: a bfloat16 base on a CPU without native bf16 (AVX512-BF16 or AMX) is emulated "
        "and may train slower than --dtype float32"
    ]
    monkeypatch.setattr("prelort.device.cpu_has_native_bf16", lambda: True)
    caplog.clear()
    models.placement_for("minilm-l6", "cpu", "bfloat16")
    assert not caplog.records


@pytest.mark.parametrize("native", [True, False, None])
def test_bf16_if_native_autocasts_only_where_the_cpu_computes_bf16(monkeypatch, native):
    monkeypatch.setattr("prelort.device.cpu_has_native_bf16", lambda: native)
    expected = torch.bfloat16 if native else None  # unknown (not Linux) counts as emulated
    assert autocast_dtype("bfloat16-if-native", CPU) is expected
    assert autocast_dtype("bfloat16", CPU) is torch.bfloat16  # asked for outright: kept
    assert autocast_dtype("float16", CPU) is torch.float16
    assert autocast_dtype("auto", CPU) is None


@pytest.mark.parametrize("native", [True, False])
def test_a_quantized_base_computes_in_bf16_only_where_the_cpu_does(monkeypatch, native):
    monkeypatch.setattr("prelort.device.cpu_has_native_bf16", lambda: native)
    from prelort.models import placement_for

    placed = placement_for("minilm-l6", "cpu", "auto", "4bit")
    expected = torch.bfloat16 if native else torch.float32  # QLoRA's bf16, unless emulated
    assert placed.compute_dtype == placed.dtype == expected
    assert Placement(CUDA, torch.bfloat16, "4bit").compute_dtype == torch.bfloat16
    assert Placement(CPU, torch.float16, "none").compute_dtype == torch.float16
