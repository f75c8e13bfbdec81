"""Fault injection: each fault of docs/RELIABILITY.md, tried, with its expected outcome asserted."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

from prelort.adapters.peft_io import read_peft_adapter
from prelort.aggregation.validation import update_problem
from prelort.errors import AdapterError
from prelort.io import load_adapter
from prelort.runtime.checkpoint import load_checkpoint
from prelort.runtime.status import run_status
from prelort.simulation import run_simulation

IN, OUT, R = 4, 3, 4
GLOBAL = {"m.lora_a": torch.zeros(R, IN), "m.lora_b": torch.zeros(OUT, R), "head": torch.zeros(2)}


def same_tensors(a, b) -> bool:
    """Bitwise equality of two states."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def good(rank=2):
    return {
        "m.lora_a": torch.ones(rank, IN),
        "m.lora_b": torch.ones(OUT, rank),
        "head": torch.ones(2),
    }


@pytest.mark.parametrize(
    ("mutate", "rank", "reason"),
    [
        (lambda s: s["m.lora_a"].__setitem__((0, 0), float("nan")), 2, "NaN or Inf"),
        (lambda s: s["m.lora_b"].__setitem__((0, 0), float("inf")), 2, "NaN or Inf"),
        (lambda s: s.__setitem__("m.lora_a", torch.ones(3, IN)), 2, "shape"),
        (lambda s: None, 8, "outside"),
        (lambda s: None, 3, "not one of the ranks"),
        (lambda s: s.pop("head"), 2, "keys differ"),
        (lambda s: s.__setitem__("evil", torch.ones(1)), 2, "keys differ"),
        (lambda s: s.__setitem__("head", torch.ones(2, dtype=torch.int64)), 2, "dtype"),
        (lambda s: s["m.lora_b"].mul_(1e6), 2, "above the bound"),
    ],
)
def test_bad_updates_are_named(mutate, rank, reason):
    state = good(min(rank, R) if reason != "shape" else 2)
    if reason in ("outside",):
        state = good(2)
    mutate(state)
    problem = update_problem(state, rank, GLOBAL, allowed_ranks={1, 2, 4}, max_norm=100.0)
    assert problem is not None and reason in problem


def test_good_update_passes():
    assert update_problem(good(2), 2, GLOBAL, allowed_ranks={2, 4}, max_norm=1e3) is None


def test_nan_client_is_rejected_and_round_proceeds(
    tiny_bert_dir, topic_jsonl, tmp_path, caplog, monkeypatch
):
    from prelort.federation import client as client_module
    from tests_helpers import tiny

    real = client_module.train_local
    calls = {"n": 0}

    def poisoned(adapted, *args, **kwargs):
        result = real(adapted, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] % 3 == 2:  # every third client comes back with a NaN in its adapter
            with torch.no_grad():
                next(iter(adapted.layers.values())).lora_b[0, 0] = float("nan")
        return result

    monkeypatch.setattr(client_module, "train_local", poisoned)
    with caplog.at_level(logging.WARNING):
        result = run_simulation(tiny(tiny_bert_dir, topic_jsonl, tmp_path), progress=False)
    assert any(
        "rejected the update of client" in r.message and "NaN" in r.message for r in caplog.records
    )
    assert sum(len(t["rejected"]) for t in result.traffic) >= 1
    assert all(torch.isfinite(v).all() for v in result.global_state.values())


def test_all_rejected_leaves_global_unchanged(tiny_bert_dir, topic_jsonl, tmp_path, caplog):
    from tests_helpers import tiny

    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path, max_update_norm=1e-12, rounds=1)
    with caplog.at_level(logging.WARNING):
        result = run_simulation(config, progress=False)
    assert any("no valid update" in r.message for r in caplog.records)
    fresh = run_simulation(
        config.replace(rounds=1, local_steps=1, max_update_norm=1e-12), progress=False
    )
    assert same_tensors(result.global_state, fresh.global_state)
    assert len(result.traffic[0]["rejected"]) == 3


def test_client_failures_do_not_stop_the_run(tiny_bert_dir, topic_jsonl, tmp_path):
    from tests_helpers import tiny

    result = run_simulation(
        tiny(tiny_bert_dir, topic_jsonl, tmp_path, client_failure_rate=0.5, rounds=4),
        progress=False,
    )
    dropped = sum(len(t["dropped"]) for t in result.traffic)
    assert 0 < dropped < 12 and set(result.final) == {"1", "2", "4"}


def test_corrupted_files_are_named(tmp_path):
    path = tmp_path / "adapter.safetensors"
    save_file({"m.lora_a": torch.ones(2, 3), "m.lora_b": torch.ones(3, 2)}, str(path))
    path.write_bytes(path.read_bytes()[:-7])  # truncated
    with pytest.raises(AdapterError, match="adapter.safetensors"):
        load_adapter(path)
    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2})
    )
    save_file(
        {
            "x.lora_A.weight": torch.ones(2, 3, dtype=torch.int32).float().int(),
            "x.lora_B.weight": torch.ones(3, 2),
        },
        str(peft / "adapter_model.safetensors"),
    )
    with pytest.raises(AdapterError, match="not a float"):
        read_peft_adapter(peft)
    (peft / "adapter_config.json").write_text("{broken")
    with pytest.raises(AdapterError, match="adapter_config.json: not valid JSON"):
        read_peft_adapter(peft)


def _simulate_cmd(model_dir, task, out, rounds):
    return [
        sys.executable,
        "-m",
        "prelort.cli",
        "simulate",
        "--quiet",
        "--model",
        str(model_dir),
        "--task",
        str(task),
        "--ranks",
        "1,2,4",
        "--clients",
        "3",
        "--rounds",
        str(rounds),
        "--local-steps",
        "3",
        "--batch-size",
        "8",
        "--lr",
        "0.005",
        "--eval-examples",
        "24",
        "--partition",
        "iid",
        "--max-length",
        "32",
        "--out",
        str(out),
    ]


def test_sigkill_then_resume_equals_uninterrupted_run(tiny_bert_dir, topic_jsonl, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: float sums in a fixed order
    full = tmp_path / "full"
    subprocess.run(
        _simulate_cmd(tiny_bert_dir, topic_jsonl, full, 5),
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )

    crashed = tmp_path / "crashed"
    proc = subprocess.Popen(
        _simulate_cmd(tiny_bert_dir, topic_jsonl, crashed, 5),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        ckpt = crashed / "checkpoint.safetensors"
        if ckpt.exists():
            try:
                if load_checkpoint(crashed).round >= 2:
                    break
            except Exception:  # a reader may race the rename on some filesystems
                pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(crashed).round
    assert killed_at >= 2, "the run never reached round 2"
    killed = run_status(crashed)
    assert (killed.round, killed.rounds) == (killed_at, 5) and killed.state != "finished"
    done = subprocess.run(
        [sys.executable, "-m", "prelort.cli", "simulate", "--quiet", "--resume", str(crashed)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert run_status(crashed).state == "finished"
    a, _ = load_adapter(full / "adapter.safetensors")
    b, _ = load_adapter(crashed / "adapter.safetensors")
    assert same_tensors(a, b), "resumed adapter differs from the uninterrupted one"
    ma = json.loads((full / "metrics.json").read_text())
    mb = json.loads((crashed / "metrics.json").read_text())
    assert ma["final"] == mb["final"]
    assert [r["tiers"] for r in ma["rounds"]] == [r["tiers"] for r in mb["rounds"]]


def test_a_finished_run_extended_by_more_rounds_equals_the_longer_run(
    tiny_bert_dir, topic_jsonl, tmp_path
):
    """`simulate --resume OUT --rounds 4` continues a finished 2-round run to 4 rounds; the
    evaluation cadence may change on the way without changing what is trained."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    longer, short = tmp_path / "longer", tmp_path / "short"
    run = {"env": env, "capture_output": True, "text": True, "timeout": 600}
    subprocess.run(_simulate_cmd(tiny_bert_dir, topic_jsonl, longer, 4), check=True, **run)
    subprocess.run(_simulate_cmd(tiny_bert_dir, topic_jsonl, short, 2), check=True, **run)
    resume = [sys.executable, "-m", "prelort.cli", "simulate", "--quiet", "--resume", str(short)]
    fewer = subprocess.run([*resume, "--rounds", "1"], **run)
    assert fewer.returncode == 2 and "has already run 2 rounds" in fewer.stderr
    other = subprocess.run([*resume, "--lr", "0.1"], **run)
    assert other.returncode == 2 and "no other setting than --rounds" in other.stderr
    short_seconds = json.loads((short / "metrics.json").read_text())["wall_seconds"]
    original, before = topic_jsonl.read_bytes(), (short / "checkpoint.safetensors").read_bytes()
    topic_jsonl.write_bytes(original + original[: original.index(b"\n") + 1])  # one more row
    changed = subprocess.run([*resume, "--rounds", "4"], **run)
    assert changed.returncode == 2 and "changed since the run started" in changed.stderr
    assert len(changed.stderr.strip().splitlines()) == 1  # one line, no traceback
    assert (short / "checkpoint.safetensors").read_bytes() == before  # nothing written
    topic_jsonl.write_bytes(original)
    done = subprocess.run([*resume, "--rounds", "4", "--eval-every", "4"], **run)
    assert done.returncode == 0, done.stderr[-2000:]
    a, _ = load_adapter(longer / "adapter.safetensors")
    b, _ = load_adapter(short / "adapter.safetensors")
    assert same_tensors(a, b), "the extended run differs from the 4-round run"
    metrics = json.loads((short / "metrics.json").read_text())
    assert metrics["config"]["rounds"] == 4 and metrics["config"]["eval_every"] == 4
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 4]  # round 3 not evaluated
    assert metrics["wall_seconds"] > short_seconds  # the whole run's time, not the last leg's
    longer_metrics = json.loads((longer / "metrics.json").read_text())
    assert metrics["final"] == longer_metrics["final"]


def test_a_cosine_run_cannot_be_extended_by_more_rounds(tiny_bert_dir, topic_jsonl, tmp_path):
    """A cosine step is laid out over the run's rounds: more rounds would change the step of the
    rounds already run, so the resumed run would not be the uninterrupted one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "cosine"
    run = {"env": env, "capture_output": True, "text": True, "timeout": 600}
    cmd = [*_simulate_cmd(tiny_bert_dir, topic_jsonl, out, 1), "--lr-schedule", "cosine"]
    subprocess.run(cmd, check=True, **run)
    before = (out / "checkpoint.safetensors").read_bytes()
    resume = [sys.executable, "-m", "prelort.cli", "simulate", "--quiet", "--resume", str(out)]
    longer = subprocess.run([*resume, "--rounds", "2"], **run)
    assert longer.returncode == 2 and "decays its step over 1 rounds" in longer.stderr
    assert (out / "checkpoint.safetensors").read_bytes() == before
