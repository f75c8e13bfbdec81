"""Whole ``prelort simulate`` runs as child processes: their peak memory and wall time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from prelort.models import minilm_path

PRELORT = [sys.executable, "-c", "import sys; from prelort.cli import main; sys.exit(main())"]


@dataclass(frozen=True)
class ChildRun:
    """One finished run: peak resident memory (MB), wall seconds, and its metrics.json."""

    peak_mb: float
    seconds: float
    metrics: dict


def simulate(flags: Sequence[str], out: Path) -> ChildRun:
    """Run ``prelort simulate FLAGS --out OUT`` in a fresh process and measure it.

    ``os.wait4`` gives this child's own resource usage, so earlier runs do not count.

    Raises:
        RuntimeError: the run failed (its output is in the message).
    """
    command = [*PRELORT, "simulate", *flags, "--out", str(out), "--overwrite", "--quiet"]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = child.stdout.read() if child.stdout else b""
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{output.decode()[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return ChildRun(usage.ru_maxrss / 1024, seconds, metrics)  # ru_maxrss is in KiB on Linux


def tiny_model(folder: Path, labels: int = 5) -> Path:
    """A 2-layer random BERT with MiniLM's tokenizer, saved like any local model."""
    if (folder / "config.json").is_file():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=labels,
    )
    BertForSequenceClassification(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
