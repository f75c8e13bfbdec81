"""The closed-form LDA head from summed class statistics."""

import torch

from prelort.aggregation.lda import ABSENT_CLASS_BIAS, ClassStatistics, lda_head, sum_statistics


def gaussian_classes(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    means = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    labels = torch.randint(0, 3, (n,), generator=generator)
    mixing = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 1.0]])
    return means[labels] + torch.randn(n, 3, generator=generator) @ mixing, labels


def test_summed_client_statistics_are_the_central_statistics():
    g = torch.Generator().manual_seed(0)
    x, y = gaussian_classes(300, g)
    parts = [ClassStatistics.of(x[i : i + 100], y[i : i + 100], 3) for i in (0, 100, 200)]
    central, federated = ClassStatistics.of(x, y, 3), sum_statistics(parts)
    for field in ("counts", "sums", "scatter"):
        torch.testing.assert_close(getattr(federated, field), getattr(central, field))
    torch.testing.assert_close(lda_head(federated)[0], lda_head(central)[0])


def test_the_lda_head_separates_gaussian_classes_and_never_predicts_an_absent_class():
    g = torch.Generator().manual_seed(1)
    x, y = gaussian_classes(2000, g)
    weight, bias = lda_head(ClassStatistics.of(x, y, 3))
    test_x, test_y = gaussian_classes(1000, g)
    accuracy = ((test_x @ weight.T + bias).argmax(-1) == test_y).float().mean()
    assert accuracy > 0.85  # the Bayes rate of this problem is about 0.9

    held = y != 2
    weight, bias = lda_head(ClassStatistics.of(x[held], y[held], 3))
    assert bias[2] == ABSENT_CLASS_BIAS and weight[2].eq(0).all()
    assert (test_x @ weight.T + bias).argmax(-1).ne(2).all()
