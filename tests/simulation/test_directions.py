"""How far two runs' updates agree (benchmarks/directions.py) against dense products."""

import math

import pytest
import torch
from benchmarks.directions import agreement, cosine, main, overlap, run_factors, thin_svd

from prelort.io import save_adapter


def factors(rank=4, seed=0, out=10, inp=12):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rank, inp, generator=g), torch.randn(out, rank, generator=g)


def test_the_thin_svd_rebuilds_the_product():
    a, b = factors()
    f = thin_svd(a, b)
    torch.testing.assert_close(f.left @ torch.diag(f.sigma) @ f.right.T, (b @ a).double())
    torch.testing.assert_close(f.sigma, torch.linalg.svdvals((b @ a).double())[:4])


def test_cosines_are_those_of_the_dense_products_and_their_cuts():
    (a1, b1), (a2, b2) = factors(seed=0), factors(seed=1)
    x, y = thin_svd(a1, b1), thin_svd(a2, b2)
    dense_x, dense_y = b1.double() @ a1.double(), b2.double() @ a2.double()
    expected = float((dense_x * dense_y).sum() / (dense_x.norm() * dense_y.norm()))
    assert cosine(x, y) == pytest.approx(expected, abs=1e-12)
    assert cosine(x, x) == pytest.approx(1.0, abs=1e-12)
    assert cosine(x, thin_svd(-a1, b1)) == pytest.approx(-1.0, abs=1e-12)

    def cut(d, k):
        u, s, vh = torch.linalg.svd(d)
        return u[:, :k] @ torch.diag(s[:k]) @ vh[:k]

    cx, cy = cut(dense_x, 2), cut(dense_y, 2)
    expected_cut = float((cx * cy).sum() / (cx.norm() * cy.norm()))
    assert cosine(x, y, 2) == pytest.approx(expected_cut, abs=1e-12)
    # a zero update has no direction
    assert math.isnan(cosine(x, thin_svd(a1, torch.zeros_like(b1))))


def test_overlap_is_one_for_a_subspace_and_zero_for_its_complement():
    basis = torch.linalg.qr(torch.randn(8, 4, dtype=torch.float64)).Q
    assert overlap(basis, basis, 2) == pytest.approx(1.0)
    # the same span, another basis
    mixed = basis[:, :2] @ torch.tensor([[0.6, 0.8], [-0.8, 0.6]], dtype=torch.float64)
    assert overlap(basis, mixed, 2) == pytest.approx(1.0)
    assert overlap(basis[:, :2], basis[:, 2:], 2) == pytest.approx(0.0, abs=1e-12)


def test_the_command_compares_every_pair_and_refuses_what_it_cannot_read(tmp_path, capsys):
    for seed in (0, 1, 2):
        run = tmp_path / f"run{seed}"
        run.mkdir()
        a, b = factors(seed=seed)
        save_adapter(run / "adapter.safetensors", {"m.lora_a": a, "m.lora_b": b}, {})
    table = tmp_path / "directions.csv"
    main([str(tmp_path / f"run{s}") for s in (0, 1, 2)] + ["--k", "2", "--csv", str(table)])
    assert "run0 ~" in capsys.readouterr().out
    rows = table.read_text().splitlines()
    assert rows[0] == "run_x,run_y,cosine,cut_cosine,left,right" and len(rows) == 1 + 3
    same = agreement(run_factors(tmp_path / "run0"), run_factors(tmp_path / "run0"), 2, ("x", "x"))
    assert (same.cosine, same.cut_cosine, same.left, same.right) == pytest.approx((1, 1, 1, 1))

    merged = tmp_path / "flora"
    merged.mkdir()
    a, b = factors()
    save_adapter(
        merged / "adapter.safetensors",
        {"m.lora_a": a, "m.lora_b": b, "m.merged": torch.zeros(10, 12)},
        {},
    )
    with pytest.raises(ValueError, match="merged"):
        run_factors(merged)
    with pytest.raises(ValueError, match="share no LoRA module"):
        agreement({"p": thin_svd(a, b)}, {"q": thin_svd(a, b)}, 2, ("x", "y"))
