"""The packaged SmolLM2's cache: converted once, never taken from under a process loading it."""

from __future__ import annotations

import threading
from pathlib import Path

from prelort.io import make_staging_dir
from prelort.models import _complete, _move_into_place


def converted(parent: Path, mark: str) -> Path:
    """A staging folder as a conversion leaves it, its weights file saying who wrote it."""
    staging = make_staging_dir(parent, ".convert-")
    (staging / "config.json").write_text("{}")
    (staging / "model.safetensors").write_text(mark)
    return staging


def test_the_first_conversion_is_renamed_into_place(tmp_path):
    target = tmp_path / "model"
    _move_into_place(converted(tmp_path, "mine"), target)
    assert (target / "model.safetensors").read_text() == "mine"


def test_a_complete_cache_that_appeared_meanwhile_is_kept(tmp_path):
    target = tmp_path / "model"
    _move_into_place(converted(tmp_path, "first"), target)
    late = converted(tmp_path, "second")
    _move_into_place(late, target)
    assert (target / "model.safetensors").read_text() == "first"
    assert late.exists()  # left to the caller, which removes its staging folder


def test_an_incomplete_cache_is_replaced(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("{}")  # an interrupted copy: no weights
    _move_into_place(converted(tmp_path, "whole"), target)
    assert (target / "model.safetensors").read_text() == "whole"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".stale-")] == []


def test_concurrent_conversions_never_hide_the_cache_from_a_reader(tmp_path):
    """The race a first `prelort compare --jobs 2` met: one worker's conversion deleted the
    cache another worker had just put in place and was loading."""
    target = tmp_path / "model"
    stagings = [converted(tmp_path, f"worker {i}") for i in range(8)]
    start, seen_complete, vanished = threading.Barrier(len(stagings) + 1), [], []
    done = threading.Event()

    def reader() -> None:
        start.wait()
        while True:
            # one look after the writers are done too: on a loaded machine they may all finish
            # before this thread is first scheduled, and the cache must be there then as well
            last = done.is_set()
            complete = _complete(target)
            if seen_complete and not complete:
                vanished.append(True)
            if complete:
                seen_complete.append(True)
            if last:
                return

    def writer(staging: Path) -> None:
        start.wait()
        _move_into_place(staging, target)

    threads = [threading.Thread(target=reader)]
    threads += [threading.Thread(target=writer, args=(s,)) for s in stagings[1:]]
    for thread in threads:
        thread.start()
    writer(stagings[0])
    for thread in threads[1:]:
        thread.join()
    done.set()
    threads[0].join()
    assert _complete(target) and seen_complete and not vanished
