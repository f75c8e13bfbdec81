"""The skeleton of a run, the same in every engine: start (or resume), close each round, finish.

The in-process simulation (``prelort.simulation.run``) and the Flower ServerApp
(``prelort.flower.server_app``) differ only in how a round's replies arrive and how the
calibration round gathers its statistics; both call these three steps around that.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from prelort.adapters.state import AdapterState
from prelort.config import SimulationConfig
from prelort.evaluation.tiers import TierMetrics
from prelort.federation.records import RoundRecord
from prelort.federation.server import RoundOutcome, ServerState
from prelort.runtime.calibrate import Calibration, calibrates, record_calibrated
from prelort.runtime.checkpoint import (
    Checkpoint,
    check_schedule_unchanged,
    check_task_unchanged,
)
from prelort.runtime.federation import Federation, prepare_federation, resumed_server
from prelort.runtime.result import SimulationResult
from prelort.runtime.workbench import Workbench


def start_run(
    config: SimulationConfig,
    bench: Workbench,
    resume: Checkpoint | None = None,
    client_ranks: Sequence[int] | None = None,
    rank_plan: dict | None = None,
) -> tuple[Federation, SimulationResult, ServerState]:
    """The run's federation, its result so far, and the server state its first round starts from.

    Args:
        config: the run's settings.
        bench: its task and model.
        resume: a checkpoint to continue from (its history goes into the result).
        client_ranks, rank_plan: ranks the clients chose (``prepare_federation``).

    Raises:
        ConfigError: a task file that changed since ``resume`` was written, a schedule changed
            or a decaying step resumed with other rounds, or a calibration the run's head cannot
            take, before any round runs.
    """
    if resume is not None:
        check_task_unchanged(resume, config.task)
        check_schedule_unchanged(resume, config.lr_schedule, config.rounds)
    fed = prepare_federation(config, bench, client_ranks, rank_plan)
    calibrates(fed)  # refuse an explicit lda the head cannot take, before any training
    result = fed.new_result()
    server = fed.initial if resume is None else resumed_server(resume, result, config.rounds)
    return fed, result, server


def close_round(
    fed: Federation,
    result: SimulationResult,
    outcome: RoundOutcome,
    round_seconds: float,
    checkpoint_dir: Path | None = None,
) -> RoundRecord | None:
    """Evaluate the round's global adapter (on evaluated rounds), record it and checkpoint.

    Returns:
        The round's metric record, or None on a round that was not evaluated.
    """
    evaluation = fed.evaluate(outcome.server)
    tiers = None
    if evaluation is not None:
        # Each evaluation replaces the last one's per-tier details: the run keeps its final's.
        result.samples.update(evaluation.samples)
        result.examples.update(evaluation.per_example)
        result.head_inputs.update(evaluation.head_inputs)
        tiers = evaluation.metrics
    return fed.record(result, outcome, tiers, round_seconds, checkpoint_dir)


def finish_run(
    result: SimulationResult,
    served: AdapterState,
    start: float,
    calibrated: TierMetrics | None = None,
    calibration: Calibration | None = None,
) -> SimulationResult:
    """The result with the final adapter, the calibration round's metrics and the wall time.

    Args:
        served: the adapter the run serves (``Method.served`` of the server's final state).
        start: ``time.perf_counter()`` when the run started (a resumed run: less the wall time
            its checkpoint recorded).
        calibrated: each tier's metrics with its LDA head, if the calibration round ran.
        calibration: that round's heads, kept as ``result.calibrated_state``.
    """
    if calibrated is not None and result.final:
        record_calibrated(result.final, calibrated)
    if calibration is not None:
        result.calibrated_state = calibration.state
    result.global_state = dict(served)
    result.wall_seconds = time.perf_counter() - start
    return result
