"""The ``prelort`` command: ``simulate``, ``flower``, ``compare``, ``summarize``, ``status``, ``export``, ...

Every setting of ``SimulationConfig`` is a flag (``--local-steps 5``) that overrides the TOML file
given with ``--config``. User errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from prelort import __version__
from prelort.cli.runs import (
    cmd_calibrate,
    cmd_compare,
    cmd_flower,
    cmd_simulate,
    cmd_status,
    cmd_summarize,
)
from prelort.cli.settings import add_overwrite, add_settings
from prelort.cli.tools import cmd_aggregate, cmd_export, cmd_methods, cmd_plan_ranks
from prelort.config import RECOMMENDED_METHOD
from prelort.errors import PrelortError
from prelort.logs import quiet_libraries

log = logging.getLogger("prelort")


REFERENCE_HELP = (
    "the method every other's paired difference (95%% bootstrap interval over examples and seeds) "
    "is measured against, or several, comma-separated, each in turn (e.g. "
    "fedit-min,lowest-alone,fedit-max: the paper's claim) [default: the recommended one where it "
    "runs, else the first]"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prelort",
        description="Federated LoRA fine-tuning under rank heterogeneity (PreLort and baselines).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"prelort {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_run_commands(sub)
    _add_tool_commands(sub)
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


def _add_run_commands(sub: argparse._SubParsersAction) -> None:
    """simulate, flower, compare, calibrate, summarize, status."""
    simulate = sub.add_parser("simulate", help="run one federated simulation")
    simulate.add_argument(
        "--resume",
        type=Path,
        metavar="OUT",
        help="continue the run whose output folder is OUT from its last checkpoint",
    )
    add_overwrite(simulate)
    add_settings(simulate)
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
    add_overwrite(flower)
    add_settings(flower)
    flower.set_defaults(func=cmd_flower)

    compare = sub.add_parser("compare", help="run several methods x seeds on identical splits")
    compare.add_argument(
        "--methods",
        default=f"{RECOMMENDED_METHOD},prelort,zeropad",
        help="comma list of methods [default: the recommended one, the paper's rule, zero-padding]",
    )
    compare.add_argument("--reference", help=REFERENCE_HELP)
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
    add_overwrite(compare)
    add_settings(compare, skip=("method",))
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
    calibrate.add_argument(
        "--examples",
        type=int,
        help="training examples the round reads over all clients, each its share (0: all) "
        "[default: the run's calibration_examples]",
    )
    calibrate.add_argument("--out", type=Path, help="[default: RUN/calibrated-lda]")
    calibrate.set_defaults(func=cmd_calibrate)

    summarize = sub.add_parser("summarize", help="rebuild the tables and plots of a compare folder")
    summarize.add_argument(
        "folder",
        type=Path,
        nargs="+",
        help="the --out folder of prelort compare, or several to pool (a reference re-run "
        "beside a comparison later, say); pooled runs must share the comparison's settings",
    )
    summarize.add_argument(
        "--out",
        type=Path,
        help="where the tables and plots go [default: the folder; required when pooling]",
    )
    summarize.add_argument("--reference", help=REFERENCE_HELP)
    summarize.add_argument(
        "--vary",
        default="",
        metavar="SETTINGS",
        help="comma list of settings the pooled runs may differ in (a sweep: --vary lr,local_steps); "
        "a run whose value differs from the first run's becomes its own row, <method>[lr=0.002]",
    )
    summarize.add_argument(
        "--seeds",
        metavar="S,S",
        help="comma list of the seeds to keep (one seed's paired differences beside the pooled "
        "ones) [default: every seed]",
    )
    summarize.add_argument(
        "--rounds-from",
        type=int,
        default=0,
        metavar="ROUND",
        help="draw rounds_<metric>.png from this round on, so a long run's last rounds are "
        "legible [default: 0, every evaluated round]",
    )
    summarize.set_defaults(func=cmd_summarize)

    status = sub.add_parser(
        "status",
        help="where runs stand: round reached, pace, time left, last evaluation (reads their folders)",
    )
    status.add_argument(
        "path",
        type=Path,
        nargs="*",
        default=[Path("runs")],
        help="run folders, or folders searched for them (a compare's --out, say) [default: runs]",
    )
    status.add_argument("--json", type=Path, help="also write every run's status to this JSON file")
    status.set_defaults(func=cmd_status)


def _add_tool_commands(sub: argparse._SubParsersAction) -> None:
    """aggregate, export, plan-ranks, methods."""
    merge = sub.add_parser("aggregate", help="merge PEFT LoRA adapters of different ranks into one")
    merge.add_argument(
        "--method",
        default=RECOMMENDED_METHOD,
        help="any method of `prelort methods`, or fedavg (adapters of one rank) "
        f"[default: {RECOMMENDED_METHOD}, the recommended one]",
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
    add_settings(plan)
    plan.set_defaults(func=cmd_plan_ranks)

    methods = sub.add_parser("methods", help="list the federated methods")
    methods.set_defaults(func=cmd_methods)
