"""A Flower strategy that sends every node the prefix of its own rank and runs the server step.

Flower's stock strategies send one payload to all nodes, and their array averaging checks keys,
not shapes (a rank-1 ``(1, in)`` array broadcasts silently into an ``(8, in)`` sum), so mixed
ranks never reach them: ``configure_train`` builds one message per node from the federation plan
and ``aggregate_train`` is ``prelort.federation.server_step``, the simulation's own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from prelort.errors import AdapterError
from prelort.federation.client import ClientReply
from prelort.federation.plan import FederationPlan
from prelort.federation.records import Rejection
from prelort.federation.server import RoundOutcome, ServerRules, ServerState, server_step
from prelort.flower.codec import decode_reply, encode_prefix, to_arrays

log = logging.getLogger("flwr.prelort")  # a child of Flower's logger: shown by `flwr run --stream`

PARTITION_QUERY = "partition"


class PlannedRounds:
    """What both strategies keep: the plan, the rules, the server state and who holds what.

    Args:
        plan: partitions, ranks and per-round sampling (the simulation's own).
        rules: the method, its aggregation rule and the reply checks.
        server: the server state to start from (round 0, or a checkpoint's).
        node_partitions: node id -> partition (client) id, from ``query_partitions``.
        on_round: called with each round's outcome (evaluation, records, checkpoints).
    """

    def __init__(
        self,
        plan: FederationPlan,
        rules: ServerRules,
        server: ServerState,
        node_partitions: Mapping[int, int],
        on_round: Callable[[RoundOutcome], None] | None = None,
    ) -> None:
        self.plan, self.rules, self.server = plan, rules, server
        self.node_partitions = dict(node_partitions)
        self.nodes = {p: n for n, p in self.node_partitions.items()}
        self.on_round = on_round
        self._sampled: list[int] = []
        self._sent: set[int] = set()


class PrefixNestedStrategy(PlannedRounds, Strategy):
    """Heterogeneous-rank federated LoRA on Flower's Message API (see ``PlannedRounds``)."""

    def summary(self) -> None:
        log.info(
            "PrefixNestedStrategy: %s, %d partitions on %d nodes, %d per round, ladder %s",
            self.rules.method.name,
            self.plan.clients,
            len(self.nodes),
            self.plan.per_round,
            self.rules.ladder,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One message per sampled node: the prefix of the global adapter at that node's rank.

        ``arrays`` (Flower's single global payload) is ignored: the global adapter is the
        strategy's server state, whose round number (not ``server_round``, which restarts at 1
        after a resume) draws the sample.
        """
        round_index = self.server.round + 1  # Flower counts from 1 also after a resume
        draw = self.plan.draw(round_index)  # lost clients: simulated failures, as in-process
        self._sampled, self._sent = list(draw.sampled), set(draw.reached)
        messages = []
        for client in draw.reached:
            prefix = self.server.prefix(client)
            content = encode_prefix(prefix, client, round_index, self.rules.wire_dtype)
            messages.append(Message(content, self.nodes[client], MessageType.TRAIN))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The server step over the replies that arrived; failed nodes are logged and left out."""
        decoded: list[ClientReply] = []
        failures: list[Rejection] = []
        for message in replies:
            node = message.metadata.src_node_id
            client = self.node_partitions.get(node, -1)
            if message.has_error():
                reason = f"node {node} failed: {message.error.reason}"
                failures.append({"client": client, "reason": reason})
                continue
            try:
                reply = decode_reply(message.content, self.rules.wire_dtype)
            except AdapterError as error:
                failures.append({"client": client, "reason": f"node {node}: {error}"})
                continue
            if reply.client_id != client:
                reason = f"node {node} holds partition {client} but replied as {reply.client_id}"
                failures.append({"client": client, "reason": reason})
                continue
            decoded.append(reply)
        answered = {r.client_id for r in decoded} | {f["client"] for f in failures}
        for client in sorted(self._sent - answered):
            log.warning(
                "round %d: no reply from node %d (partition %d) in time; dropped",
                self.server.round + 1,
                self.nodes[client],
                client,
            )
        for failure in failures:
            log.warning("round %d: client %s: %s", self.server.round + 1, *failure.values())
        decoded.sort(key=lambda r: r.client_id)  # arrival order must not change the float sums
        outcome = server_step(self.server, self._sampled, decoded, self.rules, failures)
        self.server = outcome.server
        if self.on_round is not None:
            self.on_round(outcome)
        metrics = MetricRecord(
            {"train-loss": outcome.train_loss, "clients": outcome.traffic["clients"]}
        )
        return to_arrays(self.server.global_state), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # every tier is evaluated on the server, as in the simulation

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return None


@dataclass(frozen=True)
class Roster:
    """What the nodes said of themselves before round 1.

    Attributes:
        partitions: node id -> the partition (client) it holds.
        ranks: partition -> the rank its node chose from its memory budget (``memory-gb`` in its
            node config); partitions whose node gave no budget are absent.
        budgets: partition -> that node's budget in bytes.
    """

    partitions: dict[int, int]
    ranks: dict[int, int] = field(default_factory=dict)
    budgets: dict[int, int] = field(default_factory=dict)

    def client_ranks(self, planned: Sequence[int]) -> list[int]:
        """The planned rank of every client, replaced by its node's own where it chose one."""
        return [self.ranks.get(client, rank) for client, rank in enumerate(planned)]

    def rank_plan(self, planned: Sequence[int]) -> dict | None:
        """metrics.json's ``rank_plan`` when some node chose its rank (None otherwise)."""
        if not self.ranks:
            return None
        return {
            "source": "node memory budgets (node_config memory-gb)",
            "client_ranks": self.client_ranks(planned),
            "client_budget_bytes": [self.budgets.get(c) for c in range(len(planned))],
        }


def query_partitions(grid: Grid, clients: int, timeout: float) -> Roster:
    """Ask every connected node for its ``partition-id`` (and the rank its memory budget fits);
    wait until ``clients`` have answered.

    Raises:
        RuntimeError: a node that cannot say its partition, two nodes with one partition, or
            fewer than ``clients`` partitions answered within ``timeout`` seconds. A node whose
            partition is no client's (``partition-id >= clients``) is logged and left idle.
    """
    deadline = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < clients and time.monotonic() < deadline:
        time.sleep(1)
    nodes = list(grid.get_node_ids())
    asks = [Message(RecordDict(), n, f"{MessageType.QUERY}.{PARTITION_QUERY}") for n in nodes]
    roster = Roster({})
    for reply in grid.send_and_receive(asks, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            raise RuntimeError(f"node {node} could not say its partition: {reply.error.reason}")
        record = reply.content.config_records[PARTITION_QUERY]
        partition = int(record["partition-id"])
        if not 0 <= partition < clients:
            log.warning(
                "node %d holds partition %d of no client (%d clients); idle",
                *(node, partition, clients),
            )
            continue
        if partition in roster.partitions.values():
            raise RuntimeError(f"two nodes hold partition {partition}")
        roster.partitions[node] = partition
        if "rank" in record:
            roster.ranks[partition] = int(record["rank"])
            roster.budgets[partition] = int(record["memory-bytes"])
            log.info(
                "node %d (partition %d): %.2f GB of memory fits rank %d",
                *(node, partition, roster.budgets[partition] / 2**30, roster.ranks[partition]),
            )
    if len(roster.partitions) < clients:
        raise RuntimeError(
            f"{len(roster.partitions)} of {clients} partitions answered; start a node for each "
            "partition (--node-config 'partition-id=K num-partitions=N')"
        )
    return roster
