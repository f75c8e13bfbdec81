"""Flower's run config (a flat mapping from pyproject or ``--run-config``) as prelort settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prelort.config import SimulationConfig, config_from_mapping
from prelort.errors import ConfigError

RESUME = "resume"  # the one run-config key that is not a simulate setting


def config_from_run_config(run_config: Mapping[str, Any]) -> tuple[SimulationConfig, bool]:
    """(settings, resume) of a run config, validated with the rules of ``prelort simulate``.

    Keys may use ``-`` or ``_`` (``local-steps`` = ``local_steps``); a value of ``""`` leaves a
    setting at its default, since a TOML run config cannot hold a null.

    Raises:
        ConfigError: an unknown key or a bad value, naming the setting.
    """
    settings = {k: v for k, v in run_config.items() if v != "" and k != RESUME}
    resume = run_config.get(RESUME, False)
    if not isinstance(resume, bool):
        raise ConfigError(f"resume: must be true or false, got {resume!r}")
    return config_from_mapping(settings), resume
