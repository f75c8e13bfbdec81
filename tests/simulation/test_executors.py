"""The worker processes of ``prelort compare --jobs``."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prelort.errors import ModelError
from prelort.simulation.executors import run_in_processes
from tests_helpers import tiny

PARENT = """
import os, sys
from concurrent.futures import ProcessPoolExecutor
import multiprocessing
from prelort.simulation.executors import _start_worker

if __name__ == "__main__":
    pool = ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
        initargs=(1, os.getpid()),
    )
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(__import__("time").sleep, 600)
    __import__("time").sleep(600)
"""


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_killed_comparison_leaves_no_worker_training(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        worker = int(parent.stdout.readline())
        assert alive(worker)
        os.kill(parent.pid, signal.SIGKILL)  # no chance to shut its pool down
        parent.wait()
        deadline = time.monotonic() + 20
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(worker), "the worker kept running after its parent was killed"
    finally:
        parent.kill()


def test_a_failed_run_is_said_at_once_and_the_rest_cancelled(
    tiny_bert_dir, topic_jsonl, tmp_path, caplog
):
    good = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "good", rounds=1)
    bad = good.replace(model=str(tmp_path / "no-such-model"), out=tmp_path / "bad")
    runs = [("broken", 0, bad), ("fine", 0, good.replace(out=tmp_path / "a"))]
    runs += [("fine", seed, good.replace(out=tmp_path / f"s{seed}")) for seed in (1, 2, 3)]
    with pytest.raises(ModelError, match="no-such-model"):
        for _ in run_in_processes(runs, 2, progress=False):
            pass
    said = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(said) == 1 and said[0].startswith("broken seed 0 failed: model: cannot load")
    assert said[0].endswith("cancelled")  # what still runs and what will not
