"""The Flower apps give the in-process simulation's adapter and metrics, and survive bad nodes.

These run Flower's simulation engine (Ray) on the tiny model: about 20 s each.
"""

import json
import math

import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.simulation import run_simulation as run_flower_simulation

from prelort.errors import ConfigError
from prelort.flower.client_app import federation_for, make_client_app, partition_of
from prelort.flower.codec import decode_reply, encode_reply
from prelort.flower.server_app import make_server_app
from prelort.flower.strategy import PARTITION_QUERY
from prelort.io import load_adapter
from prelort.simulation import run_simulation
from tests_helpers import tiny

BACKEND = {"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2}}


def flower_run(server_config, client_app: ClientApp) -> None:
    run_flower_simulation(
        make_server_app(server_config),
        client_app,
        num_supernodes=server_config.clients,
        backend_config=BACKEND,
    )


@pytest.mark.parametrize(
    ("method", "wire", "calibration"),
    [
        ("prelort", "float32", "lda"),
        ("hetlora", "float32", "none"),
        ("rblora", "float32", "none"),  # a rule that reads the federation's ranks and sizes
        ("prelort-window", "float32", "none"),  # ranks that move round by round from the assigned
        ("prelort", "bfloat16", "none"),
    ],
)
def test_flower_simulation_equals_the_in_process_simulation(
    method, wire, calibration, tiny_bert_dir, topic_jsonl, tmp_path
):
    config = tiny(
        tiny_bert_dir,
        topic_jsonl,
        tmp_path / "flower",
        method=method,
        partition="dirichlet",
        wire_dtype=wire,
        calibration=calibration,
    )
    flower_run(config, make_client_app(config))
    reference = run_simulation(config.replace(out=str(tmp_path / "sim")), progress=False)

    state, _ = load_adapter(config.out / "adapter.safetensors")
    assert state.keys() == reference.global_state.keys()
    for key, value in reference.global_state.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=1e-6)
    metrics = json.loads((config.out / "metrics.json").read_text())
    assert metrics["final"]["tiers"] == reference.final  # with the calibration round's accuracy
    assert all("calibrated_accuracy" in m for m in reference.final.values()) == (
        calibration == "lda"
    )
    examples = json.loads((config.out / "examples.json").read_text())["tiers"]
    assert examples == reference.examples  # per example, the calibrated heads' scores included
    assert [t["ranks"] for t in metrics["traffic"]] == [t["ranks"] for t in reference.traffic]
    assert metrics["client_ranks"] == reference.client_ranks
    assert (config.out / "checkpoint.safetensors").is_file()


def test_a_failing_node_and_a_poisoned_reply_are_logged_and_left_out(
    tiny_bert_dir, topic_jsonl, tmp_path
):
    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "flower", rounds=1)
    app = ClientApp()

    @app.train()
    def train(message: Message, context) -> Message:
        from prelort.flower.codec import decode_prefix

        partition = partition_of(context)
        if partition == 1:
            raise RuntimeError("out of memory")
        prefix, client, round_index = decode_prefix(message.content)
        reply = federation_for(config).train_client(prefix, client, round_index)
        if partition == 2:
            next(v for k, v in reply.state.items() if k.endswith("lora_b"))[0, 0] = math.nan
        return Message(encode_reply(reply), reply_to=message)

    @app.query(PARTITION_QUERY)
    def partition(message: Message, context) -> Message:
        record = ConfigRecord({"partition-id": partition_of(context)})
        return Message(RecordDict({PARTITION_QUERY: record}), reply_to=message)

    flower_run(config, app)

    metrics = json.loads((config.out / "metrics.json").read_text())
    traffic = metrics["traffic"][0]
    assert traffic["clients"] == 1 and traffic["ranks"] == [1]
    reasons = {r["client"]: r["reason"] for r in traffic["rejected"]}
    assert "failed" in reasons[1] and "NaN" in reasons[2]
    state, _ = load_adapter(config.out / "adapter.safetensors")
    assert all(torch.isfinite(v).all() for v in state.values())


def test_a_reply_round_trips_exactly_and_a_malformed_one_is_refused():
    from prelort.errors import AdapterError
    from prelort.federation import ClientReply

    state = {"m.lora_a": torch.randn(2, 3), "m.lora_b": torch.randn(4, 2)[:, :2]}
    reply = ClientReply(3, state, 2, 17, 0.25, 0.5)
    back = decode_reply(encode_reply(reply))
    assert (back.client_id, back.rank, back.num_examples, back.loss, back.tail_ratio) == (
        3,
        2,
        17,
        0.25,
        0.5,
    )
    for key, value in state.items():
        assert torch.equal(back.state[key], value)
    with pytest.raises(AdapterError, match="without"):
        decode_reply(RecordDict())


def _flower_processes() -> int:
    import subprocess

    found = subprocess.run(["pgrep", "-f", "flower-super|flwr-"], capture_output=True, text=True)
    return len(found.stdout.split())


def _wait_for_no_flower_processes(before: int, seconds: float = 20.0) -> int:
    import time

    deadline = time.monotonic() + seconds
    while _flower_processes() > before and time.monotonic() < deadline:
        time.sleep(0.5)
    return _flower_processes()


def _tiny_flags(model_dir, task, out, rounds: int, calibration: str = "none") -> list[str]:
    """The command line of ``tiny``'s settings."""
    return [
        *("--method", "prelort", "--calibration", calibration),
        *("--model", str(model_dir), "--task", str(task), "--ranks", "1,2,4", "--clients", "3"),
        *("--rounds", str(rounds), "--local-steps", "3", "--batch-size", "8", "--lr", "0.005"),
        *("--eval-examples", "24", "--generate-examples", "6", "--max-new-tokens", "4"),
        *("--partition", "iid", "--max-length", "32", "--out", str(out)),
    ]


def test_prelort_flower_runs_three_nodes_over_the_network_like_the_simulation(
    tiny_bert_dir, topic_jsonl, tmp_path, monkeypatch
):
    """Three SuperNodes over gRPC, with the calibration round, and each node choosing its rank
    from its memory budget (`--client-memory`, the `memory-gb` node config), give the in-process
    simulation's adapter and metrics.

    The nodes read a measurement cache written here (1, 2 and 4 GB for ranks 1, 2 and 4), so
    their budgets choose three different ranks; measuring is `test_plan_ranks_and_client_memory`'s.
    """
    import subprocess
    import sys

    from prelort.budgets import RankMemory, measurement_key
    from prelort.io import write_json

    cache = tmp_path / "cache"
    monkeypatch.setenv("PRELORT_CACHE", str(cache))
    gb = 2**30
    table = RankMemory({1: gb, 2: 2 * gb, 4: 4 * gb}, "cpu", "written by the test")
    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "sim", calibration="lda")
    write_json(cache / "rank-memory" / f"{measurement_key(config)}.json", table.to_json())
    budgets = "1.5GB,3GB,100GB"

    before = _flower_processes()
    out = tmp_path / "deployed"
    command = [sys.executable, "-m", "prelort.cli", "flower", "--nodes", "3"]
    done = subprocess.run(
        command
        + _tiny_flags(tiny_bert_dir, topic_jsonl, out, rounds=2, calibration="lda")
        + ["--client-memory", budgets],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "final metrics of the global adapter" in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["client_ranks"] == [1, 2, 4]  # each node's own choice from its budget
    plan = metrics["rank_plan"]
    assert plan["source"].startswith("node memory budgets")
    assert plan["client_budget_bytes"] == [int(1.5 * gb), 3 * gb, 100 * gb]
    reference = run_simulation(config.replace(client_memory=budgets), progress=False)
    assert reference.client_ranks == [1, 2, 4]
    assert all("calibrated_accuracy" in m for m in reference.final.values())
    state, _ = load_adapter(out / "adapter.safetensors")
    for key, value in reference.global_state.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=1e-6)
    assert metrics["final"]["tiers"] == reference.final
    assert sorted(p.name for p in (out / "flower-logs").iterdir())[:2] == [
        "superlink.log",
        "supernode-0.log",
    ]
    assert _wait_for_no_flower_processes(before) == before  # it stopped all it started


def test_a_terminated_deployment_stops_every_process_it_started(
    tiny_bert_dir, topic_jsonl, tmp_path
):
    import signal
    import subprocess
    import sys
    import time

    before = _flower_processes()
    out = tmp_path / "stopped"
    command = [sys.executable, "-m", "prelort.cli", "flower"]
    process = subprocess.Popen(
        command + _tiny_flags(tiny_bert_dir, topic_jsonl, out, rounds=500),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not (out / "metrics.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.5)  # the first round is in: the whole deployment is up
    assert (out / "metrics.json").is_file()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) != 0
    assert _wait_for_no_flower_processes(before) == before


def test_fewer_nodes_than_clients_is_refused_before_anything_starts(
    tiny_bert_dir, topic_jsonl, tmp_path
):
    import subprocess
    import sys

    out = tmp_path / "refused"
    done = subprocess.run(
        [sys.executable, "-m", "prelort.cli", "flower", "--nodes", "2"]
        + _tiny_flags(tiny_bert_dir, topic_jsonl, out, rounds=1),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "nodes: 2 nodes cannot hold 3 clients" in done.stderr
    assert not out.exists()  # a refused run leaves nothing on disk


def test_the_flower_server_resumes_from_its_checkpoint(tiny_bert_dir, topic_jsonl, tmp_path):
    two_rounds = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "flower", rounds=2)
    first = two_rounds.replace(rounds=1)
    flower_run(first, make_client_app(first))
    run_flower_simulation(
        make_server_app(two_rounds, resume=True),
        make_client_app(two_rounds),
        num_supernodes=two_rounds.clients,
        backend_config=BACKEND,
    )
    reference = run_simulation(two_rounds.replace(out=str(tmp_path / "sim")), progress=False)
    state, _ = load_adapter(two_rounds.out / "adapter.safetensors")
    for key, value in reference.global_state.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=1e-6)
    metrics = json.loads((two_rounds.out / "metrics.json").read_text())
    assert [t["round"] for t in metrics["traffic"]] == [1, 2]


def test_secagg_plus_gives_the_plain_rule_within_its_quantisation(
    tiny_bert_dir, topic_jsonl, tmp_path
):
    config = tiny(
        tiny_bert_dir,
        topic_jsonl,
        tmp_path / "flower",
        partition="dirichlet",
        secure_aggregation=True,
    )
    flower_run(config, make_client_app(config))
    plain = config.replace(out=str(tmp_path / "sim"), secure_aggregation=False)
    reference = run_simulation(plain, progress=False)

    state, _ = load_adapter(config.out / "adapter.safetensors")
    assert state.keys() == reference.global_state.keys()
    worst = max((state[k] - v).abs().max().item() for k, v in reference.global_state.items())
    # SecAgg+ quantises each weighted number to 2 x 4.0 / 2^22 ~ 2e-6 (stochastic rounding)
    assert 0 < worst < 1e-4
    metrics = json.loads((config.out / "metrics.json").read_text())
    traffic = metrics["traffic"]
    assert [t["ranks"] for t in traffic] == [t["ranks"] for t in reference.traffic]
    assert all(t["rejected"] == [] for t in traffic)
    assert traffic[0]["bytes_up"] > reference.traffic[0]["bytes_up"]  # padded 64-bit integers


def test_calibration_statistics_round_trip_and_malformed_ones_are_refused():
    from prelort.aggregation.lda import ClassStatistics
    from prelort.errors import AdapterError
    from prelort.flower.codec import decode_statistics, encode_statistics

    stats = ClassStatistics.of(torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 1]), 3)
    content = encode_statistics(5, {1: stats, 2: stats})
    client, parts = decode_statistics(content, [1, 2], classes=3, width=4)
    assert client == 5 and torch.equal(parts[2].scatter, stats.scatter)
    with pytest.raises(AdapterError, match="without"):
        decode_statistics(content, [1, 2, 4], classes=3, width=4)
    with pytest.raises(AdapterError, match="shape"):
        decode_statistics(content, [1], classes=3, width=5)
    negative = ClassStatistics(torch.tensor([1.0, -1.0, 0.0]), stats.sums, stats.scatter)
    content = encode_statistics(5, {1: negative})
    with pytest.raises(AdapterError, match="negative"):
        decode_statistics(content, [1], classes=3, width=4)


def test_node_hardware_spreads_gpus_and_budgets():
    from prelort.flower.deploy import node_hardware
    from prelort.flower.strategy import Roster

    config = tiny("m", "t.jsonl", "o", client_memory="1GB,2GB")
    nodes = node_hardware(config, 4, 0.0)
    assert [n["node_config"] for n in nodes] == [
        {"memory-gb": 1.0}, {"memory-gb": 2.0}, {"memory-gb": 1.0}, {"memory-gb": 1.0}
    ]  # fmt: skip
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="gpus_per_node"):
            node_hardware(config, 2, 0.5)
    with pytest.raises(ConfigError, match="gpus_per_node"):
        node_hardware(config, 2, 1.5)
    roster = Roster({7: 0, 8: 1, 9: 2}, ranks={1: 8}, budgets={1: 2**33})
    assert roster.client_ranks([2, 4, 16]) == [2, 8, 16]
    assert roster.rank_plan([2, 4, 16])["client_budget_bytes"] == [None, 2**33, None]


def test_the_server_app_refuses_a_finished_run_and_a_resume_with_nothing_to_resume(
    tiny_bert_dir, topic_jsonl, tmp_path
):
    """`flwr run .` reaches the ServerApp without the CLI's checks: it makes them itself."""
    from prelort.flower.server_app import run_server

    config = tiny(tiny_bert_dir, topic_jsonl, tmp_path / "run")
    with pytest.raises(ConfigError, match="resume: no checkpoint.safetensors"):
        run_server(None, config, resume=True)  # before any node is asked
    config.out.mkdir()
    (config.out / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a run"):
        run_server(None, config, resume=False)
    assert (config.out / "metrics.json").read_text() == "{}"
