"""The Flower ClientApp: a node's partition and rank come from the plan; it runs the client step.

The node reads its partition from ``node_config["partition-id"]`` (set by Flower's simulation
engine, or by ``flower-supernode --node-config 'partition-id=K num-partitions=N'``), loads the
task and model once per process, and answers each train message with the client step that the
in-process simulation runs.
"""

from __future__ import annotations

from functools import lru_cache

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from prelort.config import SimulationConfig
from prelort.errors import AdapterError
from prelort.flower.calibration import CALIBRATION_QUERY, statistics_reply
from prelort.flower.codec import decode_prefix, encode_reply
from prelort.flower.secure import secure_aggregation_mod, secure_reply
from prelort.flower.settings import config_from_run_config
from prelort.flower.strategy import PARTITION_QUERY
from prelort.simulation.federation import Federation, prepare_federation
from prelort.simulation.workbench import build_workbench


@lru_cache(maxsize=1)
def federation_for(config: SimulationConfig) -> Federation:
    """The task, model and plan of a run, built once per process and run config."""
    return prepare_federation(config, build_workbench(config))


def partition_of(context: Context) -> int:
    if "partition-id" not in context.node_config:
        raise AdapterError("this node has no partition-id in its node config")
    return int(context.node_config["partition-id"])


def make_client_app(config: SimulationConfig | None = None) -> ClientApp:
    """A ClientApp for ``config``, or for each run's run config when None (``flwr run``)."""
    app = ClientApp(mods=[secure_aggregation_mod])

    @app.train()
    def train(message: Message, context: Context) -> Message:
        fed = federation_for(config or config_from_run_config(context.run_config)[0])
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
        fed = federation_for(config or config_from_run_config(context.run_config)[0])
        return statistics_reply(fed, message, partition_of(context))

    @app.query(PARTITION_QUERY)
    def partition(message: Message, context: Context) -> Message:
        record = ConfigRecord({"partition-id": partition_of(context)})
        return Message(RecordDict({PARTITION_QUERY: record}), reply_to=message)

    return app


app = make_client_app()
