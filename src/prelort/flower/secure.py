"""Secure aggregation on Flower: SecAgg+ sums the clients' padded shares; the server divides.

Flower 1.42 runs SecAgg+ in its workflow API (``SecAggPlusWorkflow`` on the server, the
``secaggplus_mod`` on the clients) around a legacy ``Strategy``. Each sampled node still gets the
prefix of its own rank; it trains, pads its update to the global shapes with the per-index
indicators of ``prelort.aggregation.secure`` and hands that to the mod, which weights it by the
node's example count, quantises it and masks it. The server learns only the example-weighted mean
of the shares and each node's own account (rank, examples, loss), and ``secure_server_step``
turns the mean into the method's rule (segment-wise: each rank index divided by its holders'
weight). A node whose share SecAgg+ would clip, or that holds NaN or Inf, raises before masking and
the protocol drops it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping

import numpy as np
import torch
from flwr.app import Context, Message, MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (
    Code,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.server import ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid

from prelort.aggregation.base import ClientUpdate
from prelort.aggregation.secure import secure_share, share_layout, share_problem
from prelort.errors import AdapterError
from prelort.federation.client import ClientReply
from prelort.federation.records import Rejection
from prelort.federation.secure_server import secure_server_step
from prelort.federation.server import RoundOutcome
from prelort.flower.strategy import PlannedRounds

log = logging.getLogger("flwr.prelort")


def encode_arrays(state: Mapping[str, torch.Tensor]) -> tuple[Parameters, str]:
    """A state as Flower's legacy ``Parameters`` and its keys (a JSON list), in one order."""
    keys = list(state)
    arrays = [state[k].detach().float().numpy() for k in keys]
    return ndarrays_to_parameters(arrays), json.dumps(keys)


class SecurePrefixStrategy(PlannedRounds, Strategy):
    """The server side of a SecAgg+ round: prefixes down, the secure step on the revealed mean.

    Flower's legacy ``Strategy``, which ``SecAggPlusWorkflow`` drives; its state and arguments are
    ``PlannedRounds``'.
    """

    _pending = False  # a round was configured and its sum never came back

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return ndarrays_to_parameters([])  # the global adapter is this strategy's server state

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Each sampled node's rank prefix; the server state's round number draws the sample."""
        self.close_halted_round()
        round_index = self.server.round + 1
        draw = self.plan.draw(round_index)
        self._sampled, self._sent = list(draw.sampled), set(draw.reached)
        client_manager.wait_for(len(self.nodes), timeout=60)
        proxies = {p.node_id: p for p in client_manager.all().values()}
        instructions = []
        for client in sorted(self._sent):
            parameters, keys = encode_arrays(self.server.prefix(client))
            config: dict[str, Scalar] = {"client": client, "round": round_index, "keys": keys}
            instructions.append((proxies[self.nodes[client]], FitIns(parameters, config)))
        self._pending = True
        return instructions

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """The secure server step on the mean SecAgg+ revealed (every result carries it)."""
        reports, unreadable = [], []
        for proxy, fitres in results:
            client = self.node_partitions.get(proxy.node_id, -1)
            try:
                reports.append(report_of(fitres, client))
            except AdapterError as error:
                unreadable.append({"client": client, "reason": f"node {proxy.node_id}: {error}"})
        mean = None
        if results:
            arrays = parameters_to_ndarrays(results[0][1].parameters)
            keys = [k for k, _ in share_layout(self.server.global_state)]
            mean = {}  # a count mismatch leaves every key missing, and the step refuses it
            if len(arrays) == len(keys):
                mean = {
                    k: torch.from_numpy(np.array(a, dtype=np.float64))
                    for k, a in zip(keys, arrays, strict=True)
                }
        reports.sort(key=lambda r: r.client_id)  # arrival order must not show in records
        failed = [self._failure(f) for f in failures]
        outcome = secure_server_step(
            self.server, self._sampled, reports, mean, self.rules, failed, unreadable
        )
        self._finish(outcome)
        return None, {}

    def close_halted_round(self) -> None:
        """Record a round whose protocol halted (too few nodes finished): nothing changes."""
        if not self._pending:
            return
        reason = "secure aggregation halted: too few nodes finished the protocol"
        failures: list[Rejection] = [{"client": c, "reason": reason} for c in sorted(self._sent)]
        log.warning("round %d: %s", self.server.round + 1, reason)
        self._finish(secure_server_step(self.server, self._sampled, [], None, self.rules, failures))

    def _finish(self, outcome: RoundOutcome) -> None:
        self._pending = False
        self.server = outcome.server
        if self.on_round is not None:
            self.on_round(outcome)

    def _failure(self, failure: tuple[ClientProxy, FitRes] | BaseException) -> Rejection:
        if isinstance(failure, BaseException):
            reason = f"a node left the secure round: {failure}"
            log.warning("round %d: %s", self.server.round + 1, reason)
            return {"client": -1, "reason": reason}
        proxy, _ = failure
        client = self.node_partitions.get(proxy.node_id, -1)
        return {"client": client, "reason": f"node {proxy.node_id} failed"}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []  # every tier is evaluated on the server, as in the simulation

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        return None


def report_of(fitres: FitRes, client: int) -> ClientReply:
    """A node's account of itself (no update: the server never sees one).

    Raises:
        AdapterError: a missing or non-integer client or rank, or a reply for another client.
    """
    metrics = fitres.metrics
    try:
        claimed, rank = metrics["client"], metrics["rank"]
        loss, tail = float(metrics["loss"]), float(metrics["tail-ratio"])
    except (KeyError, TypeError, ValueError) as error:
        raise AdapterError(f"a report without a valid {error}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (claimed, rank)):
        raise AdapterError(f"client and rank must be integers, got {claimed!r} and {rank!r}")
    if claimed != client:
        raise AdapterError(f"holds partition {client} but reported as {claimed}")
    return ClientReply(client, {}, rank, fitres.num_examples, loss, tail)


def run_secure_rounds(
    grid: Grid,
    context: Context,
    strategy: SecurePrefixStrategy,
    num_rounds: int,
    max_weight: float,
    secure_range: float,
    timeout: float,
) -> None:
    """Run ``num_rounds`` SecAgg+ rounds of ``strategy`` over ``grid``.

    Args:
        max_weight: the largest example count of a node (SecAgg+ scales weights by it).
        secure_range: the magnitude bound of a sent number (SecAgg+'s clipping range).
        timeout: seconds to wait for the nodes at each stage of the protocol.
    """
    legacy = LegacyContext(context, ServerConfig(num_rounds=num_rounds), strategy)
    secagg = SecAggPlusWorkflow(
        num_shares=1.0,  # every sampled node shares its secrets with all others
        reconstruction_threshold=0.5,  # half of them can unmask a dropped node
        max_weight=max_weight,
        clipping_range=secure_range,
        timeout=timeout,
    )
    DefaultWorkflow(fit_workflow=secagg)(grid, legacy)
    strategy.close_halted_round()


def secure_reply(
    message: Message,
    train: Callable[[Mapping[str, torch.Tensor], int, int], ClientReply],
    global_state: Mapping[str, torch.Tensor],
    bound: float,
) -> Message:
    """A node's answer to a SecAgg+ train message: its padded share, for the mod to mask.

    Args:
        message: the legacy fit instruction (prefix arrays, client, round, keys).
        train: ``Federation.train_client``.
        global_state: the rank-R adapter of the run (its shapes and head keys).
        bound: the run's ``secure_range``.

    Raises:
        AdapterError: a share SecAgg+ would clip or that holds NaN or Inf; the node leaves the
            round (the protocol drops it) rather than corrupt the sum.
    """
    fitins = compat.recorddict_to_fitins(message.content, keep_input=True)
    config = fitins.config
    keys = json.loads(str(config["keys"]))
    arrays = parameters_to_ndarrays(fitins.parameters)
    if len(keys) != len(arrays):
        raise AdapterError(f"a fit instruction with {len(keys)} keys and {len(arrays)} arrays")
    prefix = {
        k: torch.from_numpy(np.array(a, dtype=np.float32))
        for k, a in zip(keys, arrays, strict=True)
    }
    client, round_index = int(config["client"]), int(config["round"])
    reply = train(prefix, client, round_index)
    update = ClientUpdate(client, reply.state, reply.rank, reply.num_examples)
    share = secure_share(update, global_state)
    problem = share_problem(share, bound)
    if problem is not None:
        raise AdapterError(f"client {client} leaves the secure round: {problem}")
    layout = [k for k, _ in share_layout(global_state)]
    metrics: dict[str, Scalar] = {
        "client": client,
        "rank": reply.rank,
        "loss": reply.loss,
        "tail-ratio": reply.tail_ratio,
    }
    fitres = FitRes(
        Status(Code.OK, ""),
        ndarrays_to_parameters([share[k].numpy() for k in layout]),
        reply.num_examples,
        metrics,
    )
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=message)


def secure_aggregation_mod(
    message: Message, context: Context, call_next: ClientAppCallable
) -> Message:
    """SecAgg+'s client mod for the train messages of a secure round; others pass straight on."""
    secure = RECORD_KEY_CONFIGS in message.content.config_records
    if message.metadata.message_type == MessageType.TRAIN and secure:
        return secaggplus_mod(message, context, call_next)
    return call_next(message, context)
