"""The runs of a comparison, one after another in this process or side by side in workers.

On a CPU one run of a small model uses a second core poorly (two threads make a MiniLM step 1.7x
faster, not 2x); independent runs, each with its share of the threads, keep every core busy. Each
worker loads its own workbench and writes its run's folder as a run in turn does, so the outputs
are the same files; the numbers agree up to the float rounding that another thread count gives.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from prelort.config import SimulationConfig
from prelort.runtime.outputs import format_round, write_outputs, write_progress
from prelort.runtime.result import SimulationResult
from prelort.runtime.workbench import Workbench, build_workbench, workbench_key
from prelort.simulation.run import run_simulation

log = logging.getLogger(__name__)

# (label, seed, config) of one run of a comparison.
Run = tuple[str, int, SimulationConfig]


def run_written(
    config: SimulationConfig, bench: Workbench, bar: bool, lines_as: str | None = None
) -> SimulationResult:
    """One run, its folder written after every round and at the end.

    Args:
        bar: show the run's progress bar and per-round lines.
        lines_as: instead of a bar, print each evaluated round once, prefixed with this name.
    """
    printed: set[int] = set()

    def on_round(result: SimulationResult) -> None:  # called after every round, evaluated or not
        write_progress(result, config.out)
        if lines_as and result.rounds and result.rounds[-1]["round"] not in printed:
            printed.add(result.rounds[-1]["round"])
            print(format_round(lines_as, result.rounds[-1]), flush=True)

    result = run_simulation(config, bench, bar, on_round=on_round, checkpoint_dir=config.out)
    write_outputs(result, config.out)
    return result


def run_in_turn(runs: Sequence[Run], progress: bool) -> Iterator[tuple[str, int, SimulationResult]]:
    """The runs one after another in this process, reusing the workbench while its key holds."""
    bench: Workbench | None = None
    for label, seed, config in runs:
        if bench is None or bench.key != workbench_key(config):
            bench = build_workbench(config)
        yield label, seed, run_written(config, bench, progress)


def threads_per_job(jobs: int) -> int:
    """The threads each of ``jobs`` workers gets: the cores shared out, at least one."""
    return max(1, (os.cpu_count() or 1) // jobs)


def _exit_with_parent(parent: int, every: float = 1.0) -> None:
    """End this worker once its parent is gone (its parent id changes when it is re-parented).

    A comparison killed with SIGTERM or SIGKILL cannot shut its pool down, and its workers would
    otherwise train their federations to the end for nobody, holding the cores.
    """
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


def _start_worker(threads: int, parent: int) -> None:
    import torch

    from prelort.logs import quiet_libraries

    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    torch.set_num_threads(threads)
    quiet_libraries()


def _run_in_worker(label: str, seed: int, config: SimulationConfig, progress: bool):
    lines_as = f"{label} seed {seed}" if progress else None
    return run_written(config, build_workbench(config), False, lines_as)


def run_in_processes(
    runs: Sequence[Run], jobs: int, progress: bool = True
) -> Iterator[tuple[str, int, SimulationResult]]:
    """Run each of ``runs`` in one of ``jobs`` worker processes; yield them as they finish.

    A bar per run would interleave, so with ``progress`` each worker prints one line per
    evaluated round, prefixed with its run.

    Raises:
        Whatever a run raised, once the runs under way have finished (their folders are
        written); the runs not started are cancelled, and the failure is logged at once.
    """
    context = multiprocessing.get_context("spawn")  # a forked torch can deadlock in OpenMP
    with ProcessPoolExecutor(
        jobs,
        mp_context=context,
        initializer=_start_worker,
        initargs=(threads_per_job(jobs), os.getpid()),
    ) as pool:
        pending = {
            pool.submit(_run_in_worker, label, seed, config, progress): (label, seed)
            for label, seed, config in runs
        }
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                label, seed = pending.pop(future)
                error = future.exception()
                if error is not None:
                    # said at once: the runs under way may take an hour before the error is raised
                    under_way = [
                        f"{lbl} seed {s}" for f, (lbl, s) in pending.items() if f.running()
                    ]
                    log.error(
                        "%s seed %d failed: %s; %s, the other %d cancelled",
                        label,
                        seed,
                        error,
                        f"waiting for the runs under way ({', '.join(under_way)})"
                        if under_way
                        else "no run is under way",
                        len(pending) - len(under_way),
                    )
                    pool.shutdown(cancel_futures=True)
                    raise error
                yield label, seed, future.result()
