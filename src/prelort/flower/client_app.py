"""The Flower ClientApp: a node's partition comes from its node config; it runs the client step.

The node reads its partition from ``node_config["partition-id"]`` (set by Flower's simulation
engine, or by ``flower-supernode --node-config 'partition-id=K num-partitions=N'``), loads the
task and model once per process, and answers each train message with the client step that the
in-process simulation runs. Two more node-config keys describe the node's hardware:

- ``device``: where it trains (``cuda``, ``cuda:1``, ``cpu``; default: the run's ``device``,
  ``auto`` unless set);
- ``memory-gb``: its memory budget. The node measures one step's peak at each ladder rank on its
  own device (``prelort.budgets``, cached) and tells the server the largest rank that fits, with
  the partition; the server then sends it prefixes of that rank.
"""

from __future__ import annotations

from functools import lru_cache

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from prelort.budgets import measure_rank_memory, ranks_for_budgets
from prelort.config import SimulationConfig, parse_memory
from prelort.errors import AdapterError
from prelort.flower.calibration import CALIBRATION_QUERY, statistics_reply
from prelort.flower.codec import decode_prefix, encode_reply
from prelort.flower.secure import secure_aggregation_mod, secure_reply
from prelort.flower.settings import config_from_run_config
from prelort.flower.strategy import PARTITION_QUERY
from prelort.models import cache_dir
from prelort.runtime.federation import Federation, prepare_federation
from prelort.runtime.workbench import build_workbench


@lru_cache(maxsize=1)
def federation_for(config: SimulationConfig) -> Federation:
    """The task, model and plan of a run, built once per process and run config."""
    return prepare_federation(config, build_workbench(config))


def node_settings(context: Context, config: SimulationConfig | None = None) -> SimulationConfig:
    """The run's settings as this node runs them: on the node's own ``device`` if it names one.

    ``client_memory`` is dropped: ranks are the server's plan (a node trains at the rank of the
    prefix it receives), so a node must not measure every client's budget again.
    """
    settings = config or config_from_run_config(context.run_config)[0]
    device = context.node_config.get("device")
    changes = {"client_memory": None} if settings.client_memory is not None else {}
    if device not in (None, ""):
        changes["device"] = str(device)
    return settings.replace(**changes) if changes else settings


def node_rank(context: Context, config: SimulationConfig, partition: int) -> dict[str, int]:
    """``{"rank", "memory-bytes"}`` from the node's ``memory-gb`` budget, or {} without one.

    Raises:
        ConfigError: a budget that is no size, or that no rank of the ladder fits.
    """
    memory = context.node_config.get("memory-gb")
    if memory in (None, ""):
        return {}
    budget = parse_memory(str(memory), "memory-gb")
    table = measure_rank_memory(config, cache=cache_dir() / "rank-memory")
    rank = ranks_for_budgets([budget], table, clients=[partition])[0]
    return {"rank": rank, "memory-bytes": budget}


def partition_of(context: Context) -> int:
    if "partition-id" not in context.node_config:
        raise AdapterError("this node has no partition-id in its node config")
    return int(context.node_config["partition-id"])


def make_client_app(config: SimulationConfig | None = None) -> ClientApp:
    """A ClientApp for ``config``, or for each run's run config when None (``flwr run``)."""
    app = ClientApp(mods=[secure_aggregation_mod])

    @app.train()
    def train(message: Message, context: Context) -> Message:
        fed = federation_for(node_settings(context, config))
        if fed.config.secure_aggregation:
            bound = fed.config.secure_range
            return secure_reply(message, fed.train_client, fed.initial.global_state, bound)
        prefix, client, round_index = decode_prefix(message.content, fed.config.wire_dtype)
        partition = partition_of(context)
        if client != partition:
            raise AdapterError(f"a message for client {client} reached partition {partition}")
        reply = fed.train_client(prefix, client, round_index)
        return Message(encode_reply(reply, fed.config.wire_dtype), reply_to=message)

    @app.query(CALIBRATION_QUERY)
    def calibrate(message: Message, context: Context) -> Message:
        fed = federation_for(node_settings(context, config))
        return statistics_reply(fed, message, partition_of(context))

    @app.query(PARTITION_QUERY)
    def partition(message: Message, context: Context) -> Message:
        partition = partition_of(context)
        ranked = node_rank(context, node_settings(context, config), partition)
        record = ConfigRecord({"partition-id": partition, **ranked})
        return Message(RecordDict({PARTITION_QUERY: record}), reply_to=message)

    return app


app = make_client_app()
