"""The privacy budget: (ε, δ) of the client-level Gaussian mechanism over rounds."""

import math

import pytest

from prelort.aggregation.budget import default_delta, epsilon, noise_for_epsilon
from prelort.config import config_from_mapping
from prelort.errors import ConfigError


def classic_rdp_epsilon(sigma: float, rounds: int, delta: float) -> float:
    """Mironov's conversion of the Gaussian mechanism's RDP, T·α/(2σ²), over integer orders."""
    return min(rounds * a / (2 * sigma**2) + math.log(1 / delta) / (a - 1) for a in range(2, 513))


@pytest.mark.parametrize("sigma,rounds", [(1.0, 1), (2.0, 10), (1.5, 50)])
def test_a_plain_gaussian_mechanism_matches_the_librarys_own_number(sigma, rounds):
    from dp_accounting import GaussianDpEvent, SelfComposedDpEvent
    from dp_accounting.rdp import RdpAccountant

    delta = 1e-5
    library = RdpAccountant()  # its default orders, its own event
    library.compose(SelfComposedDpEvent(GaussianDpEvent(sigma), rounds))
    ours = epsilon(sigma, 1.0, rounds, delta)
    assert ours == pytest.approx(library.get_epsilon(delta), rel=0.02)
    # the library's tighter conversion stays below the classic one, and not far from it
    assert 0.7 * classic_rdp_epsilon(sigma, rounds, delta) < ours
    assert ours <= classic_rdp_epsilon(sigma, rounds, delta) + 1e-9


def test_the_budget_grows_with_rounds_and_shrinks_with_noise_and_sampling():
    delta = 1e-5
    assert epsilon(1.0, 1.0, 10, delta) > epsilon(1.0, 1.0, 5, delta)
    assert epsilon(2.0, 1.0, 10, delta) < epsilon(1.0, 1.0, 10, delta)
    assert epsilon(1.0, 0.1, 10, delta) < epsilon(1.0, 1.0, 10, delta)  # amplification
    assert epsilon(0.0, 1.0, 10, delta) == math.inf and epsilon(1.0, 1.0, 0, delta) == 0.0


@pytest.mark.parametrize("target,q,rounds", [(8.0, 1.0, 8), (1.0, 0.25, 100)])
def test_the_noise_for_a_target_epsilon_reaches_it(target, q, rounds):
    delta = default_delta(100)
    sigma = noise_for_epsilon(target, q, rounds, delta)
    assert epsilon(sigma, q, rounds, delta) <= target * (1 + 1e-3)
    assert epsilon(sigma * 0.98, q, rounds, delta) > target  # and not much more noise than needed


def test_the_settings_of_a_budget():
    with pytest.raises(ConfigError, match="dp_target_epsilon: needs dp_clip"):
        config_from_mapping({"dp_target_epsilon": 3})
    with pytest.raises(ConfigError, match="not both"):
        config_from_mapping({"dp_target_epsilon": 3, "dp_clip": 1, "dp_noise": 1})
    with pytest.raises(ConfigError, match="dp_delta"):
        config_from_mapping({"dp_delta": 1.5})
    config = config_from_mapping({"dp_target_epsilon": 4, "dp_clip": 1, "clients_per_round": 4})
    assert config.dp_sample_rate == 0.5 and config.resolved_dp_delta == default_delta(8)
    settings = config.to_dict()  # a resumed run keeps the resolved noise
    assert settings["dp_noise"] == pytest.approx(noise_for_epsilon(4, 0.5, 8, default_delta(8)))
    assert config_from_mapping(settings).resolved_dp_noise == settings["dp_noise"]
