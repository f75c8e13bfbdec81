"""The server step: the round's replies in, the next global adapter and the round's record out.

It needs no model and no data, only the method's rule and hooks, so the in-process simulation and
a Flower ServerApp share it. Every reply is checked before it becomes an update: a malformed or
hostile reply is logged and left out, and never aborts the round or touches the global state.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from prelort.adapters.norms import segment_norms
from prelort.adapters.state import AdapterState, slice_to_rank, state_rank
from prelort.aggregation.base import AggregateFn, ClientUpdate
from prelort.aggregation.budget import epsilon
from prelort.aggregation.method import AggregationContext, Method, uplink_numel
from prelort.aggregation.privacy import add_noise, clip_update
from prelort.aggregation.segments import segment_bounds
from prelort.aggregation.validation import update_problem
from prelort.device import CPU, state_to
from prelort.federation.client import ClientReply
from prelort.federation.records import PrivacyRecord, Rejection, SegmentRecord, TrafficRecord
from prelort.federation.wire import wire_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerState:
    """What the server keeps between rounds (and checkpoints).

    Attributes:
        round: rounds completed.
        global_state: the rank-R global adapter (and heads, and FLoRA's merged terms).
        client_ranks: every client's current rank (HetLoRA prunes them).
        memory: what the method keeps beside the adapter (``Method.initial_memory``; FLoRA:
            the size of last round's stack), JSON-able.
    """

    round: int
    global_state: AdapterState
    client_ranks: tuple[int, ...]
    memory: Any = None

    def prefix(self, client: int) -> AdapterState:
        """What the server sends ``client``: the prefix of its rank, and the heads it may use."""
        return slice_to_rank(self.global_state, self.client_ranks[client])


@dataclass(frozen=True)
class PrivacySettings:
    """Client-level DP of a run: clip norm C, noise multiplier sigma, the seed of the noise, and
    what the accountant needs: the sampling rate q and δ (``aggregation/budget.py``)."""

    clip: float
    noise_multiplier: float
    seed: int
    sample_rate: float = 1.0
    delta: float = 1e-5

    def epsilon(self, rounds: int) -> float:
        """ε after ``rounds`` noised rounds, at ``delta``."""
        return epsilon(self.noise_multiplier, self.sample_rate, rounds, self.delta)

    def generator(self, round_index: int) -> torch.Generator:
        """The noise stream of one round: resuming a run draws the same noise."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + round_index)


@dataclass(frozen=True)
class ServerRules:
    """How the server treats a run's replies.

    Attributes:
        method: the method, for its hooks.
        aggregate: its aggregation rule, built for this run.
        ladder: the ranks in use.
        scale: the LoRA scale s.
        allowed_ranks: ranks a reply may carry (None: any up to R).
        max_update_norm: bound on a reply's ``||s B A||_F`` (None: no bound).
        wire_dtype: the number format of adapters on the wire (counts the traffic's bytes).
        privacy: client-level DP (clip, noise), or None.
        device: where the rule runs; the state it returns is brought back to the CPU.
        assigned_ranks: each client's rank at round 1 (``Method.next_rank`` schedules from it).
    """

    method: Method
    aggregate: AggregateFn
    ladder: tuple[int, ...]
    scale: float
    allowed_ranks: frozenset[int] | None
    max_update_norm: float | None = None
    wire_dtype: str = "float32"
    privacy: PrivacySettings | None = None
    device: torch.device = CPU
    assigned_ranks: tuple[int, ...] = ()

    def assigned(self, client: int) -> int | None:
        """The rank ``client`` was assigned at round 1, or None where the rules were not told."""
        return self.assigned_ranks[client] if client < len(self.assigned_ranks) else None

    @classmethod
    def for_run(
        cls,
        method: Method,
        context: AggregationContext,
        client_ranks: Sequence[int],
        max_update_norm: float | None = None,
        wire_dtype: str = "float32",
        privacy: PrivacySettings | None = None,
        device: torch.device = CPU,
    ) -> ServerRules:
        allowed = method.allowed_ranks(context.ladder, client_ranks)
        return cls(
            method,
            method.rule(context),
            context.ladder,
            context.scale,
            None if allowed is None else frozenset(allowed),
            max_update_norm,
            wire_dtype,
            privacy,
            device,
            tuple(client_ranks),
        )


@dataclass(frozen=True)
class RoundOutcome:
    """The server state after a round, the round's traffic record and mean training loss."""

    server: ServerState
    traffic: TrafficRecord
    train_loss: float


def mean_loss(losses: Sequence[float]) -> float:
    """The mean training loss over the replies that trained: a frozen client (``lowest-alone``'s
    higher ranks, the no-adapter row of a causal LM) reports NaN, which is no loss to average.
    NaN when none trained."""
    trained = [x for x in losses if not math.isnan(x)]
    return sum(trained) / len(trained) if trained else float("nan")


def initial_server_state(
    method: Method, fresh_state: Mapping[str, torch.Tensor], client_ranks: Sequence[int]
) -> ServerState:
    """Round 0: the method's starting state from the fresh rank-R adapter."""
    return ServerState(
        0, method.initial_state(fresh_state), tuple(client_ranks), method.initial_memory()
    )


def report_problem(reply: ClientReply, server: ServerState, sampled: Sequence[int]) -> str | None:
    """Why a reply's own account of itself (client, rank, examples) is unacceptable, or None."""
    if reply.client_id not in sampled:
        return "it was not sampled this round"
    expected = server.client_ranks[reply.client_id]
    if reply.rank != expected:
        return f"it claims rank {reply.rank} but was sent the rank-{expected} prefix"
    examples = reply.num_examples
    if isinstance(examples, bool) or not isinstance(examples, int | float) or not examples > 0:
        return f"num_examples must be a positive number, got {examples!r}"
    if not math.isfinite(examples):
        return f"num_examples must be finite, got {examples!r}"
    return None


def reply_problem(
    reply: ClientReply, server: ServerState, rules: ServerRules, sampled: Sequence[int]
) -> str | None:
    """Why a reply must be left out of the round, or None if it may be aggregated."""
    return report_problem(reply, server, sampled) or update_problem(
        reply.state,
        reply.rank,
        server.global_state,
        rules.allowed_ranks,
        rules.max_update_norm,
        rules.scale,
    )


def clipped_updates(
    sent: Mapping[int, AdapterState], updates: Sequence[ClientUpdate], rules: ServerRules
) -> tuple[list[ClientUpdate], PrivacyRecord]:
    """Each update clipped to the run's norm around the prefix its client was sent (``sent``)."""
    assert rules.privacy is not None
    clip, out, norms = rules.privacy.clip, [], []
    for u in updates:
        state, norm = clip_update(sent[u.client_id], u.state, clip)
        out.append(ClientUpdate(u.client_id, state, u.rank, u.num_examples))
        norms.append(norm)
    record: PrivacyRecord = {
        "clip": clip,
        "noise_multiplier": rules.privacy.noise_multiplier,
        "noise_std": 0.0,
        "clipped": sum(n > clip for n in norms),
        "median_norm": round(statistics.median(norms), 6),
        "epsilon": None,  # no noise, no guarantee
        "delta": rules.privacy.delta,
    }
    return out, record


def noisy(
    global_state: AdapterState,
    updates: Sequence[ClientUpdate],
    rules: ServerRules,
    privacy: PrivacyRecord,
    round_index: int,
) -> tuple[AdapterState, PrivacyRecord]:
    """The aggregate plus Gaussian noise of std sigma x C x the rule's largest client weight."""
    assert rules.privacy is not None
    std = privacy["noise_multiplier"] * privacy["clip"] * rules.method.sensitivity()(updates)
    noised = add_noise(global_state, updates, std, rules.privacy.generator(round_index))
    return noised, {**privacy, "noise_std": std, "epsilon": rules.privacy.epsilon(round_index)}


def aggregate_on(
    rules: ServerRules, global_state: AdapterState, updates: Sequence[ClientUpdate]
) -> AdapterState:
    """The rule run on the server's device; the new state comes back as CPU tensors."""
    if rules.device.type == "cpu":
        return rules.aggregate(global_state, updates)
    on = rules.device
    moved = [dataclasses.replace(u, state=state_to(u.state, on)) for u in updates]
    return state_to(rules.aggregate(state_to(global_state, on), moved), CPU)


def server_step(
    server: ServerState,
    sampled: Sequence[int],
    replies: Sequence[ClientReply],
    rules: ServerRules,
    failures: Sequence[Rejection] = (),
) -> RoundOutcome:
    """Aggregate one round.

    Args:
        server: the state after the previous round.
        sampled: the clients sent a prefix this round; those without a reply count as dropped.
        replies: the replies that arrived, in the order they are aggregated (sort them by client
            for results that do not depend on arrival); each is checked before it counts.
        rules: the method, its rule and the checks of this run.
        failures: clients whose reply arrived as an error or could not be decoded (the engine
            logs them); they count as rejected.

    Returns:
        The new server state (the global adapter kept when no reply is valid), the round's
        traffic record and the mean training loss of the accepted replies that trained (``mean_loss``).
    """
    round_index = server.round + 1
    sent = {c: server.prefix(c) for c in sampled}  # what each sampled client was sent
    down = sum(rules.method.downlink_numel(p, server.memory) for p in sent.values())
    replied = {r.client_id for r in replies} | {f["client"] for f in failures}
    dropped = [c for c in sampled if c not in replied]
    updates: list[ClientUpdate] = []
    losses: list[float] = []
    tail_ratios: list[float] = []
    rejected: list[Rejection] = list(failures)
    ranks = list(server.client_ranks)
    accepted: set[int] = set()
    for reply in replies:
        problem = reply_problem(reply, server, rules, sampled)
        if problem is None and reply.client_id in accepted:
            problem = "a second reply from the same client"
        if problem is not None:
            log.warning(
                "round %d: rejected the update of client %s: %s",
                round_index,
                reply.client_id,
                problem,
            )
            rejected.append({"client": reply.client_id, "reason": problem})
            continue
        accepted.add(reply.client_id)
        updates.append(ClientUpdate(reply.client_id, reply.state, reply.rank, reply.num_examples))
        losses.append(reply.loss)
        tail_ratios.append(reply.tail_ratio)
        ranks[reply.client_id] = rules.method.next_rank(
            reply.rank, reply.tail_ratio, rules.ladder, rules.assigned(reply.client_id)
        )

    def trains(update: ClientUpdate) -> bool:
        objective = rules.method.local_objective(
            update.rank, server.client_ranks, rules.ladder, rules.assigned(update.client_id)
        )
        return objective.trains_adapter

    agg_start = time.perf_counter()
    global_state = server.global_state
    privacy: PrivacyRecord | None = None
    if updates and rules.privacy is not None:
        updates, privacy = clipped_updates(sent, updates, rules)
    if updates:
        global_state = aggregate_on(rules, global_state, updates)
        if privacy is not None and privacy["noise_multiplier"] > 0:
            global_state, privacy = noisy(global_state, updates, rules, privacy, round_index)
    else:
        log.warning("round %d: no valid update; the global adapter is unchanged", round_index)
    traffic = traffic_record(
        round_index,
        [u.rank for u in updates],
        tail_ratios,
        wire_bytes(sum(uplink_numel(u.state, trains(u)) for u in updates), rules.wire_dtype),
        wire_bytes(down, rules.wire_dtype),
        agg_start,
        dropped,
        rejected,
        global_state,
        rules,
        privacy,
    )
    memory = rules.method.next_memory(server.memory, updates)
    return RoundOutcome(
        ServerState(round_index, global_state, tuple(ranks), memory),
        traffic,
        mean_loss(losses),
    )


def traffic_record(
    round_index: int,
    ranks: list[int],
    tail_ratios: list[float],
    bytes_up: int,
    bytes_down: int,
    aggregation_start: float,
    dropped: list[int],
    rejected: list[Rejection],
    global_state: Mapping[str, torch.Tensor],
    rules: ServerRules,
    privacy: PrivacyRecord | None = None,
) -> TrafficRecord:
    """The round's record, the same for the plain and the secure server step.

    Args:
        ranks: the rank of each accepted update; their count is the round's clients.
        tail_ratios: what each accepted client reported on its adapter's tail (HetLoRA prunes
            on it; 0 where the method has none), in the order of ``ranks``.
        aggregation_start: ``time.perf_counter()`` when aggregation began.
    """
    return {
        "round": round_index,
        "clients": len(ranks),
        "bytes_up": bytes_up,
        "bytes_down": bytes_down,
        "aggregation_seconds": round(time.perf_counter() - aggregation_start, 4),
        "ranks": ranks,
        "tail_ratios": [round(t, 6) for t in tail_ratios],
        "dropped": dropped,
        "rejected": rejected,
        "segments": segment_record(global_state, rules.ladder, rules.scale),
        "privacy": privacy,
    }


def segment_record(
    global_state: Mapping[str, torch.Tensor], ladder: Sequence[int], scale: float
) -> list[SegmentRecord]:
    """Per rank segment of the global adapter: ``||s B_seg A_seg||_F`` and its share of the energy.

    Shows whether training concentrates the signal in the prefix, or leaves it stuck in the first
    segment ("rank collapse") or spread evenly (a truncation then loses most of it).
    """
    bounds = segment_bounds(tuple(ladder), state_rank(global_state))
    norms = segment_norms(global_state, bounds, scale)
    energy = sum(n * n for n in norms)
    return [
        {"lo": lo, "hi": hi, "norm": n, "share": n * n / energy if energy > 0 else 0.0}
        for (lo, hi), n in zip(bounds, norms, strict=True)
    ]
