"""The worker processes of ``prelort compare --jobs``."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
