"""The commands around runs: ``aggregate`` (merge PEFT adapters), ``export``, ``plan-ranks``,
``methods``."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from prelort.cli.settings import check_machine, overrides_of, print_config
from prelort.config import (
    load_config,
)
from prelort.errors import ConfigError

if TYPE_CHECKING:
    pass

log = logging.getLogger("prelort")


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

    config = load_config(args.config, overrides_of(args))
    if args.print_config:
        return print_config(config)
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
