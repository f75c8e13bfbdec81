"""Settings from TOML files, command-line flags and Flower's run config, and back to TOML."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prelort.config.settings import CONCERNS, SimulationConfig
from prelort.config.values import RankSpec, names_list, parse_ranks
from prelort.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_FIELDS = {f.name: f for f in dataclasses.fields(SimulationConfig)}


def _kind(annotation: Any) -> tuple[Any, bool]:
    """(the type a value is read as, whether None is allowed) of a field's resolved annotation."""
    args = typing.get_args(annotation)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else object), True
    return annotation, False


_KINDS = {name: _kind(t) for name, t in typing.get_type_hints(SimulationConfig).items()}


def _absolute_if_local(value: str, name: str) -> str:
    """A task file or model folder as an absolute path, so that a resumed run or another command
    started elsewhere finds it; names (packaged or hub ids) unchanged."""
    from prelort.models import PACKAGED_MODELS

    if name == "model" and value in PACKAGED_MODELS:
        return value
    path = Path(value).expanduser()
    is_file_task = name == "task" and value.endswith((".jsonl", ".csv"))
    looks_local = value.startswith((".", "/", "~")) or is_file_task
    if looks_local or (name == "model" and path.is_dir()):
        return str(path.resolve())
    return value


def _coerce(name: str, value: Any) -> Any:
    """Turn a TOML or command-line value into the field's type."""
    if name == "ranks":
        return value if isinstance(value, RankSpec) else parse_ranks(value)
    if name == "target_modules":
        return names_list(value)
    if name == "out":
        return Path(value)
    if name in ("task", "model") and isinstance(value, str):
        return _absolute_if_local(value, name)
    if name == "client_memory":
        if value is None or value == "":
            return None
        return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    kind, optional = _KINDS[name]
    annotation = str(_FIELDS[name].type)  # as written, for messages
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name}: a value is required")
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name}: cannot read {value!r} as {annotation}") from None
    if kind is float:
        if not math.isfinite(number):
            raise ConfigError(f"{name}: must be a finite number, got {value!r}")
        return number
    return str(value)


def config_from_mapping(values: Mapping[str, Any]) -> SimulationConfig:
    """Validate a mapping of settings (dashes or underscores) into a ``SimulationConfig``.

    Raises:
        ConfigError: an unknown key or a bad value; the message names it.
    """
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in _FIELDS:
            raise ConfigError(f"{key}: unknown setting; valid settings are {', '.join(_FIELDS)}")
        kwargs[name] = _coerce(name, value)
    return SimulationConfig(**kwargs)


def read_toml(path: Path) -> dict[str, Any]:
    """The settings of a TOML file: its ``[simulate]`` table if present, else the top level.

    Raises:
        ConfigError: a missing or unreadable file.
    """
    if not path.is_file():
        raise ConfigError(f"config: file not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config: {path} is not valid TOML: {e}") from None
    return dict(data.get("simulate", data))


def load_config(path: Path | None, overrides: Mapping[str, Any]) -> SimulationConfig:
    """Settings from a TOML file (if any) with non-None ``overrides`` on top."""
    values = read_toml(path) if path is not None else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_mapping(values)


def toml_value(value: Any) -> str:
    """A scalar as TOML: booleans and numbers as such, anything else a basic (JSON) string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def flat_settings(config: SimulationConfig) -> dict[str, Any]:
    """The resolved settings as TOML scalars (lists as comma strings; unset ones left out): what
    ``--print-config`` prints and what travels as Flower's run config."""
    flat: dict[str, Any] = {}
    for key, value in config.to_dict().items():
        if value is None:
            continue
        flat[key] = ",".join(map(str, value)) if isinstance(value, list) else value
    return flat


def to_toml(config: SimulationConfig) -> str:
    """The resolved settings as a ``[simulate]`` table that ``--config`` reads back, grouped by
    concern under comment lines (the table stays flat)."""
    flat = flat_settings(config)
    concern = {f.name: f.metadata["concern"] for f in dataclasses.fields(SimulationConfig)}
    lines = ["[simulate]"]
    for key, title in CONCERNS.items():
        group = [f"{k} = {toml_value(v)}" for k, v in flat.items() if concern[k] == key]
        if group:
            lines += [f"# {title}", *group]
    return "\n".join(lines) + "\n"
