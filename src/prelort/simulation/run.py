"""The in-process federation: sample clients, train locally, aggregate, evaluate, record.

Every random choice derives from the config's one seed: the partition, the rank of each client, the
initial adapter, the clients sampled each round, and each client's batches and truncations.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from prelort.config import SimulationConfig
from prelort.runtime.calibrate import calibrated_tiers, calibrates
from prelort.runtime.checkpoint import Checkpoint
from prelort.runtime.outputs import format_round
from prelort.runtime.result import SimulationResult
from prelort.runtime.skeleton import close_round, finish_run, start_run
from prelort.runtime.workbench import Workbench, build_workbench

log = logging.getLogger(__name__)


def run_simulation(
    config: SimulationConfig,
    workbench: Workbench | None = None,
    progress: bool = True,
    on_round: Callable[[SimulationResult], None] | None = None,
    checkpoint_dir: Path | None = None,
    resume: Checkpoint | None = None,
) -> SimulationResult:
    """Run one federation.

    Args:
        config: the run's settings.
        workbench: a loaded task and model to reuse (built from ``config`` if None).
        progress: show a progress bar and one line per evaluated round.
        on_round: called with the partial result after every evaluated round (to save it).
        checkpoint_dir: save the server state there after every round.
        resume: continue from this checkpoint instead of round 0.

    Returns:
        Per-round and final metrics per tier and the final global adapter.

    Raises:
        ConfigError, DataError, ModelError: bad settings, data or model.
    """
    bench = workbench or build_workbench(config)
    fed, result, server = start_run(config, bench, resume)

    start = time.perf_counter() - result.wall_seconds  # a resumed run's clock goes on
    bar = tqdm(
        total=config.rounds * fed.plan.per_round,
        initial=server.round * fed.plan.per_round,
        desc=config.method,
        unit="client",
        disable=not progress,
        dynamic_ncols=True,
    )
    phases = result.phase_seconds = dict.fromkeys(("train", "aggregate", "evaluate"), 0.0)
    for round_index in range(server.round + 1, config.rounds + 1):
        round_start = time.perf_counter()
        draw = fed.plan.draw(round_index)
        replies = []
        for client in draw.sampled:
            bar.update(1)
            if client in draw.lost:
                continue  # the client vanished mid-round: no reply arrives
            reply = fed.train_client(server.prefix(client), client, round_index)
            replies.append(reply)
            # a frozen client (lowest-alone's others) trained nothing and reports NaN
            if not math.isnan(reply.loss):
                bar.set_postfix(round=round_index, loss=f"{reply.loss:.3f}")
        trained = time.perf_counter()
        outcome = fed.server_step(server, draw.sampled, replies)
        server = outcome.server
        aggregated = time.perf_counter()
        record = close_round(
            fed, result, outcome, time.perf_counter() - round_start, checkpoint_dir
        )
        phases["train"] += trained - round_start
        phases["aggregate"] += aggregated - trained
        phases["evaluate"] += time.perf_counter() - aggregated
        if record is not None and progress:
            bar.write(format_round(config.method, record))
        result.wall_seconds = time.perf_counter() - start
        if on_round is not None:
            on_round(result)
    bar.close()
    calibration = calibrated = None
    served = fed.method.served(server.global_state)
    if calibrates(fed) and result.final:
        calibration_start = time.perf_counter()
        calibration, calibrated = calibrated_tiers(
            fed, served, head_inputs=result.head_inputs, per_example=result.examples
        )
        phases["calibrate"] = time.perf_counter() - calibration_start
    return finish_run(result, served, start, calibrated, calibration)
