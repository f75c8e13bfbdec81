"""The settings of a command line: every ``SimulationConfig`` field as a flag, grouped by
concern, over the ``--config`` file; ``--resume`` reads them from a checkpoint instead."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prelort.config import (
    CONCERNS,
    SimulationConfig,
    config_from_mapping,
    load_config,
)
from prelort.errors import ConfigError

if TYPE_CHECKING:
    from prelort.runtime.checkpoint import Checkpoint

log = logging.getLogger("prelort")


def field_help() -> dict[str, str]:
    """The help of every setting, from its field's metadata (``prelort.config.setting``)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(SimulationConfig)}


def add_settings(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    parser.add_argument("--config", type=Path, help="TOML file of settings; flags override it")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-round lines")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved settings as a TOML [simulate] table (for --config) and exit",
    )
    # also after the command; SUPPRESS keeps `prelort -v simulate` from being reset to False
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
    )
    help_text = field_help()
    groups = {key: parser.add_argument_group(title) for key, title in CONCERNS.items()}
    for f in dataclasses.fields(SimulationConfig):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        switch = {"nargs": "?", "const": "true"} if f.type == "bool" else {}  # --flag = true
        groups[f.metadata["concern"]].add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            metavar="true|false" if switch else f.name.upper(),
            help=help_text.get(f.name, "") + ("" if default is None else f" [default: {default}]"),
            **switch,
        )


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (without it such a folder is refused)",
    )


def overrides_of(args: argparse.Namespace, skip: Sequence[str] = ()) -> dict[str, object]:
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(SimulationConfig)
        if f.name not in skip and getattr(args, f.name, None) is not None
    }


def resumable_settings() -> tuple[str, ...]:
    """The settings ``--resume`` may change: those marked ``resumable`` (the adapter a resumed run
    trains stays the uninterrupted run's)."""
    return tuple(f.name for f in dataclasses.fields(SimulationConfig) if f.metadata["resumable"])


def settings_of(args: argparse.Namespace) -> tuple[SimulationConfig, Checkpoint | None]:
    """The run's settings from flags and ``--config``, or from the checkpoint of ``--resume``."""
    if args.resume is None:
        return load_config(args.config, overrides_of(args)), None
    from prelort.runtime.checkpoint import (
        check_schedule_unchanged,
        check_task_unchanged,
        load_checkpoint,
    )

    overrides = overrides_of(args)
    if "out" in overrides and Path(overrides["out"]).resolve() != Path(args.resume).resolve():
        raise ConfigError(
            f"out: a resumed run continues in its own folder ({args.resume}); drop --out "
            f"{overrides['out']}"
        )
    resume = load_checkpoint(args.resume)
    check_task_unchanged(resume, resume.config["task"])  # before anything loads
    resumable = resumable_settings()
    if set(overrides) - {"out", *resumable} or args.config is not None:
        flags = ", ".join("--" + name.replace("_", "-") for name in resumable)
        raise ConfigError(
            f"resume: the settings come from the checkpoint; give no other setting than {flags} "
            "(more rounds extend the run)"
        )
    settings = {**resume.config, "out": str(args.resume)}
    settings.update({name: overrides[name] for name in resumable if name in overrides})
    config = config_from_mapping(settings)
    check_schedule_unchanged(resume, config.lr_schedule, config.rounds)
    if config.rounds < resume.round:
        raise ConfigError(
            f"rounds: the run in {args.resume} has already run {resume.round} rounds; give more "
            "to extend it"
        )
    return config, resume


def check_machine(config: SimulationConfig) -> None:
    """Settings this machine or model cannot run, refused before anything loads or is written."""
    from prelort.device import resolve_device
    from prelort.models import check_model_settings

    check_model_settings(
        config.model, config.device, config.dtype, config.quantize, config.target_modules
    )
    resolve_device(config.server_device, "server_device")


def print_config(config: SimulationConfig) -> int:
    from prelort.config import to_toml

    print(to_toml(config), end="")
    return 0
