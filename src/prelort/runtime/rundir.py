"""Output folders: never overwrite a finished or crashed run by accident, fail before training.

A folder that already holds a run (its metrics, adapter, checkpoint or a comparison's summary) is
refused unless the user says ``--overwrite``, as HF Trainer and Lightning users expect; with it,
the earlier run's own files are removed first so no stale plot survives. Writability is checked
before any model is loaded, so an unusable path costs no training.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prelort.errors import ConfigError

RUN_FILES = (
    "metrics.json",
    "metrics.csv",
    "adapter.safetensors",
    "checkpoint.safetensors",
    "samples.json",
)
COMPARE_FILES = ("summary.md", "summary.csv", "summary.json", "costs.csv")
RUN_PLOTS = ("*.png",)


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds a run or a comparison of ours."""
    if not folder.is_dir():
        return False
    names = RUN_FILES + COMPARE_FILES
    return any((folder / n).exists() for n in names) or any(
        (sub / "metrics.json").exists() for sub in folder.glob("*-seed*")
    )


def clear_run(folder: Path) -> None:
    """Remove our files from ``folder`` (runs, comparison summaries, plots); keep anything else."""
    for name in RUN_FILES + COMPARE_FILES:
        (folder / name).unlink(missing_ok=True)
    for pattern in RUN_PLOTS:
        for plot in folder.glob(pattern):
            plot.unlink()
    for sub in folder.glob("*-seed*"):
        ours = (sub / "metrics.json").exists() or (sub / "checkpoint.safetensors").exists()
        if sub.is_dir() and ours:
            shutil.rmtree(sub)


@contextmanager
def claimed_run_dir(folder: Path, overwrite: bool, resume: bool = False) -> Iterator[Path]:
    """``prepare_run_dir``, and if the command then fails, remove ``folder`` again when this call
    created it and nothing was written: a refused input leaves no trace on disk."""
    created = not folder.exists()
    prepare_run_dir(folder, overwrite, resume)
    try:
        yield folder
    except BaseException:
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise


def prepare_run_dir(folder: Path, overwrite: bool, resume: bool = False) -> None:
    """Make ``folder`` ready for a new run (or, with ``resume``, for continuing the one it holds).

    Raises:
        ConfigError: it holds a run and ``overwrite`` is False; or it cannot be created or written.
    """
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"out: {folder} exists and is not a folder")
    if holds_run(folder) and not resume:
        if not overwrite:
            raise ConfigError(
                f"out: {folder} already holds a run; give another --out, --overwrite to replace it, "
                "or --resume OUT to continue it"
            )
        clear_run(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ConfigError(f"out: cannot write to {folder} ({e.strerror})") from None
