"""The Flower ServerApp: the simulation's plan, server step, evaluation and outputs over a Grid.

It evaluates every tier of the global adapter centrally (the task's test split, as ``prelort
simulate`` does), checkpoints after every round and writes the same files as ``prelort
simulate``: metrics.json with per-tier metrics, metrics.csv, plots and the adapter.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from prelort.config import SimulationConfig
from prelort.errors import ConfigError
from prelort.federation.plan import assign_ranks
from prelort.federation.server import RoundOutcome
from prelort.flower.calibration import calibration_round
from prelort.flower.codec import to_arrays
from prelort.flower.secure import SecurePrefixStrategy, run_secure_rounds
from prelort.flower.settings import config_from_run_config
from prelort.flower.strategy import PrefixNestedStrategy, query_partitions
from prelort.runtime.calibrate import calibrates, evaluate_calibration
from prelort.runtime.checkpoint import CHECKPOINT_NAME, load_checkpoint
from prelort.runtime.outputs import format_round, write_outputs, write_progress
from prelort.runtime.result import SimulationResult
from prelort.runtime.rundir import holds_run
from prelort.runtime.skeleton import close_round, finish_run, start_run
from prelort.runtime.workbench import build_workbench

log = logging.getLogger("flwr.prelort")  # a child of Flower's logger: shown by `flwr run --stream`

NODE_TIMEOUT = 600.0  # seconds to wait for the nodes, and for one round's replies


def check_out_folder(out: Path, resume: bool) -> None:
    """Refuse to start over a finished run, or to resume where there is nothing to resume.

    ``prelort flower`` and ``prelort simulate`` check this on the command line; ``flwr run`` reaches
    the ServerApp directly, so it checks again.

    Raises:
        ConfigError: ``out`` holds a run and ``resume`` is False, or ``resume`` without a
            checkpoint in ``out``.
    """
    if resume and not (out / CHECKPOINT_NAME).is_file():
        raise ConfigError(f"resume: no {CHECKPOINT_NAME} in {out}; nothing to resume")
    if not resume and holds_run(out):
        raise ConfigError(
            f"out: {out} already holds a run; set another out, or resume = true to continue it"
        )


def run_server(
    grid: Grid,
    config: SimulationConfig,
    resume: bool = False,
    timeout: float = NODE_TIMEOUT,
    context: Context | None = None,
) -> SimulationResult:
    """Run a federation over ``grid`` and write its outputs to ``config.out``.

    Args:
        grid: Flower's connection to the nodes (simulation engine or SuperLink).
        config: the run's settings, validated.
        resume: continue from ``config.out``'s checkpoint instead of round 0.
        timeout: seconds to wait for the nodes to connect, and for each round's replies.
        context: the run's Flower context (needed by secure aggregation's workflow).
    """
    out = Path(config.out)
    check_out_folder(out, resume)
    bench = build_workbench(config)
    roster = query_partitions(grid, config.clients, timeout)
    partitions = roster.partitions
    client_ranks = rank_plan = None
    if roster.ranks:  # nodes chose their ranks from their memory budgets
        planned = assign_ranks(config.ranks, config.clients, config.seed)
        client_ranks, rank_plan = roster.client_ranks(planned), roster.rank_plan(planned)
    checkpoint = load_checkpoint(out) if resume else None
    fed, result, server = start_run(config, bench, checkpoint, client_ranks, rank_plan)
    last_round_end = time.perf_counter()
    start = last_round_end - result.wall_seconds  # a resumed run's clock goes on

    def on_round(outcome: RoundOutcome) -> None:
        nonlocal last_round_end
        record = close_round(fed, result, outcome, time.perf_counter() - last_round_end, out)
        if record is not None:
            log.info(format_round(config.method, record))
        result.wall_seconds = time.perf_counter() - start
        write_progress(result, out)
        last_round_end = time.perf_counter()

    remaining = config.rounds - server.round
    if config.secure_aggregation:
        if context is None:
            raise ConfigError("secure_aggregation: the Flower server needs the run's context")
        secure = SecurePrefixStrategy(fed.plan, fed.rules, server, partitions, on_round)
        if remaining > 0:
            largest = max(len(rows) for rows in fed.plan.client_rows)
            run_secure_rounds(
                grid, context, secure, remaining, largest, config.secure_range, timeout
            )
        final = secure.server
    else:
        strategy = PrefixNestedStrategy(fed.plan, fed.rules, server, partitions, on_round)
        if remaining > 0:
            strategy.start(
                grid, to_arrays(server.global_state), num_rounds=remaining, timeout=timeout
            )
        final = strategy.server
    calibration = calibrated = None
    served = fed.method.served(final.global_state)
    if calibrates(fed) and result.final:
        nodes = {p: n for n, p in partitions.items()}
        calibration = calibration_round(grid, fed, served, nodes, timeout)
        calibrated = evaluate_calibration(
            fed, calibration.state, result.head_inputs, result.examples
        )
    finish_run(result, served, start, calibrated, calibration)
    write_outputs(result, out)
    return result


def make_server_app(config: SimulationConfig | None = None, resume: bool = False) -> ServerApp:
    """A ServerApp for ``config``, or for each run's run config when None (``flwr run``)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if config is not None:
            run_server(grid, config, resume, context=context)
        else:
            settings, resumed = config_from_run_config(context.run_config)
            run_server(grid, settings, resumed, context=context)

    return app


app = make_server_app()
