"""Whole ``prelort simulate`` runs as child processes: their peak memory and wall time."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from prelort.models import minilm_path
from prelort.runtime.outputs import read_metrics

# The child prints its own peak resident memory (VmHWM) last. os.wait4's ru_maxrss would be wrong:
# Linux folds the parent's high-water mark into it at exec (a large benchmark parent read as 4 GB).
CHILD = """
import sys
from prelort.cli import main
code = main()
with open("/proc/self/status") as status:
    peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
print(f"VmHWM-kB {peak}")
sys.exit(code)
"""
PRELORT = [sys.executable, "-c", CHILD]


@dataclass(frozen=True)
class ChildRun:
    """One finished run: peak resident memory (MB), wall seconds, and its metrics.json."""

    peak_mb: float
    seconds: float
    metrics: dict


def simulate(flags: Sequence[str], out: Path) -> ChildRun:
    """Run ``prelort simulate FLAGS --out OUT`` in a fresh process and measure it.

    The child reports its own peak RSS (``VmHWM`` of ``/proc/self/status``, Linux), so neither
    earlier runs nor this process count.

    Raises:
        RuntimeError: the run failed (its output is in the message).
    """
    command = [*PRELORT, "simulate", *flags, "--out", str(out), "--overwrite", "--quiet"]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = child.stdout.read() if child.stdout else b""
    code = child.wait()
    seconds = time.perf_counter() - start
    text = output.decode(errors="replace")
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{text[-3000:]}")
    peak_kb = next(
        int(line.split()[1]) for line in reversed(text.splitlines()) if line.startswith("VmHWM-kB")
    )
    metrics = read_metrics(out / "metrics.json")
    return ChildRun(peak_kb / 1024, seconds, metrics)


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
