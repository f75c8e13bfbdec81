"""A run's settings: one frozen dataclass (``settings``), its checks by concern (``checks``), the
values that need parsing (``values``), and reading and writing them (``files``)."""

from prelort.config.files import (
    config_from_mapping,
    flat_settings,
    load_config,
    read_toml,
    to_toml,
    toml_value,
)
from prelort.config.settings import CONCERNS, SimulationConfig, setting
from prelort.config.values import (
    CALIBRATION_CHOICES,
    CLASSIFIER_CHOICES,
    DTYPE_CHOICES,
    HEAD_CHOICES,
    HEAD_LR_FACTOR,
    NESTED_CHOICES,
    OPTIMIZER_CHOICES,
    PARTITION_CHOICES,
    QUANTIZE_CHOICES,
    WIRE_DTYPE_CHOICES,
    BudgetSpec,
    RankSpec,
    parse_budgets,
    parse_memory,
    parse_ranks,
    parse_weighted,
)

__all__ = [
    "CALIBRATION_CHOICES",
    "CLASSIFIER_CHOICES",
    "CONCERNS",
    "DTYPE_CHOICES",
    "HEAD_CHOICES",
    "HEAD_LR_FACTOR",
    "NESTED_CHOICES",
    "OPTIMIZER_CHOICES",
    "PARTITION_CHOICES",
    "QUANTIZE_CHOICES",
    "WIRE_DTYPE_CHOICES",
    "BudgetSpec",
    "RankSpec",
    "SimulationConfig",
    "config_from_mapping",
    "flat_settings",
    "load_config",
    "parse_budgets",
    "parse_memory",
    "parse_ranks",
    "parse_weighted",
    "read_toml",
    "setting",
    "to_toml",
    "toml_value",
]
