"""The privacy budget of client-level DP: (ε, δ) from an RDP accountant (Google's dp-accounting).

The mechanism (``aggregation/privacy.py``): each round the server clips every sampled client's
update to L2 norm C, aggregates, and adds Gaussian noise of std ``σ · C · s`` where ``s`` bounds one
client's weight in the rule, so one client moves the aggregate by at most ``s · C``: a Gaussian
mechanism of noise multiplier σ at the level of clients (add or remove one client's data).
A round samples ``clients_per_round`` of ``clients`` without replacement; the accountant treats it
as Poisson sampling at the same rate ``q``, as DP-FedAvg's analyses and Opacus do (an
approximation for fixed-size samples). ``R`` rounds compose. With every client in every round
(q = 1) there is no amplification by sampling.

What the guarantee covers: the trained global adapter (and everything the server publishes from
it) against an observer of the server's outputs, for one client's whole dataset. The server itself
sees each update in the clear (central DP: it is trusted), and secure aggregation is not combined
with it here.
"""

from __future__ import annotations

import functools
import math

from prelort.errors import ConfigError

# Integer orders: exact for the sampled Gaussian, and free of the library's convergence warnings
# at fractional orders with large sampling rates. Where the best order would be below 2 (ε above
# about 50, no privacy to speak of) the reported ε is therefore a little high: conservative.
ORDERS = (*range(2, 65), 80, 96, 128, 192, 256, 512)
ACCOUNTANT = "RDP (dp-accounting), Poisson-subsampled Gaussian, add-or-remove-one client"


def default_delta(clients: int) -> float:
    """δ = 1 / n^1.1 for n clients: below 1/n, so no single client's data may leak outright."""
    return 1.0 / clients**1.1


def _event(noise_multiplier: float, sample_rate: float, rounds: int):
    import dp_accounting

    event = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sample_rate < 1.0:
        event = dp_accounting.PoissonSampledDpEvent(sample_rate, event)
    return dp_accounting.SelfComposedDpEvent(event, rounds)


def _accountant():
    from dp_accounting import rdp

    return rdp.RdpAccountant(orders=list(ORDERS))


@functools.lru_cache(maxsize=256)
def epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """ε after ``rounds`` rounds at ``delta`` (inf without noise; 0 after no round).

    Args:
        noise_multiplier: σ, the noise std over one client's largest influence.
        sample_rate: q, the share of clients sampled each round.
        rounds: rounds composed.
        delta: δ.
    """
    if rounds == 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    accountant = _accountant()
    accountant.compose(_event(noise_multiplier, sample_rate, rounds))
    return float(accountant.get_epsilon(delta))


@functools.lru_cache(maxsize=64)
def noise_for_epsilon(
    target_epsilon: float, sample_rate: float, rounds: int, delta: float
) -> float:
    """The smallest σ whose ε after ``rounds`` rounds is at most ``target_epsilon``.

    Raises:
        ConfigError: naming dp_target_epsilon, if no σ up to 10^4 reaches it.
    """
    import dp_accounting
    from dp_accounting.mechanism_calibration import (
        ExplicitBracketInterval,
        NoBracketIntervalFoundError,
    )

    try:
        sigma = dp_accounting.calibrate_dp_mechanism(
            _accountant,
            lambda s: _event(s, sample_rate, rounds),
            target_epsilon,
            delta,
            ExplicitBracketInterval(1e-3, 1e4),
            tol=1e-4,
        )
    except (ValueError, RuntimeError, NoBracketIntervalFoundError) as e:
        raise ConfigError(
            f"dp_target_epsilon: no noise multiplier up to 1e4 reaches ε = {target_epsilon} "
            f"at δ = {delta:.2e} over {rounds} rounds ({e})"
        ) from None
    return float(sigma)
