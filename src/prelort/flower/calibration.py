"""The calibration round on Flower: nodes send class statistics per tier; the server fits heads.

After the last training round the server sends every node the rank-R global adapter in a query
message; the node runs forward passes only over its own partition at every tier and answers with
its class counts, per-class feature sums and scatter (``prelort.runtime.calibrate``); the server
sums them per tier and fits each tier's LDA head, as ``prelort simulate --calibration lda`` does
in-process. A node that fails or sends malformed statistics is logged and left out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from prelort.adapters.state import AdapterState
from prelort.aggregation.lda import ClassStatistics
from prelort.errors import AdapterError
from prelort.evaluation.readout import head_module
from prelort.flower.codec import (
    ADAPTER,
    SETTINGS,
    decode_statistics,
    encode_statistics,
    from_arrays,
    to_arrays,
)
from prelort.runtime.calibrate import Calibration, client_statistics, fit_calibration
from prelort.runtime.federation import Federation

log = logging.getLogger("flwr.prelort")

CALIBRATION_QUERY = "calibrate"


def calibration_round(
    grid: Grid,
    fed: Federation,
    global_state: AdapterState,
    nodes: Mapping[int, int],
    timeout: float,
) -> Calibration:
    """Ask every client's node for its statistics at every tier and fit each tier's head.

    Args:
        nodes: partition (client) id -> node id.

    Raises:
        ConfigError: a tier no node sent statistics for (every node failed).
    """
    ladder = list(fed.config.ranks.ladder)
    sent = to_arrays(global_state)
    asks = [
        Message(
            RecordDict({ADAPTER: sent, SETTINGS: ConfigRecord({"client": client})}),
            node,
            f"{MessageType.QUERY}.{CALIBRATION_QUERY}",
        )
        for client, node in sorted(nodes.items())
    ]
    classes, width = fed.bench.task.num_labels, head_module(fed.bench.adapted).in_features
    per_tier: dict[int, list[ClassStatistics]] = {t: [] for t in ladder}
    received: dict[int, dict[int, ClassStatistics]] = {}
    for reply in grid.send_and_receive(asks, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            log.warning("calibration: node %d failed: %s; left out", node, reply.error.reason)
            continue
        try:
            client, parts = decode_statistics(reply.content, ladder, classes, width)
        except AdapterError as error:
            log.warning("calibration: node %d: %s; left out", node, error)
            continue
        if nodes.get(client) != node or client in received:
            log.warning("calibration: node %d answered for client %d; left out", node, client)
            continue
        received[client] = parts
    for client in sorted(received):  # sums in client order, whatever the arrival order
        for tier, stats in received[client].items():
            per_tier[tier].append(stats)
    log.info("calibration: statistics from %d of %d clients", len(received), len(nodes))
    return fit_calibration(fed, global_state, per_tier)


def statistics_reply(fed: Federation, message: Message, partition: int) -> Message:
    """A node's answer to the calibration query: its statistics at every tier.

    Raises:
        AdapterError: a query for another partition, or without the adapter.
    """
    try:
        client = int(message.content.config_records[SETTINGS]["client"])
        global_state = from_arrays(message.content.array_records[ADAPTER])
    except KeyError as missing:
        raise AdapterError(f"a calibration query without {missing}") from None
    if client != partition:
        raise AdapterError(f"a calibration query for client {client} reached {partition}")
    per_tier = client_statistics(fed, global_state, client, list(fed.config.ranks.ladder))
    return Message(encode_statistics(client, per_tier), reply_to=message)
