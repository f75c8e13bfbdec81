"""The commands that run federations: ``simulate``, ``flower``, ``calibrate``, ``compare``,
``summarize``."""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from prelort.cli.settings import check_machine, overrides_of, print_config, settings_of
from prelort.config import (
    HEAD_CHOICES,
    SimulationConfig,
    config_from_mapping,
    load_config,
    read_toml,
)
from prelort.errors import ConfigError

if TYPE_CHECKING:
    pass

log = logging.getLogger("prelort")


def cmd_simulate(args: argparse.Namespace) -> int:
    from prelort.runtime.rundir import claimed_run_dir

    config, resume = settings_of(args)
    if args.print_config:
        return print_config(config)
    check_machine(config)
    if resume is not None:
        print(f"prelort simulate: resuming {args.resume} after round {resume.round}")
    with claimed_run_dir(config.out, args.overwrite, resume=resume is not None):
        return _simulate(args, config, resume)


def _simulate(args: argparse.Namespace, config: SimulationConfig, resume) -> int:
    from prelort.runtime.outputs import final_table, write_outputs, write_progress
    from prelort.simulation.run import run_simulation

    out = config.out
    print(
        f"prelort simulate: {config.method} on {config.task} with {config.model}, "
        f"ranks {config.ranks}, {config.clients} clients, {config.rounds} rounds -> {out}"
    )
    start = time.perf_counter()
    result = run_simulation(
        config,
        progress=not args.quiet,
        on_round=lambda r: write_progress(r, out),
        checkpoint_dir=out,
        resume=resume,
    )
    files = write_outputs(result, out)
    print(f"\nfinal metrics of the global adapter per rank tier ({config.method}):")
    print(final_table(result))
    budget = result.privacy_budget()
    if budget is not None:
        eps = "inf (no noise)" if budget["epsilon"] is None else f"{budget['epsilon']:.3g}"
        print(
            f"\nclient-level DP: ε = {eps} at δ = {budget['delta']:.2e} after {budget['rounds']} "
            f"rounds (σ = {budget['noise_multiplier']:.3g}, C = {budget['clip']:g}, "
            f"q = {budget['sample_rate']:.3g}; {budget['accountant']})"
        )
    print(
        f"\nwall time {time.perf_counter() - start:.1f} s; wrote "
        + ", ".join(str(p) for p in files.values())
    )
    if result.traffic and not any(t["clients"] for t in result.traffic):
        reasons = [r["reason"] for t in result.traffic for r in t["rejected"]]
        print(
            f"prelort: error: every client update of every round was rejected; the global adapter "
            f"never changed (first reason: {reasons[0] if reasons else 'every client dropped out'})",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_flower(args: argparse.Namespace) -> int:
    from prelort.flower.deploy import deploy
    from prelort.runtime.outputs import final_table, final_tiers, read_metrics
    from prelort.runtime.result import SimulationResult
    from prelort.runtime.rundir import claimed_run_dir

    config, _ = settings_of(args)
    if args.print_config:
        return print_config(config)
    check_machine(config)
    nodes = config.clients if args.nodes is None else args.nodes
    from prelort.flower.deploy import node_hardware

    node_hardware(config, nodes, args.gpus_per_node)  # refuse GPUs this machine lacks up front
    print(
        f"prelort flower: {config.method} on {config.task} with {config.model}, ranks "
        f"{config.ranks}, {config.clients} clients on {nodes} Flower nodes, {config.rounds} rounds "
        f"-> {config.out}"
    )
    start = time.perf_counter()
    with claimed_run_dir(config.out, args.overwrite, resume=args.resume is not None):
        out = deploy(config, nodes, args.resume is not None, args.gpus_per_node)
    metrics = read_metrics(out / "metrics.json")
    result = SimulationResult(config.to_dict(), [], [], final=final_tiers(metrics))
    print(f"\nfinal metrics of the global adapter per rank tier ({config.method}):")
    print(final_table(result))
    print(f"\nwall time {time.perf_counter() - start:.1f} s; wrote {out}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from prelort.io import load_adapter, write_json
    from prelort.runtime.calibrate import calibrated_tiers
    from prelort.runtime.federation import prepare_federation
    from prelort.runtime.outputs import final_tiers, read_metrics, save_calibrated
    from prelort.runtime.workbench import build_workbench

    metrics_path, adapter_path = args.run / "metrics.json", args.run / "adapter.safetensors"
    for path in (metrics_path, adapter_path):
        if not path.is_file():
            raise ConfigError(f"run: {path} not found; give the --out folder of a finished run")
    metrics = read_metrics(metrics_path)
    config = config_from_mapping(metrics["config"])
    if args.examples is not None:
        config = config.replace(calibration_examples=args.examples)
    state, _ = load_adapter(adapter_path)
    name = "calibrated-lda-holders" if args.holders_only else "calibrated-lda"
    out = args.out or args.run / name
    fed = prepare_federation(config, build_workbench(config))
    start = time.perf_counter()
    calibration, tiers = calibrated_tiers(fed, state, holders_only=args.holders_only)
    seconds = time.perf_counter() - start
    ladder = config.ranks.ladder
    before = final_tiers(metrics)
    report = {
        "run": str(args.run),
        "holders_only": args.holders_only,
        "calibration_examples": config.calibration_examples,
        "seconds": round(seconds, 1),
        "tiers": {
            str(t): {
                "accuracy": tiers[str(t)]["accuracy"],
                "head_accuracy": before.get(str(t), {}).get("accuracy"),
                "readout_accuracy": before.get(str(t), {}).get("readout_accuracy"),
                "examples": calibration.examples[t],
                "clients": calibration.clients[t],
            }
            for t in ladder
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    save_calibrated(
        out / "adapter.safetensors",
        calibration.state,
        config.to_dict(),
        list(ladder),
        calibration=name,
    )
    write_json(out / "calibration.json", report)
    print("| rank tier | LDA head | federated head | readout | examples |")
    print("|---|---|---|---|---|")
    for t, row in report["tiers"].items():
        cells = [row["accuracy"], row["head_accuracy"], row["readout_accuracy"]]
        shown = " | ".join("-" if v is None else f"{v:.4f}" for v in cells)
        print(f"| {t} | {shown} | {row['examples']} |")
    print(f"wrote {out / 'adapter.safetensors'} and {out / 'calibration.json'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from prelort.aggregation import get_method
    from prelort.runtime.rundir import claimed_run_dir

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise ConfigError("methods: give at least one method")
    twice = sorted({m for m in methods if methods.count(m) > 1})
    if twice:
        raise ConfigError(f"methods: {', '.join(twice)} listed more than once")
    for m in methods:
        get_method(m)
    _check_references(args.reference, methods, "--methods")
    if args.seeds < 1:
        raise ConfigError(f"seeds: must be >= 1, got {args.seeds}")
    if args.jobs < 1:
        raise ConfigError(f"jobs: must be >= 1, got {args.jobs}")
    overrides = overrides_of(args, skip=("method",))
    if "out" not in overrides and "out" not in (read_toml(args.config) if args.config else {}):
        overrides["out"] = "runs/compare"
    base = load_config(args.config, overrides)
    if args.print_config:
        return print_config(base)
    check_machine(base)
    with claimed_run_dir(base.out, args.overwrite):
        return _compare(args, base, methods)


def _compare(args: argparse.Namespace, base: SimulationConfig, methods: list[str]) -> int:
    from prelort.simulation.compare import run_comparison

    first_seed = base.seed
    seeds = list(range(first_seed, first_seed + args.seeds))
    print(
        f"prelort compare: {', '.join(methods)} x seeds {seeds} on {base.task} with {base.model}, "
        f"ranks {base.ranks}, {base.clients} clients, {base.rounds} rounds -> {base.out}"
    )
    start = time.perf_counter()
    heads = [h.strip() for h in args.heads.split(",") if h.strip()] if args.heads else None
    for h in heads or []:
        if h not in HEAD_CHOICES:
            raise ConfigError(f"heads: {h!r} is not one of {', '.join(HEAD_CHOICES)}")
    comparison = run_comparison(
        base,
        methods,
        seeds,
        progress=not args.quiet,
        heads=heads,
        reference=not args.no_reference,
        jobs=args.jobs,
    )
    _report_comparison(comparison, base.out, _references(args.reference))
    print(f"wall time {time.perf_counter() - start:.1f} s")
    return 0


def _references(value: str | None) -> list[str]:
    """``--reference a,b``: each method named, in order, without blanks. A comma inside brackets
    belongs to a pooled run's label (``fedit-min[lr_schedule=constant,rounds=72]``)."""
    return [r.strip() for r in re.split(r",(?![^\[]*\])", value or "") if r.strip()]


def _check_references(value: str | None, methods: list[str], where: str) -> None:
    named = _references(value)
    if value is not None and not named:
        raise ConfigError("reference: name at least one method")
    missing = [r for r in named if r not in methods]
    if missing:
        raise ConfigError(
            f"reference: {', '.join(map(repr, missing))} not one of {where} ({', '.join(methods)})"
        )


def _report_comparison(
    comparison, out: Path, references: list[str] | None = None, rounds_from: int = 0
) -> None:
    from prelort.simulation.compare import write_comparison

    finished = [r for r in references or [] if r in comparison.methods]
    for r in set(references or []) - set(finished):
        log.warning("reference: %s has no finished run here; left out", r)
    references = finished or None  # None: the recommended method where it ran
    files = write_comparison(comparison, out, references, rounds_from)
    # summary.md holds the tables, the note and the paired differences (bootstrapped once, there)
    print("\nfinal metric of the global adapter per rank tier (mean ± std over seeds):\n")
    print(files["summary_md"].read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in files.values()))


def _seeds(text: str | None) -> set[int] | None:
    """``--seeds 1,2`` as a set, None for every seed.

    Raises:
        ConfigError: a part that is no non-negative integer.
    """
    if text is None:
        return None
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts or not all(part.isdigit() for part in parts):
        raise ConfigError(f"seeds: {text!r} is no comma list of seeds (e.g. 1,2)")
    return {int(part) for part in parts}


def cmd_summarize(args: argparse.Namespace) -> int:
    from prelort.simulation.reload import load_comparison

    if args.rounds_from < 0:
        raise ConfigError(f"rounds-from: {args.rounds_from} is negative; give a round, 0 for all")
    if len(args.folder) > 1 and args.out is None:
        raise ConfigError(
            f"out: {len(args.folder)} folders pooled; name the folder the summary goes to with --out"
        )
    out = args.out or args.folder[0]
    vary = [name.strip().replace("-", "_") for name in args.vary.split(",") if name.strip()]
    comparison = load_comparison(*args.folder, vary=vary, seeds=_seeds(args.seeds))
    _check_references(args.reference, comparison.methods, "the compared methods")
    if comparison.unfinished:
        print(
            f"prelort summarize: left out {len(comparison.unfinished)} unfinished run(s): "
            + ", ".join(comparison.unfinished)
            + " (finish them with `prelort simulate --resume`)"
        )
    _report_comparison(comparison, out, _references(args.reference), args.rounds_from)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from prelort.io import write_json
    from prelort.runtime.status import format_statuses, statuses

    found = statuses(args.path)
    common = args.path[0] if len(args.path) == 1 and args.path[0].is_dir() else None
    print(format_statuses(found, common))
    if args.json is not None:
        write_json(args.json, [s.to_json() for s in found])
        print(f"wrote {args.json}")
    return 0
