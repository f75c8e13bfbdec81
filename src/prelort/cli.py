"""The ``prelort`` command: ``simulate``, ``flower``, ``compare``, ``aggregate``, ``export``, ``methods``.

Every setting of ``SimulationConfig`` is a flag (``--local-steps 5``) that overrides the TOML file
given with ``--config``. User errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prelort import __version__
from prelort.config import (
    CONCERNS,
    HEAD_CHOICES,
    SimulationConfig,
    config_from_mapping,
    load_config,
    read_toml,
)
from prelort.errors import ConfigError, PrelortError
from prelort.logs import quiet_libraries

if TYPE_CHECKING:
    from prelort.runtime.checkpoint import Checkpoint

log = logging.getLogger("prelort")


def _field_help() -> dict[str, str]:
    """The help of every setting, from its field's metadata (``prelort.config.setting``)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(SimulationConfig)}


def _add_settings(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
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
    help_text = _field_help()
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


def _add_overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (without it such a folder is refused)",
    )


def _overrides(args: argparse.Namespace, skip: Sequence[str] = ()) -> dict[str, object]:
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(SimulationConfig)
        if f.name not in skip and getattr(args, f.name, None) is not None
    }


def _settings(args: argparse.Namespace) -> tuple[SimulationConfig, Checkpoint | None]:
    """The run's settings from flags and ``--config``, or from the checkpoint of ``--resume``."""
    from prelort.runtime.checkpoint import load_checkpoint

    if args.resume is None:
        return load_config(args.config, _overrides(args)), None
    overrides = _overrides(args)
    if "out" in overrides and Path(overrides["out"]).resolve() != Path(args.resume).resolve():
        raise ConfigError(
            f"out: a resumed run continues in its own folder ({args.resume}); drop --out "
            f"{overrides['out']}"
        )
    resume = load_checkpoint(args.resume)
    if set(overrides) - {"out", "rounds"} or args.config is not None:
        raise ConfigError(
            "resume: the settings come from the checkpoint; give no other setting than --rounds "
            "(more rounds extend the run)"
        )
    settings = {**resume.config, "out": str(args.resume)}
    if "rounds" in overrides:
        settings["rounds"] = overrides["rounds"]
    config = config_from_mapping(settings)
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


def _print_config(config: SimulationConfig) -> int:
    from prelort.config import to_toml

    print(to_toml(config), end="")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from prelort.runtime.rundir import claimed_run_dir

    config, resume = _settings(args)
    if args.print_config:
        return _print_config(config)
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
    from prelort.runtime.outputs import final_table
    from prelort.runtime.result import SimulationResult
    from prelort.runtime.rundir import claimed_run_dir

    config, _ = _settings(args)
    if args.print_config:
        return _print_config(config)
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
    metrics = json.loads((out / "metrics.json").read_text())
    result = SimulationResult(config.to_dict(), [], [], final=metrics["final"]["tiers"])
    print(f"\nfinal metrics of the global adapter per rank tier ({config.method}):")
    print(final_table(result))
    print(f"\nwall time {time.perf_counter() - start:.1f} s; wrote {out}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from prelort.io import load_adapter, save_adapter, write_json
    from prelort.runtime.calibrate import calibrated_tiers
    from prelort.runtime.checkpoint import adapter_metadata
    from prelort.runtime.federation import prepare_federation
    from prelort.runtime.workbench import build_workbench

    metrics_path, adapter_path = args.run / "metrics.json", args.run / "adapter.safetensors"
    for path in (metrics_path, adapter_path):
        if not path.is_file():
            raise ConfigError(f"run: {path} not found; give the --out folder of a finished run")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    config = config_from_mapping(metrics["config"])
    state, _ = load_adapter(adapter_path)
    name = "calibrated-lda-holders" if args.holders_only else "calibrated-lda"
    out = args.out or args.run / name
    fed = prepare_federation(config, build_workbench(config))
    calibration, tiers = calibrated_tiers(fed, state, holders_only=args.holders_only)
    ladder = config.ranks.ladder
    before = metrics.get("final", {}).get("tiers", {})
    report = {
        "run": str(args.run),
        "holders_only": args.holders_only,
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
    meta = {**adapter_metadata(config.to_dict(), list(ladder)), "head": "per-tier"}
    save_adapter(out / "adapter.safetensors", calibration.state, {**meta, "calibration": name})
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
    if args.seeds < 1:
        raise ConfigError(f"seeds: must be >= 1, got {args.seeds}")
    if args.jobs < 1:
        raise ConfigError(f"jobs: must be >= 1, got {args.jobs}")
    overrides = _overrides(args, skip=("method",))
    if "out" not in overrides and "out" not in (read_toml(args.config) if args.config else {}):
        overrides["out"] = "runs/compare"
    base = load_config(args.config, overrides)
    if args.print_config:
        return _print_config(base)
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
    _report_comparison(comparison, base.out)
    print(f"wall time {time.perf_counter() - start:.1f} s")
    return 0


def _report_comparison(comparison, out: Path) -> None:
    from prelort.simulation.compare import (
        cost_table,
        markdown_table,
        reference_note,
        write_comparison,
    )

    files = write_comparison(comparison, out)
    rows = comparison.summary_rows()
    print("\nfinal metric of the global adapter per rank tier (mean ± std over seeds):\n")
    print(markdown_table(rows))
    note = reference_note(rows)
    if note:
        print("\n" + note)
    print()
    print(cost_table(comparison.cost_rows()))
    print("\nwrote " + ", ".join(str(p) for p in files.values()))


def cmd_summarize(args: argparse.Namespace) -> int:
    from prelort.simulation.compare import load_comparison

    comparison = load_comparison(args.folder)
    if comparison.unfinished:
        print(
            f"prelort summarize: left out {len(comparison.unfinished)} unfinished run(s): "
            + ", ".join(comparison.unfinished)
            + " (finish them with `prelort simulate --resume`)"
        )
    _report_comparison(comparison, args.folder)
    return 0


def cmd_aggregate(args: argparse.Namespace) -> int:
    from prelort.merge import aggregate_folders, check_weights

    weights = None
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise ConfigError(f"weights: cannot read {args.weights!r} as numbers") from None
        check_weights(weights, len(args.adapters))  # before any folder is read
    rank = aggregate_folders(args.adapters, args.out, args.method, weights, args.rank)
    print(
        f"wrote a rank-{rank} PEFT adapter ({args.method} of {len(args.adapters)} adapters) to {args.out}"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from prelort.merge import export_prefix

    summary = export_prefix(args.adapter, args.rank, args.out)
    print(
        f"wrote the rank-{summary['rank']} prefix of {args.adapter} ({summary['modules']} modules) "
        f"as a PEFT adapter to {args.out}"
    )
    if summary["head"]:
        tier = "" if summary["head_tier"] is None else f" of tier {summary['head_tier']}"
        print(
            f"with the classification head{tier} as modules_to_save: {', '.join(summary['head'])}"
        )
    return 0


def cmd_plan_ranks(args: argparse.Namespace) -> int:
    from prelort.budgets import format_table, measure_rank_memory
    from prelort.config import parse_memory
    from prelort.models import cache_dir

    config = load_config(args.config, _overrides(args))
    if args.print_config:
        return _print_config(config)
    budgets = [parse_memory(m, "memory") for m in args.memory.split(",")] if args.memory else []
    check_machine(config)
    ranks = config.ranks.ladder
    print(
        f"prelort plan-ranks: {config.model} on {config.task}, ranks {','.join(map(str, ranks))}, "
        f"batch {config.batch_size}, device {config.device}, dtype {config.dtype}, "
        f"quantize {config.quantize}, gradient checkpointing {config.gradient_checkpointing}"
    )
    cache = None if args.no_cache else cache_dir() / "rank-memory"
    table = measure_rank_memory(config, cache=cache, progress=not args.quiet)
    print()
    print(format_table(table, budgets))
    if args.json is not None:
        from prelort.io import write_json

        fits = {f"{b / 2**30:g}GB": table.largest_fitting(b) for b in budgets}
        write_json(args.json, {**table.to_json(), "budgets": fits, "config": config.to_dict()})
        print(f"wrote {args.json}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from prelort.aggregation import methods
    from prelort.aggregation.registry import GROUPS

    known = methods()
    width = max(map(len, known)) + 1
    for group, title in GROUPS.items():
        members = [m for m in known.values() if m.group == group]
        if members:
            print(f"{title}:")
        for method in members:
            print(f"  {method.name:{width}s} nested={method.nested:6s} {method.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prelort",
        description="Federated LoRA fine-tuning under rank heterogeneity (PreLort and baselines).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"prelort {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    simulate = sub.add_parser("simulate", help="run one federated simulation")
    simulate.add_argument(
        "--resume",
        type=Path,
        metavar="OUT",
        help="continue the run whose output folder is OUT from its last checkpoint",
    )
    _add_overwrite(simulate)
    _add_settings(simulate)
    simulate.set_defaults(func=cmd_simulate)

    flower = sub.add_parser(
        "flower", help="run one federation on a local Flower SuperLink with N SuperNodes"
    )
    flower.add_argument(
        "--nodes", type=int, help="SuperNodes to start, one partition each [default: --clients]"
    )
    flower.add_argument(
        "--gpus-per-node",
        type=float,
        default=0.0,
        help="each SuperNode's share of a GPU: 1 = a GPU each, 0.5 = two nodes per GPU; nodes "
        "are spread over the GPUs torch sees [default: 0, every node on --device]",
    )
    flower.add_argument(
        "--resume",
        type=Path,
        metavar="OUT",
        help="continue the run whose output folder is OUT from its last checkpoint",
    )
    _add_overwrite(flower)
    _add_settings(flower)
    flower.set_defaults(func=cmd_flower)

    compare = sub.add_parser("compare", help="run several methods x seeds on identical splits")
    compare.add_argument("--methods", default="prelort,zeropad", help="comma list of methods")
    compare.add_argument("--seeds", type=int, default=1, help="seeds per method, from --seed up")
    compare.add_argument(
        "--heads",
        help="run every method with each of these head modes (per-tier,shared) [default: each "
        "method's own]",
    )
    compare.add_argument(
        "--no-reference",
        action="store_true",
        help="leave out the no-adapter reference row (frozen base + head, or zero-shot)",
    )
    compare.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs side by side in worker processes, the cores shared out between them "
        "[default: 1, one after another]",
    )
    _add_overwrite(compare)
    _add_settings(compare, skip=("method",))
    compare.set_defaults(func=cmd_compare)

    calibrate = sub.add_parser(
        "calibrate",
        help="refit every tier's classifier head in closed form (LDA) from client statistics",
    )
    calibrate.add_argument("run", type=Path, help="the --out folder of a finished simulate run")
    calibrate.add_argument(
        "--holders-only",
        action="store_true",
        help="a client computes statistics only at the tiers up to its own rank",
    )
    calibrate.add_argument("--out", type=Path, help="[default: RUN/calibrated-lda]")
    calibrate.set_defaults(func=cmd_calibrate)

    summarize = sub.add_parser("summarize", help="rebuild the tables and plots of a compare folder")
    summarize.add_argument("folder", type=Path, help="the --out folder of prelort compare")
    summarize.set_defaults(func=cmd_summarize)

    merge = sub.add_parser("aggregate", help="merge PEFT LoRA adapters of different ranks into one")
    merge.add_argument(
        "--method",
        default="prelort",
        help="any method of `prelort methods`, or fedavg (adapters of one rank) [default: prelort]",
    )
    merge.add_argument(
        "--weights", help="comma list, one positive weight per adapter [default: equal]"
    )
    merge.add_argument(
        "--rank", type=int, help="output rank (flexlora only) [default: largest input]"
    )
    merge.add_argument("--out", type=Path, required=True, help="output PEFT folder")
    merge.add_argument("adapters", nargs="+", type=Path, help="PEFT adapter folders")
    merge.set_defaults(func=cmd_aggregate)

    export = sub.add_parser("export", help="the rank-r prefix of a global adapter as a PEFT folder")
    export.add_argument("--rank", type=int, required=True, help="the rank tier to export")
    export.add_argument("--out", type=Path, required=True, help="output PEFT folder")
    export.add_argument("adapter", type=Path, help="adapter.safetensors written by simulate")
    export.set_defaults(func=cmd_export)

    plan = sub.add_parser(
        "plan-ranks",
        help="measure one client step's peak memory at each rank; the largest rank per budget",
    )
    plan.add_argument(
        "--memory", help="comma list of client memory budgets, e.g. 4GB,8GB,16GB (GB = 2^30 bytes)"
    )
    plan.add_argument("--json", type=Path, help="also write the table to this JSON file")
    plan.add_argument(
        "--no-cache", action="store_true", help="measure again even if this machine measured it"
    )
    _add_settings(plan)
    plan.set_defaults(func=cmd_plan_ranks)

    methods = sub.add_parser("methods", help="list the federated methods")
    methods.set_defaults(func=cmd_methods)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    quiet_libraries(getattr(args, "quiet", False))
    try:
        return args.func(args)
    except PrelortError as e:
        print(f"prelort: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `prelort methods | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # an unusable path met while writing: name it, no traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"prelort: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prelort: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
