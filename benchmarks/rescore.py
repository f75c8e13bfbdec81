"""Re-score finished runs' adapters: re-ordered once (the paper's rule served in SVD order) or as they are.

    python -m benchmarks.rescore RUN [RUN ...] --out FOLDER [--split fixed-a|balanced|unit-a|as-is] [--eval-dtype D] [--held-out]

``prelort-ordered-a`` re-factorises the global adapter in singular-value order after *every* round, so
the next round trains from the ordered factors. Re-ordering only the *final* adapter keeps the paper's
training untouched (its rank-R product, and so its top tier, exactly) and makes every lower tier the best
approximation of that product. For each finished run (a ``<method>-seed<S>`` folder) this scores the
re-ordered adapter at every tier on the run's own test examples and writes
``FOLDER/<method>-ordered-once-seed<S>/`` (metrics.json, examples.json), so that ``prelort summarize``
compares it, example by example, with the runs it sits beside (docs/RESULTS.md section 12).

``--split as-is`` scores the adapter unchanged, and ``--eval-dtype`` overrides the scoring precision: a
run scored under one ``eval_dtype`` re-scored under another, so that ``prelort summarize`` can set it beside
runs scored so (its training, and so its adapter, untouched). ``--tiers 2,4,8`` scores at tiers other than the
run's own ladder: a federation whose every client trained rank 8, cut to ranks 2 and 4.
``--eval-examples N`` scores on N test examples instead of the run's (a number at least the split's size
takes it whole, and the record states the count): finished runs re-scored on more of the test split, so
that their paired intervals narrow without training again. ``--held-out`` scores on the test examples the
run's own evaluation never saw (neither its scored sample nor its generation prompts): where a setting such
as the step was chosen by the run's own test scores, these are examples the choice has not seen. With
``--split as-is``, a run that ended with a calibration round is re-scored with its calibrated heads too
(``calibrated_accuracy``). The record keeps
the run's training time as ``wall_seconds`` (a summary's cost column) and the re-scoring's as
``rescored.seconds``.

For a classifier head the trained head was fitted to the unordered tiers' features, so its accuracy
understates the re-ordered tiers: read ``readout_accuracy`` (a readout refitted on each tier's
features, reported here as in every run) or calibrate the folder (``prelort calibrate``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from prelort.aggregation.ordered import SPLITS, svd_ordered
from prelort.config import AUTOCAST_DTYPE_CHOICES, config_from_mapping
from prelort.errors import ConfigError
from prelort.evaluation.tiers import EvalInputs, ReadoutData, evaluate_tiers
from prelort.io import load_adapter, write_json
from prelort.runtime.calibrate import evaluate_calibration, record_calibrated
from prelort.runtime.federation import prepare_federation
from prelort.runtime.outputs import CALIBRATED_NAME, EXAMPLES_NAME, read_metrics
from prelort.runtime.workbench import build_workbench


def rescore_run(
    run: Path,
    out: Path,
    split: str,
    eval_dtype: str | None = None,
    tiers: list[int] | None = None,
    eval_examples: int | None = None,
    held_out: bool = False,
) -> dict:
    """Re-order ``run``'s final adapter (``split``; ``as-is``: unchanged), score each of ``tiers``
    (default: the run's ladder) under ``eval_dtype`` and on ``eval_examples`` test examples if given
    (``held_out``: on the test examples the run never scored), write ``out``; returns the tiers'
    metrics.

    Raises:
        ConfigError: a tier above the adapter's rank; ``held_out`` with ``eval_examples``, or with a
            run that scored its whole test split.
    """
    if held_out and eval_examples is not None:
        raise ConfigError("held-out: it picks its own test examples; leave out eval-examples")
    metrics = read_metrics(run / "metrics.json")
    config = config_from_mapping(metrics["config"])
    source_eval_examples = config.eval_examples
    if eval_dtype is not None:
        config = config.replace(eval_dtype=eval_dtype)
        metrics["config"] = {**metrics["config"], "eval_dtype": eval_dtype}
    if eval_examples is not None:
        config = config.replace(eval_examples=eval_examples)
    state, _ = load_adapter(run / "adapter.safetensors")
    ladder = config.ranks.ladder if tiers is None else sorted(set(tiers))
    if ladder[-1] > config.resolved_max_rank or ladder[0] < 1:
        raise ConfigError(
            f"tiers: {ladder} must lie in 1..{config.resolved_max_rank} (the adapter's rank)"
        )
    bench = build_workbench(config, held_out=held_out)
    if eval_examples is not None or held_out:
        metrics["config"] = {**metrics["config"], "eval_examples": len(bench.test)}
    calibrated_path = run / CALIBRATED_NAME
    # the calibrated heads were fitted to the unordered tiers' features: they score only those
    fed = None
    if split == "as-is" and calibrated_path.is_file():
        # before the scoring: preparing a federation gives the model a fresh adapter
        fed = prepare_federation(config, bench)
    readout = None
    if bench.readout_rows:
        readout = ReadoutData(bench.train, bench.readout_rows, bench.task.num_labels)
    start = time.perf_counter()
    inputs = EvalInputs(
        bench.test,
        bench.tokenizer,
        generation=bench.generation,
        max_new_tokens=config.max_new_tokens,
        readout=readout,
    )
    evaluation = evaluate_tiers(
        bench.adapted,
        state if split == "as-is" else svd_ordered(state, split),
        ladder,
        bench.objective,
        inputs,
    )
    scores = evaluation.metrics
    if fed is not None:
        heads, _ = load_adapter(calibrated_path)
        calibrated = evaluate_calibration(
            fed, heads, evaluation.head_inputs, evaluation.per_example
        )
        record_calibrated(scores, calibrated)
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "metrics.json",
        {
            **metrics,
            "final": {"tiers": scores},
            # only the final adapter was re-scored: the source's earlier rounds are its own tiers,
            # and kept here they drew the source's curve under the re-scored method's name
            "rounds": [{**metrics["rounds"][-1], "tiers": scores}] if metrics["rounds"] else [],
            # wall_seconds stays the source's: the adapter's cost is its training, which summaries
            # show as the method's cost; the re-scoring's own time is recorded beside the source
            "rescored": {
                "source": str(run),
                "split": split,
                "eval_dtype": eval_dtype,
                "held_out": held_out,
                # which rows were held out follows from the source's sample, which the config
                # above no longer states (it states how many were scored)
                **({"source_eval_examples": source_eval_examples} if held_out else {}),
                "seconds": round(time.perf_counter() - start, 2),
            },
        },
    )
    write_json(out / EXAMPLES_NAME, {"tiers": evaluation.per_example})
    return scores


def parse_tiers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"tiers: {text!r} is not a comma-separated list of ranks"
        ) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="finished <method>-seed<S> run folders")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--split", default="fixed-a", choices=[*SPLITS, "as-is"])
    parser.add_argument("--eval-dtype", choices=AUTOCAST_DTYPE_CHOICES)
    parser.add_argument(
        "--eval-examples",
        type=int,
        help="test examples to score (default: the run's; at least the split's size: all of it)",
    )
    parser.add_argument(
        "--held-out",
        action="store_true",
        help="score on the test examples the run never scored (a step chosen on its own scores)",
    )
    parser.add_argument(
        "--tiers",
        type=parse_tiers,
        help="comma-separated ranks to score (default: the run's ladder)",
    )
    args = parser.parse_args(argv)
    for run in args.runs:
        method, _, seed = run.resolve().name.rpartition("-seed")
        suffix = "" if args.split == "as-is" else "-ordered-once"
        target = args.out / f"{method}{suffix}-seed{seed}"
        tiers = rescore_run(
            run, target, args.split, args.eval_dtype, args.tiers, args.eval_examples, args.held_out
        )
        shown = "  ".join(
            f"r{t}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()) for t, m in tiers.items()
        )
        print(f"{target}: {shown}", flush=True)


if __name__ == "__main__":
    main()
