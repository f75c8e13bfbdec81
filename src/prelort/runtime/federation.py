"""One run's parts, derived from its config and workbench, identical in every engine.

The in-process simulation (``run.py``) and the Flower apps (``prelort.flower``) both call
``prepare_federation`` and then wire the same client step, server step, evaluation and records.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from prelort.adapters.state import get_state, state_rank
from prelort.aggregation import AggregationContext, Method, get_method
from prelort.budgets import budget_plan
from prelort.config import SimulationConfig
from prelort.device import resolve_device
from prelort.environment import environment
from prelort.errors import ConfigError
from prelort.evaluation.tiers import (
    EvalInputs,
    ReadoutData,
    TierEvaluation,
    TierMetrics,
    evaluate_tiers,
)
from prelort.federation.client import ClientReply, client_step
from prelort.federation.plan import FederationPlan, assign_ranks, build_plan
from prelort.federation.records import RoundRecord
from prelort.federation.secure_server import mean_of_shares, secure_server_step
from prelort.federation.server import (
    PrivacySettings,
    RoundOutcome,
    ServerRules,
    ServerState,
    initial_server_state,
    server_step,
)
from prelort.federation.wire import through_wire
from prelort.models import cache_dir
from prelort.runtime.checkpoint import Checkpoint, save_checkpoint
from prelort.runtime.result import SimulationResult
from prelort.runtime.workbench import Workbench
from prelort.training.local import LocalTrainingConfig
from prelort.training.schedule import at_round, round_lr_factor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Federation:
    """A run's method, plan, local-training settings, server rules and round-0 server state.

    Attributes:
        config: the run's settings.
        bench: its task and model (the model holds a fresh rank-R adapter after preparation).
        method: the method, for its hooks.
        plan: partitions, ranks and per-round draws.
        train_config: local training settings before the per-client hooks.
        rules: how the server checks and aggregates replies.
        initial: the server state before round 1.
        rank_plan: with ``client_memory``, each client's budget, the measured peak per rank and
            the ranks they gave (``prelort.budgets.budget_plan``); None otherwise.
    """

    config: SimulationConfig
    bench: Workbench
    method: Method
    plan: FederationPlan
    train_config: LocalTrainingConfig
    rules: ServerRules
    initial: ServerState
    rank_plan: dict | None = None

    def train_client(
        self, received: Mapping[str, torch.Tensor], client: int, round_index: int
    ) -> ClientReply:
        """The client step of ``client`` in ``round_index`` on the received prefix.

        Both directions go through the wire format: the client trains on the prefix as it
        arrives, and its reply is what the server will receive.
        """
        rank = state_rank(received)
        objective = self.method.local_objective(
            rank, self.plan.client_ranks, self.config.ranks.ladder, self.plan.client_ranks[client]
        )
        wire = self.config.wire_dtype
        factor = round_lr_factor(self.config.lr_schedule, round_index, self.config.rounds)
        reply = client_step(
            self.bench.adapted,
            through_wire(received, wire),
            self.bench.train,
            self.plan.client_rows[client],
            self.bench.batch_kind,
            self.bench.tokenizer.pad_token_id,
            self.config.ranks.ladder,
            at_round(self.train_config, factor),
            client,
            self.plan.client_seed(round_index, client),
            objective,
        )
        return dataclasses.replace(reply, state=through_wire(reply.state, wire))

    def server_step(
        self, server: ServerState, sampled: Sequence[int], replies: Sequence[ClientReply]
    ) -> RoundOutcome:
        """The round's server step; under secure aggregation, from the mean of the shares only.

        In-process the sum is computed in the clear (no quantisation, no masks): the server math
        is the Flower app's, on what SecAgg+ would reveal.
        """
        if not self.config.secure_aggregation:
            return server_step(server, sampled, replies, self.rules)
        reports, mean, left = mean_of_shares(server, replies, self.config.secure_range)
        return secure_server_step(server, sampled, reports, mean, self.rules, left)

    def evaluate(self, server: ServerState) -> TierEvaluation | None:
        """Scores per tier of the global adapter after ``server.round``, on evaluated rounds;
        ROUGE-L on the last (or every, ``rouge_every_round``) and the refitted readout on the
        last."""
        config, bench = self.config, self.bench
        last = server.round == config.rounds
        if not (last or server.round % config.eval_every == 0):
            return None
        readout = None
        if last and bench.readout_rows:
            readout = ReadoutData(bench.train, bench.readout_rows, bench.task.num_labels)
        inputs = EvalInputs(
            bench.test,
            bench.tokenizer,
            generation=bench.generation if (last or config.rouge_every_round) else None,
            max_new_tokens=config.max_new_tokens,
            readout=readout,
        )
        return evaluate_tiers(
            bench.adapted,
            self.method.served(server.global_state),
            config.ranks.ladder,
            bench.objective,
            inputs,
            same_at_every_tier=not self.method.trains_adapter and not bench.adapted.tier_heads,
        )

    def record(
        self,
        result: SimulationResult,
        outcome: RoundOutcome,
        tiers: TierMetrics | None,
        round_seconds: float,
        checkpoint_dir: Path | None = None,
    ) -> RoundRecord | None:
        """Add a finished round to ``result`` and checkpoint the server state.

        Returns:
            The round's metric record, or None on a round that was not evaluated.
        """
        server = outcome.server
        result.traffic.append(outcome.traffic)
        record: RoundRecord | None = None
        if tiers is not None:
            record = {
                "round": server.round,
                "tiers": tiers,
                "train_loss": outcome.train_loss,
                "seconds": round(round_seconds, 2),
            }
            result.rounds.append(record)
            if server.round == self.config.rounds:
                result.final = tiers
        result.global_state, result.client_ranks = server.global_state, list(server.client_ranks)
        if checkpoint_dir is not None:
            save_checkpoint(
                checkpoint_dir,
                Checkpoint(
                    server.round,
                    server.global_state,
                    list(server.client_ranks),
                    result.rounds,
                    result.traffic,
                    server.memory,
                    result.config,
                    self.bench.task_sha256,
                    # the wall time up to the last round's end, plus this round's
                    result.wall_seconds + round_seconds,
                ),
            )
        return record

    def new_result(self) -> SimulationResult:
        return SimulationResult(
            self.config.to_dict(),
            list(self.plan.client_ranks),
            [len(rows) for rows in self.plan.client_rows],
            rank_plan=self.rank_plan,
            environment=environment(self.config.device),
        )


def prepare_federation(
    config: SimulationConfig,
    bench: Workbench,
    client_ranks: Sequence[int] | None = None,
    rank_plan: dict | None = None,
) -> Federation:
    """Derive a run's parts and give the workbench's model a fresh rank-R adapter.

    Args:
        config: the run's settings.
        bench: its task and model.
        client_ranks: every client's rank, where the clients chose them (Flower nodes from their
            memory budgets; ``rank_plan`` says how); default: from ``ranks`` or ``client_memory``.
        rank_plan: the record of how ``client_ranks`` were chosen (metrics.json).

    Raises:
        ConfigError, DataError: an unknown method, a rank off the ladder, or too few examples.
    """
    method = get_method(config.method)
    ladder = config.ranks.ladder
    ranks, rank_plan = resolve_client_ranks(config, client_ranks, rank_plan)
    plan = build_plan(config, bench.train.labels, method.client_ranks(ranks))
    train_config = LocalTrainingConfig(
        config.local_steps,
        config.batch_size,
        config.lr,
        config.weight_decay,
        1.0,
        config.resolved_nested,
        head_lr=config.resolved_head_lr,
        optimizer=config.optimizer,
    )
    adapted = bench.adapted
    per_tier = config.resolved_head == "per-tier" and bench.objective.trains_head
    adapted.use_tier_heads(ladder if per_tier else None)
    adapted.reset_parameters(torch.Generator().manual_seed(config.seed))  # a fresh rank-R adapter
    fresh_state = get_state(adapted)
    context = AggregationContext(
        ladder,
        adapted.scale,
        fresh_state,
        plan.client_ranks,
        tuple(float(len(rows)) for rows in plan.client_rows),
    )
    privacy = None
    if config.dp_clip is not None:
        privacy = PrivacySettings(
            config.dp_clip,
            config.resolved_dp_noise,
            config.seed,
            config.dp_sample_rate,
            config.resolved_dp_delta,
        )
    rules = ServerRules.for_run(
        method,
        context,
        plan.client_ranks,
        config.max_update_norm,
        config.wire_dtype,
        privacy,
        resolve_device(config.server_device, "server_device"),
    )
    initial = initial_server_state(method, fresh_state, plan.client_ranks)
    return Federation(config, bench, method, plan, train_config, rules, initial, rank_plan)


def resolve_client_ranks(
    config: SimulationConfig, client_ranks: Sequence[int] | None, rank_plan: dict | None
) -> tuple[list[int], dict | None]:
    """Every client's rank: as the clients chose them, from memory budgets, or from ``ranks``;
    and the record of how (``rank_plan``). Warns of ladder ranks no client holds.

    Raises:
        ConfigError: chosen ranks off the ladder, or not one per client.
    """
    ladder = config.ranks.ladder
    if client_ranks is not None:
        off = sorted(set(client_ranks) - set(ladder))
        if off or len(client_ranks) != config.clients:
            raise ConfigError(
                f"ranks: {config.clients} client ranks from the ladder {list(ladder)} expected, "
                f"got {list(client_ranks)}"
            )
        ranks = list(client_ranks)
    elif config.client_memory is not None:
        rank_plan = budget_plan(config, cache_dir() / "rank-memory")
        ranks = rank_plan["client_ranks"]
    else:
        ranks = assign_ranks(config.ranks, config.clients, config.seed)
    unused = sorted(set(ladder) - set(ranks))
    if unused:
        log.warning(
            "ranks %s: no client has %s; their tiers are still evaluated, from components that "
            "only higher-rank clients (if any) train",
            ",".join(map(str, ladder)),
            ", ".join(map(str, unused)),
        )
    return ranks, rank_plan


def resumed_server(checkpoint: Checkpoint, result: SimulationResult, rounds: int) -> ServerState:
    """The server state of a checkpoint; its history and wall time so far go into ``result``."""
    result.rounds, result.traffic = list(checkpoint.rounds), list(checkpoint.traffic)
    result.wall_seconds = checkpoint.wall_seconds
    if result.rounds and result.rounds[-1]["round"] == rounds:
        result.final = result.rounds[-1]["tiers"]
    return ServerState(
        checkpoint.round,
        checkpoint.global_state,
        tuple(checkpoint.client_ranks),
        checkpoint.memory,
    )
