"""The secure server step: the next global adapter from the mean of the clients' shares alone.

Under secure aggregation (SecAgg+) the server never sees an update, only the example-weighted
mean of the clients' padded shares (``prelort.aggregation.secure``) and what each client says of
itself. The method's ``secure_rule`` turns that mean into the next global adapter; the checks
and the round's record are the plain step's (``server.py``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence

import torch

from prelort.adapters.state import AdapterState
from prelort.aggregation.base import ClientUpdate
from prelort.aggregation.secure import (
    secure_share,
    share_layout,
    share_problem,
    sums_problem,
    weighted_sum,
)
from prelort.federation.client import ClientReply
from prelort.federation.records import Rejection
from prelort.federation.server import (
    RoundOutcome,
    ServerRules,
    ServerState,
    mean_loss,
    report_problem,
    traffic_record,
)
from prelort.federation.wire import wire_bytes

log = logging.getLogger(__name__)


SECURE_WORD_BYTES = 8  # SecAgg+ sends each number as a masked 64-bit integer


def secure_server_step(
    server: ServerState,
    sampled: Sequence[int],
    reports: Sequence[ClientReply],
    mean_share: Mapping[str, torch.Tensor] | None,
    rules: ServerRules,
    failures: Sequence[Rejection] = (),
    unreadable: Sequence[Rejection] = (),
) -> RoundOutcome:
    """Aggregate one round from the mean of the clients' shares alone (secure aggregation).

    Args:
        server: the state after the previous round.
        sampled: the clients sent a prefix this round; those without a report count as dropped.
        reports: what each client in the sum says of itself (client, rank, examples, loss); their
            ``state`` is not used: the server never sees an update.
        mean_share: ``sum_k n_k share_k / sum_k n_k`` over the reporting clients'
            ``secure_share`` (SecAgg+'s output); None when the protocol revealed nothing.
        rules: the method (its ``from_sums`` rule) and the run's settings.
        failures: clients that dropped out or failed (the engine logs them); rejected.
        unreadable: clients in the sum whose report could not be read; they refuse the round.

    A report that fails its checks cannot be taken out of a sum that is already masked, so it
    rejects the whole round: the global adapter is kept and every report is listed as rejected.
    The same holds for a sum with NaN, Inf or the wrong shapes.
    """
    round_index = server.round + 1
    down = sum(rules.method.downlink_numel(server.prefix(c), server.memory) for c in sampled)
    replied = {r.client_id for r in reports} | {f["client"] for f in [*failures, *unreadable]}
    dropped = [c for c in sampled if c not in replied]
    rejected: list[Rejection] = list(failures)
    clients = [r.client_id for r in reports] + [u["client"] for u in unreadable]
    problems = [report_problem(r, server, sampled) for r in reports]
    problem = next(
        (f"client {r.client_id}: {p}" for r, p in zip(reports, problems, strict=True) if p), None
    )
    if problem is None and unreadable:
        problem = f"client {unreadable[0]['client']}: {unreadable[0]['reason']}"
    if problem is None and len(set(clients)) != len(clients):
        problem = "two reports from one client"
    if problem is None and reports and mean_share is None:
        problem = "the protocol revealed no sum"
    if problem is None and mean_share is not None:
        problem = sums_problem(mean_share, server.global_state)
    agg_start = time.perf_counter()
    global_state, accepted = server.global_state, list(reports)
    if problem is not None:
        log.warning("round %d: secure sum refused, global adapter kept: %s", round_index, problem)
        rejected += [{"client": c, "reason": f"secure sum refused: {problem}"} for c in clients]
        accepted = []
    elif accepted:
        assert mean_share is not None
        examples = [float(r.num_examples) for r in accepted]
        resolution = 0.5 * min(examples) / sum(examples)  # below one client's weight: nobody's
        from_sums = rules.method.secure_rule()  # config validation refuses a method without one
        global_state = from_sums(server.global_state, mean_share, resolution)
    else:
        log.warning("round %d: no client finished secure aggregation", round_index)
    share_numel = sum(math.prod(shape) for _, shape in share_layout(server.global_state))
    traffic = traffic_record(
        round_index,
        [r.rank for r in accepted],
        [r.tail_ratio for r in accepted],
        len(accepted) * share_numel * SECURE_WORD_BYTES,
        wire_bytes(down, rules.wire_dtype),
        agg_start,
        dropped,
        rejected,
        global_state,
        rules,
    )
    return RoundOutcome(
        ServerState(round_index, global_state, server.client_ranks, server.memory),
        traffic,
        mean_loss([r.loss for r in accepted]),
    )


def mean_of_shares(
    server: ServerState, replies: Sequence[ClientReply], bound: float
) -> tuple[list[ClientReply], AdapterState | None, list[Rejection]]:
    """In-process stand-in for SecAgg+: the example-weighted mean of the replies' shares.

    Each client first checks its own share (``share_problem``) as a Flower client does; one that
    fails drops out of the sum. Returns the reports in the sum, their mean share (None if none)
    and the dropped clients.
    """
    reports, shares, dropped = [], [], []
    for reply in replies:
        update = ClientUpdate(reply.client_id, reply.state, reply.rank, reply.num_examples)
        try:
            share = secure_share(update, server.global_state)
            problem = share_problem(share, bound)
        except (KeyError, RuntimeError, IndexError) as error:
            problem = f"its update does not fit the global adapter ({error})"
        if problem is not None:
            dropped.append({"client": reply.client_id, "reason": f"left secure sum: {problem}"})
            continue
        reports.append(reply)
        shares.append(share)
    if not reports:
        return reports, None, dropped
    total = float(sum(r.num_examples for r in reports))
    mean = weighted_sum(shares, [r.num_examples / total for r in reports])
    return reports, mean, dropped
