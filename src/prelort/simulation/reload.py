"""A comparison rebuilt from its runs' folders (``prelort summarize``), pooled across folders.

A run's folder keeps its records (metrics.json: settings, curves, traffic; examples.json: each test
example's final score), so a comparison's tables and paired intervals come back from them alone,
without the adapters: from a ``prelort compare`` folder, several pooled, or results/'s kept records.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Sequence
from pathlib import Path

from prelort.aggregation import methods as registered_methods
from prelort.config import SimulationConfig, config_from_mapping
from prelort.errors import ConfigError, DataError
from prelort.runtime.outputs import final_tiers, read_metrics
from prelort.runtime.result import SimulationResult
from prelort.simulation.compare import Comparison

log = logging.getLogger(__name__)


# Settings that may differ between the runs of one comparison: what it varies, and the evaluation
# cadence (final metrics do not depend on it).
VARIED_SETTINGS = ("method", "seed", "out", "head", "nested", "head_lr", "eval_every")
# Settings that change nothing while another setting has the given value: runs may differ in them then.
INERT_WHEN = {"calibration_examples": ("calibration", "none")}
# A run written by an earlier version lacks the settings added since: it ran with their defaults.
SETTING_DEFAULTS = {
    f.name: f.default
    for f in dataclasses.fields(SimulationConfig)
    if f.default is not dataclasses.MISSING
}


def _inert(key: str, *configs: dict) -> bool:
    """Whether ``key`` changed nothing in any of ``configs`` (``INERT_WHEN``)."""
    if key not in INERT_WHEN:
        return False
    switch, value = INERT_WHEN[key]
    return all(c.get(switch, SETTING_DEFAULTS.get(switch)) == value for c in configs)


def load_comparison(
    out_dir: Path,
    *more: Path,
    vary: Sequence[str] = (),
    seeds: Collection[int] | None = None,
) -> Comparison:
    """Rebuild a comparison from the ``<label>-seed<S>/metrics.json`` folders of a compare run, or
    of several pooled (``more``): e.g. a reference re-run later beside a comparison, into its own
    folder. Pooled runs must share every setting a comparison holds fixed, as one folder's do,
    except those named in ``vary`` (a sweep: a method re-run at another learning rate, say). A run
    whose value of a varied setting differs from the first run's is labelled
    ``<label>[<setting>=<value>]``, so it stands as its own row beside the others. ``seeds``
    keeps those seeds' runs only (one seed's paired differences beside the pooled ones).

    Unfinished runs (no final metrics yet) are left out and named in ``Comparison.unfinished``.

    Raises:
        ConfigError: a name in ``vary`` that is no setting, or one a comparison varies anyway.
        DataError: no finished run in any folder, an unreadable metrics file, runs whose task or
            settings differ (the message names the setting and the two runs), the same run
            (label and seed) in two folders, or a seed of ``seeds`` that no run has.
    """
    check_varied(vary)
    folders, pooled = [out_dir, *more], bool(more)
    for folder in folders:
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder; give the --out folder of prelort compare")
    runs: dict[tuple[str, int], SimulationResult] = {}
    run_dirs: dict[tuple[str, int], Path] = {}
    unfinished: list[str] = []
    present: set[int] = set()  # every run folder's seed, before ``seeds`` keeps some
    config, first = None, None
    for path in [p for folder in folders for p in sorted(folder.glob("*-seed*/metrics.json"))]:
        method, _, seed = path.parent.name.rpartition("-seed")
        if not seed.isdigit():  # a copy beside the runs (prelort-seed0-old), not a run of ours
            log.warning("%s: not a run folder (<method>-seed<S>); left out", path.parent)
            continue
        present.add(int(seed))
        if seeds is not None and int(seed) not in seeds:
            continue
        data = read_metrics(path)
        name = _run_name(path.parent, pooled)
        if not final_tiers(data):
            unfinished.append(name)
            continue
        if config is None:
            config, first = data["config"], name
        swept = []
        for key in sorted(set(config) | set(data["config"])):
            default = SETTING_DEFAULTS.get(key)
            ours, theirs = config.get(key, default), data["config"].get(key, default)
            if key in VARIED_SETTINGS or ours == theirs or _inert(key, config, data["config"]):
                continue
            if key in vary:
                swept.append(f"{key}={theirs}")
                continue
            where = "pooled folders" if pooled else out_dir
            raise DataError(
                f"{where}: runs differ in {key}: {ours!r} in {first}, "
                f"{theirs!r} in {name}; summarize one setting at a time"
            )
        if swept:
            method = f"{method}[{','.join(swept)}]"
        key = (method, int(seed))
        if key in run_dirs:
            raise DataError(
                f"{method} seed {seed} is in two of the pooled folders ({run_dirs[key]} and "
                f"{path.parent}); pool each run once"
            )
        runs[key] = SimulationResult(
            data["config"],
            data["client_ranks"],
            data["client_examples"],
            data["rounds"],
            final_tiers(data),
            {},
            data.get("traffic", []),
            data.get("wall_seconds", 0.0),
        )
        run_dirs[key] = path.parent
    found = sorted({s for _, s in runs})
    missing = sorted(set(seeds or ()) - set(found))
    if missing:
        raise DataError(
            f"seeds: no finished run of seed {', '.join(map(str, missing))}; "
            f"the folders hold seeds {', '.join(map(str, sorted(present)))}"
        )
    if config is None:
        where = " or ".join(str(f) for f in folders)
        raise DataError(f"no finished run (<method>-seed<S>/metrics.json) under {where}")
    order = list(registered_methods())
    method_of = {label: run.config["method"] for (label, _), run in runs.items()}
    methods = sorted(
        method_of,
        key=lambda m: (order.index(method_of[m]) if method_of[m] in order else len(order), m),
    )
    base = config_from_mapping({**config, "out": str(out_dir)})
    return Comparison(base, methods, found, runs, unfinished, run_dirs)


def check_varied(vary: Sequence[str]) -> None:
    """Refuse a ``vary`` name that is no setting of a run, or one every comparison varies anyway.

    Raises:
        ConfigError: naming ``vary`` and the offending names.
    """
    settings = {f.name for f in dataclasses.fields(SimulationConfig)}
    unknown = sorted(set(vary) - settings)
    if unknown:
        raise ConfigError(
            f"vary: {', '.join(unknown)} is no setting of a run (e.g. lr, local_steps, rounds)"
        )
    fixed = sorted(set(vary) & set(VARIED_SETTINGS))
    if fixed:
        raise ConfigError(f"vary: runs may differ in {', '.join(fixed)} anyway; leave it out")


def _run_name(run_dir: Path, pooled: bool) -> str:
    """A run as messages name it: its folder, with the compare folder's name where pooled."""
    return f"{run_dir.parent.name}/{run_dir.name}" if pooled else run_dir.name
