"""Where runs stand (``prelort status``): round reached, pace, time left, last evaluation.

A long federation runs for hours, often in the background with ``--quiet``; its folder already says
how far it got. The checkpoint's metadata holds the rounds completed and the wall time so far (over
every leg of a resumed run), metrics.json the settings and the evaluations, and the checkpoint's
modification time when the last round ended. Only the safetensors header is read, never the tensors,
so this is cheap on a 7B model's checkpoint and safe beside the process that writes it (every file
is replaced atomically).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prelort.errors import DataError
from prelort.io import read_adapter_metadata
from prelort.runtime.checkpoint import CHECKPOINT_NAME
from prelort.runtime.outputs import final_tiers, read_metrics

# A run whose last round ended this many of its own rounds ago is flagged: killed, or stuck.
STALLED_AFTER_ROUNDS = 3.0


@dataclass(frozen=True)
class RunStatus:
    """One run folder's progress.

    ``state`` is ``finished`` (final metrics written), ``running`` (a round ended within
    ``STALLED_AFTER_ROUNDS`` of its mean pace), ``stalled`` (none since: killed or stuck; resume it
    with ``prelort simulate --resume``), ``in progress`` (rounds done, but a checkpoint too old to
    record its wall time: no pace to judge by) or ``started`` (settings written, no round completed).
    ``seconds_per_round`` is the mean over the rounds so far, evaluations included;
    ``eta_seconds`` the rounds left at that pace (None when finished or unknown).
    ``last_evaluation`` is the latest evaluated round's metrics per tier.
    """

    run: str
    method: str
    seed: int | None
    round: int
    rounds: int
    state: str
    seconds_per_round: float | None
    eta_seconds: float | None
    idle_seconds: float | None
    evaluated_round: int | None
    last_evaluation: dict[str, dict[str, float]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def find_runs(paths: Sequence[Path]) -> list[Path]:
    """Every run folder (one holding metrics.json or a checkpoint) at or under ``paths``, sorted.

    Raises:
        DataError: a path that does not exist, or paths that hold no run at all.
    """
    found: set[Path] = set()
    for path in paths:
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
        if path.is_file():  # a run's metrics.json or checkpoint given directly
            path = path.parent
        for name in ("metrics.json", CHECKPOINT_NAME):
            found.update(p.parent for p in path.rglob(name))  # the folder itself included
    if not found:
        where = ", ".join(str(p) for p in paths)
        raise DataError(f"no run (a folder with metrics.json or {CHECKPOINT_NAME}) under {where}")
    return sorted(found)


def run_status(run_dir: Path, now: float | None = None) -> RunStatus:
    """The progress of the run in ``run_dir`` at time ``now`` (seconds since the epoch).

    Raises:
        DataError: an unreadable metrics.json.
        AdapterError: an unreadable checkpoint.
    """
    now = time.time() if now is None else now
    metrics_path, checkpoint_path = run_dir / "metrics.json", run_dir / CHECKPOINT_NAME
    metrics = read_metrics(metrics_path) if metrics_path.is_file() else {}
    meta = read_adapter_metadata(checkpoint_path) if checkpoint_path.is_file() else {}
    config = meta.get("config") or metrics.get("config")
    if not isinstance(config, dict):
        raise DataError(f"{run_dir}: neither metrics.json nor {CHECKPOINT_NAME} holds the settings")
    total = int(config["rounds"])
    history = meta.get("rounds") if meta else metrics.get("rounds", [])
    last = history[-1] if history else None
    done = int(meta.get("round", 0))
    wall = float(meta.get("wall_seconds") or 0.0)
    idle = now - checkpoint_path.stat().st_mtime if meta else None
    finished = bool(final_tiers(metrics))
    if finished:
        done = total
        wall = float(metrics.get("wall_seconds") or wall)
    pace = wall / done if done and wall > 0 else None
    if finished:
        state = "finished"
    elif done == 0:
        state = "started"
    elif pace is None or idle is None:  # a checkpoint older than its wall time: no pace to judge by
        state = "in progress"
    else:
        state = "stalled" if idle > STALLED_AFTER_ROUNDS * pace else "running"
    eta = (total - done) * pace if pace is not None and not finished else None
    return RunStatus(
        run=str(run_dir),
        method=str(config.get("method", "?")),
        seed=config.get("seed"),
        round=done,
        rounds=total,
        state=state,
        seconds_per_round=pace,
        eta_seconds=eta,
        idle_seconds=idle,
        evaluated_round=None if last is None else int(last["round"]),
        last_evaluation={} if last is None else dict(last["tiers"]),
    )


def statuses(paths: Sequence[Path], now: float | None = None) -> list[RunStatus]:
    """``run_status`` of every run under ``paths`` (``find_runs``); an unreadable run raises."""
    return [run_status(run, now) for run in find_runs(paths)]


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}" if minutes >= 60 else f"{minutes}m"


def _evaluation(status: RunStatus) -> str:
    """The latest evaluation's first metric per tier: ``r30 perplexity 15.3 / 15.2 / 15.3``."""
    if not status.last_evaluation:
        return "-"
    tiers = sorted(status.last_evaluation, key=int)
    metric = next(iter(status.last_evaluation[tiers[0]]), None)
    if metric is None:
        return "-"
    values = [status.last_evaluation[t].get(metric) for t in tiers]
    shown = " / ".join("-" if v is None else f"{v:.4g}" for v in values)
    return f"r{status.evaluated_round} {metric} {shown} (ranks {'/'.join(tiers)})"


def format_statuses(found: Iterable[RunStatus], common: Path | None = None) -> str:
    """A plain-text table, one run per line, paths relative to ``common`` where given."""
    rows = [("run", "method", "seed", "round", "state", "s/round", "left", "last round", "latest")]
    for s in found:
        name = s.run
        if common is not None and Path(s.run).is_relative_to(common):
            name = str(Path(s.run).relative_to(common))
        rows.append(
            (
                name,
                s.method,
                "-" if s.seed is None else str(s.seed),
                f"{s.round}/{s.rounds}",
                s.state,
                "-" if s.seconds_per_round is None else f"{s.seconds_per_round:.0f}",
                _duration(s.eta_seconds),
                "-"
                if s.state == "finished" or s.idle_seconds is None
                else f"{_duration(s.idle_seconds)} ago",
                _evaluation(s),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    )
