"""The singular values of each module's product (benchmarks/spectrum.py) against a full SVD."""

import pytest
import torch
from benchmarks.spectrum import energy_shares, main, product_singular_values, run_spectrum

from prelort.io import save_adapter


def adapter(rank=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "m1.lora_a": torch.randn(rank, 12, generator=g),
        "m1.lora_b": torch.randn(10, rank, generator=g),
        "m2.lora_a": torch.randn(rank, 6, generator=g),
        "m2.lora_b": torch.randn(9, rank, generator=g) * torch.tensor([3.0, 1.0, 0.0, 0.0]),
    }


def test_singular_values_are_those_of_the_dense_product():
    state = adapter()
    values = product_singular_values(state)
    for module in ("m1", "m2"):
        dense = state[module + ".lora_b"].double() @ state[module + ".lora_a"].double()
        torch.testing.assert_close(
            values[module], torch.linalg.svdvals(dense)[:4], atol=1e-9, rtol=1e-9
        )
    # m2's B has two zero columns: a product of rank 2, all its energy in the first two values
    assert energy_shares(values["m2"], [1, 2, 4])[1:] == pytest.approx([1.0, 1.0], abs=1e-12)
    assert 0.0 < energy_shares(values["m1"], [1])[0] < 1.0
    assert energy_shares(torch.zeros(4), [1, 2]) == [0.0, 0.0]


def test_a_run_reports_the_median_over_modules(tmp_path):
    state = adapter()
    save_adapter(tmp_path / "adapter.safetensors", state, {})
    sigma, shares = run_spectrum(tmp_path, [2, 4])
    values = product_singular_values(state)
    expected = torch.stack([values["m1"], values["m2"]]).median(0).values
    assert sigma == expected.tolist()
    assert shares[1] == pytest.approx(1.0)  # every product has rank <= 4


def test_the_command_writes_its_table_and_plot(tmp_path, capsys):
    for seed in (0, 1):
        (tmp_path / f"run{seed}").mkdir()
        save_adapter(tmp_path / f"run{seed}" / "adapter.safetensors", adapter(seed=seed), {})
    table, plot = tmp_path / "spectrum.csv", tmp_path / "spectrum.png"
    main(
        [
            str(tmp_path / "run0"),
            str(tmp_path / "run1"),
            "--ranks",
            "1,2,4",
            "--csv",
            str(table),
            "--plot",
            str(plot),
        ]
    )
    assert "run1: median sigma" in capsys.readouterr().out
    rows = table.read_text().splitlines()
    assert rows[0] == "run,rank,share,sigma" and len(rows) == 1 + 2 * 3
    assert plot.stat().st_size > 0
