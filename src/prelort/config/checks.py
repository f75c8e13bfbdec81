"""The checks of a ``SimulationConfig``, by concern; each bad value raises a ``ConfigError`` that
names the field. Run once, when the settings are built (``SimulationConfig.__post_init__``)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from prelort.config.values import check_device_name, parse_budgets
from prelort.errors import ConfigError

if TYPE_CHECKING:
    from prelort.config.settings import SimulationConfig


def validate(config: SimulationConfig) -> None:
    """Every check, concern by concern.

    Raises:
        ConfigError: the first bad value; the message names the field.
    """
    check_choices(config)
    check_federation(config)
    check_model(config)
    check_data(config)
    check_training(config)
    check_evaluation(config)
    check_method(config)
    check_privacy(config)


def check_method(config: SimulationConfig) -> None:
    """A method the registry knows. After the plain values: the registry imports torch (2.5 s),
    which a mistyped number should not wait for."""
    from prelort.aggregation import get_method

    get_method(config.method)


def check_federation(config: SimulationConfig) -> None:
    _positive(config, "clients", "rounds")
    _positive_or_none(config, "clients_per_round")
    if config.clients_per_round is not None and config.clients_per_round > config.clients:
        raise ConfigError(
            f"clients_per_round: {config.clients_per_round} is more than clients={config.clients}"
        )
    if not 0 <= config.seed < 2**32:
        raise ConfigError(f"seed: must be in [0, 2^32), got {config.seed}")
    if not 0 <= config.client_failure_rate < 1:
        raise ConfigError(
            f"client_failure_rate: must be in [0, 1), got {config.client_failure_rate}"
        )
    if config.max_update_norm is not None and config.max_update_norm <= 0:
        raise ConfigError(f"max_update_norm: must be > 0, got {config.max_update_norm}")
    check_device_name("server_device", config.server_device)
    if config.server_device == "mps":
        raise ConfigError(
            "server_device: mps cannot run the aggregation rules, which keep float64 weights "
            "(use cpu or cuda)"
        )
    if config.client_memory is not None:
        parse_budgets(config.client_memory)


def check_model(config: SimulationConfig) -> None:
    _positive_or_none(config, "max_rank")
    if config.max_rank is not None and max(config.ranks.ranks) > config.max_rank:
        raise ConfigError(
            f"ranks: rank {max(config.ranks.ranks)} is above max_rank {config.max_rank}"
        )
    if config.alpha is not None and config.alpha <= 0:
        raise ConfigError(f"alpha: must be > 0, got {config.alpha}")
    if not 0 <= config.lora_dropout < 1:
        raise ConfigError(f"lora_dropout: must be in [0, 1), got {config.lora_dropout}")
    check_device_name("device", config.device)


def check_data(config: SimulationConfig) -> None:
    _positive(config, "classes_per_client")
    _positive_or_none(config, "max_length", "train_examples")
    if config.dirichlet_alpha <= 0:
        raise ConfigError(f"dirichlet_alpha: must be > 0, got {config.dirichlet_alpha}")


def check_training(config: SimulationConfig) -> None:
    _positive(config, "local_steps", "batch_size")
    if config.lr <= 0:
        raise ConfigError(f"lr: must be > 0, got {config.lr}")
    if config.head_lr is not None and config.head_lr <= 0:
        raise ConfigError(f"head_lr: must be > 0, got {config.head_lr}")


def check_evaluation(config: SimulationConfig) -> None:
    _positive(config, "eval_every", "eval_examples", "max_new_tokens")
    if config.calibration_examples < 0:
        raise ConfigError(
            f"calibration_examples: must be >= 0 (0: every example), got "
            f"{config.calibration_examples}"
        )
    if config.readout_examples < 0:
        raise ConfigError(f"readout_examples: must be >= 0, got {config.readout_examples}")
    if config.generate_examples < 0:
        raise ConfigError(f"generate_examples: must be >= 0, got {config.generate_examples}")


def check_privacy(config: SimulationConfig) -> None:
    from prelort.aggregation import get_method

    if config.dp_clip is not None and config.dp_clip <= 0:
        raise ConfigError(f"dp_clip: must be > 0, got {config.dp_clip}")
    if config.dp_noise < 0:
        raise ConfigError(f"dp_noise: must be >= 0, got {config.dp_noise}")
    if config.dp_delta is not None and not 0 < config.dp_delta < 1:
        raise ConfigError(f"dp_delta: must be in (0, 1), got {config.dp_delta}")
    if config.dp_target_epsilon is not None:
        if config.dp_target_epsilon <= 0:
            raise ConfigError(f"dp_target_epsilon: must be > 0, got {config.dp_target_epsilon}")
        if config.dp_clip is None:
            raise ConfigError("dp_target_epsilon: needs dp_clip (the noise is calibrated to it)")
        if config.dp_noise > 0:
            raise ConfigError("dp_target_epsilon: give it or dp_noise, not both")
    if config.dp_noise > 0 and config.dp_clip is None:
        raise ConfigError("dp_noise: needs dp_clip (the noise is calibrated to the clip norm)")
    if config.dp_clip is not None:
        get_method(config.method).sensitivity()  # MethodUnsupported names the method
    if config.secure_aggregation:
        check_secure_aggregation(config)


def check_secure_aggregation(config: SimulationConfig) -> None:
    from prelort.aggregation import get_method

    if not config.secure_range > 0:
        raise ConfigError(f"secure_range: must be > 0, got {config.secure_range}")
    get_method(config.method).secure_rule()  # MethodUnsupported names the method
    if config.dp_clip is not None:
        raise ConfigError(
            "secure_aggregation: not with dp_clip; the server-side DP clips each client's "
            "update, which secure aggregation hides from the server"
        )
    if config.wire_dtype != "float32":
        raise ConfigError(
            "secure_aggregation: needs wire_dtype float32 (SecAgg+ sends quantised integers)"
        )
    if config.calibration == "lda":
        raise ConfigError(
            "secure_aggregation: not with calibration; the calibration round sends each "
            "client's class statistics in the clear"
        )
    if (config.clients_per_round or config.clients) < 2:
        raise ConfigError(
            "secure_aggregation: needs at least 2 clients per round (a sum of one update "
            "is the update)"
        )


def _positive(config: SimulationConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value < 1:
            raise ConfigError(f"{name}: must be >= 1, got {value}")


def _positive_or_none(config: SimulationConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ConfigError(f"{name}: must be >= 1, got {value}")


def check_choices(config: SimulationConfig) -> None:
    """Every field with ``choices`` in its metadata holds one of them (or None, its default)."""
    for f in dataclasses.fields(config):
        choices, value = f.metadata.get("choices"), getattr(config, f.name)
        if not choices or (value is None and f.default is None):
            continue
        if value not in choices:
            raise ConfigError(f"{f.name}: {value!r} is not one of {', '.join(choices)}")
