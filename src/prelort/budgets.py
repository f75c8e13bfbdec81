"""Ranks from memory budgets: measure what one client step needs at each rank, then fit budgets.

A client's rank follows from its hardware. ``measure_rank_memory`` runs one local training step
at every rank of the ladder, with the run's model, batch size, length, dtype, quantization,
checkpointing and nested mode, on the longest examples of the task, and records the peak:

- on CUDA, the allocator's peak of reserved memory (``max_memory_reserved``, what the allocator
  took from the device; the CUDA context itself is not counted);
- on the CPU, the peak resident set (``VmHWM``), so that the figure is what a client process
  needs, interpreter and libraries included.

Each rank is measured in a fresh child process that loads the model and takes the step, so that
no earlier model, rank or cache inflates a figure.

Measurements are cached by the settings that change them, so a simulation with
``client_memory`` and each Flower node measure once per machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from prelort.config import BudgetSpec, SimulationConfig, config_from_mapping, parse_budgets
from prelort.device import resolve_device
from prelort.errors import ConfigError, PrelortError
from prelort.io import write_json

GB = 2**30
# Settings that change one step's memory (beside the workbench's own: model, length, rank...).
STEP_FIELDS = ("batch_size", "method", "nested", "optimizer", "head")


@dataclass(frozen=True)
class RankMemory:
    """Peak training memory of one client step at each rank.

    Attributes:
        peak_bytes: rank -> peak bytes of one step.
        device: the device type measured ("cuda" or "cpu").
        how: what the figure is (the allocator's reserved peak, or a child's VmHWM).
    """

    peak_bytes: dict[int, int]
    device: str
    how: str

    def largest_fitting(self, budget: int) -> int | None:
        """The largest measured rank whose peak is within ``budget`` bytes (None: none fits)."""
        fitting = [r for r, peak in self.peak_bytes.items() if peak <= budget]
        return max(fitting) if fitting else None

    def to_json(self) -> dict:
        return {
            "device": self.device,
            "how": self.how,
            "peak_bytes": {str(r): b for r, b in sorted(self.peak_bytes.items())},
        }


def longest_rows(lengths: Sequence[int], count: int) -> list[int]:
    """The ``count`` longest examples: batches pad to their longest row, so these are the peak."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return order[-count:]


def one_step_peak(config: SimulationConfig, rank: int) -> int:
    """Build the run's model and take one client step at ``rank``; the peak bytes it needed.

    On CUDA the allocator's reserved peak; on the CPU this process's ``VmHWM``, which never goes
    down: run it in a fresh process (``child_peak``).
    """
    from prelort.adapters.state import set_state, slice_to_rank
    from prelort.runtime.federation import prepare_federation
    from prelort.runtime.workbench import build_workbench
    from prelort.training.local import train_local

    device = resolve_device(config.device)
    bench = build_workbench(config)
    fed = prepare_federation(config, bench)
    train = bench.train
    lengths = [
        len(train.input_ids[i]) + (len(train.target_ids[i]) if train.target_ids else 0)
        for i in range(len(train))
    ]
    rows = longest_rows(lengths, config.batch_size)
    set_state(bench.adapted, slice_to_rank(fed.initial.global_state, rank))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    step = dataclasses.replace(fed.train_config, steps=1)
    train_local(
        bench.adapted,
        train,
        rows,
        bench.batch_kind,
        bench.tokenizer.pad_token_id,
        rank,
        config.ranks.ladder,
        step,
        torch.Generator().manual_seed(config.seed),
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_reserved(device))
    return process_peak_bytes()


def process_peak_bytes() -> int:
    """This process's peak resident set (``VmHWM``), in bytes.

    Raises:
        PrelortError: the platform has no ``/proc/self/status`` (not Linux).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    raise PrelortError("plan-ranks: measuring CPU memory needs Linux's /proc/self/status")


def child_peak(config: SimulationConfig, rank: int) -> int:
    """``one_step_peak`` in a fresh Python process.

    Raises:
        PrelortError: the child failed; its last lines of output are in the message.
    """
    settings = json.dumps(config.to_dict())
    done = subprocess.run(
        [sys.executable, "-m", "prelort.budgets", settings, str(rank)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise PrelortError(f"plan-ranks: measuring rank {rank} failed:\n{tail}")
    return int(done.stdout.strip().splitlines()[-1])


def measurement_key(config: SimulationConfig) -> str:
    """A hash of every setting that changes a step's memory, and of the device measured."""
    from prelort.runtime.workbench import resolved_value, workbench_key

    parts = [repr(workbench_key(config)), str(resolve_device(config.device))]
    # resolved values: a Flower node's settings spell out what a simulation's leave to default
    parts += [repr(resolved_value(config, name)) for name in STEP_FIELDS]
    parts += [repr(config.ranks.ladder), torch.__version__]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def measure_rank_memory(
    config: SimulationConfig,
    ranks: Sequence[int] | None = None,
    cache: Path | None = None,
    progress: bool = False,
) -> RankMemory:
    """The peak memory of one client step at each of ``ranks`` (default: the ladder).

    Args:
        config: the run's settings (model, task, batch size, length, dtype, quantization...).
        ranks: the ranks to measure.
        cache: a folder of earlier measurements; a hit skips the measuring.
        progress: print a line per measured rank.

    Raises:
        ConfigError, ModelError, DataError: the run's settings cannot be built.
        PrelortError: a measurement failed.
    """
    config = config.replace(client_memory=None)
    ranks = sorted(set(ranks or config.ranks.ladder))
    device = resolve_device(config.device)
    how = (
        "CUDA allocator peak (reserved) during one step"
        if device.type == "cuda"
        else "peak resident memory (VmHWM) of a process that loads the model and takes one step"
    )
    path = None if cache is None else cache / f"{measurement_key(config)}.json"
    known: dict[int, int] = {}
    if path is not None and path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        known = {int(r): int(b) for r, b in saved.get("peak_bytes", {}).items()}
    for rank in ranks:
        if rank in known:
            continue
        if rank > config.resolved_max_rank:
            raise ConfigError(f"rank {rank} is above max_rank {config.resolved_max_rank}")
        known[rank] = child_peak(config, rank)
        if progress:
            print(f"  rank {rank:3d}: {known[rank] / GB:.2f} GB", flush=True)
        if path is not None:
            write_json(path, RankMemory(known, device.type, how).to_json())
    return RankMemory({r: known[r] for r in ranks}, device.type, how)


def draw_budgets(spec: BudgetSpec, clients: int, seed: int) -> list[int]:
    """Each client's budget: the list cycled over clients, or drawn with ``seed``."""
    from prelort.federation.plan import per_client

    # seed + 1: a stream apart from the rank draw's, which uses ``seed``
    return per_client(spec.budgets, spec.probabilities, clients, seed + 1)


def ranks_for_budgets(
    budgets: Sequence[int], table: RankMemory, clients: Sequence[int] | None = None
) -> list[int]:
    """The largest rank that fits each budget.

    Args:
        budgets: bytes per client.
        table: the measured peak per rank.
        clients: the client ids of the budgets, for messages (default: 0, 1, ...).

    Raises:
        ConfigError: a budget no rank fits; names the client, its budget and the smallest need.
    """
    smallest = min(table.peak_bytes, key=table.peak_bytes.__getitem__)
    ranks = []
    for client, budget in zip(clients or range(len(budgets)), budgets, strict=True):
        rank = table.largest_fitting(budget)
        if rank is None:
            raise ConfigError(
                f"client_memory: client {client}'s budget of {budget / GB:.2f} GB fits no rank; "
                f"the smallest need is {table.peak_bytes[smallest] / GB:.2f} GB (rank {smallest}, "
                f"{table.device})"
            )
        ranks.append(rank)
    return ranks


def budget_plan(config: SimulationConfig, cache: Path | None) -> dict:
    """Client ranks from ``config.client_memory``, with the budgets and the measured table.

    Returns:
        ``{"client_ranks", "client_budget_bytes", "measured"}`` (metrics.json's ``rank_plan``).
    """
    if config.client_memory is None:
        raise ConfigError("client_memory: not set")
    budgets = draw_budgets(parse_budgets(config.client_memory), config.clients, config.seed)
    table = measure_rank_memory(config, cache=cache)
    return {
        "client_ranks": ranks_for_budgets(budgets, table),
        "client_budget_bytes": budgets,
        "measured": table.to_json(),
    }


def format_table(table: RankMemory, budgets: Sequence[int]) -> str:
    """A Markdown table of the peak per rank, then the largest rank each budget fits."""
    lines = [f"peak memory of one client step ({table.how}, {table.device})", ""]
    lines += ["| rank | peak GB |", "|---|---|"]
    lines += [f"| {r} | {b / GB:.3f} |" for r, b in sorted(table.peak_bytes.items())]
    if budgets:
        lines += ["", "| budget | largest rank that fits |", "|---|---|"]
        for budget in budgets:
            rank = table.largest_fitting(budget)
            lines.append(f"| {budget / GB:g} GB | {'none' if rank is None else rank} |")
    return "\n".join(lines)


def _child_main(argv: Sequence[str]) -> int:
    """``python -m prelort.budgets SETTINGS_JSON RANK``: print one step's peak bytes."""
    settings: Mapping = json.loads(argv[0])
    config = config_from_mapping({k: v for k, v in settings.items() if v is not None})
    logging.basicConfig(level=logging.WARNING)
    print(one_step_peak(config, int(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
