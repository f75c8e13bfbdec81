"""The in-process federation: sample clients, train locally, aggregate, evaluate, record.

Every random choice derives from the config's one seed: the partition, the rank of each client, the
initial adapter, the clients sampled each round, and each client's batches and truncations.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from prelort.adapters.heads import tier_of
from prelort.adapters.norms import segment_norms
from prelort.adapters.state import (
    MERGED,
    AdapterState,
    get_state,
    is_lora_key,
    set_state,
    slice_to_rank,
    state_rank,
)
from prelort.aggregation import AggregationContext, ClientUpdate, get_method
from prelort.aggregation.flora import stacked_numel
from prelort.aggregation.hetlora import HETLORA_GAMMA, HETLORA_THRESHOLD, tail_size
from prelort.aggregation.segments import segment_bounds
from prelort.aggregation.validation import update_problem
from prelort.config import RankSpec, SimulationConfig
from prelort.data.partition import partition_indices
from prelort.evaluation.tiers import HEAD, ReadoutData, TierMetrics, evaluate_tiers
from prelort.simulation.checkpoint import Checkpoint, save_checkpoint
from prelort.simulation.workbench import Workbench, build_workbench
from prelort.training.local import LocalTrainingConfig, tier_balanced_weights, train_local

log = logging.getLogger(__name__)


@dataclass
class SimulationResult:
    """The outcome of a run.

    Attributes:
        config: the run's settings, resolved.
        client_ranks: the rank of every client.
        client_examples: the training examples of every client.
        rounds: one record per evaluated round: ``{"round", "tiers", "train_loss", "seconds"}``.
        final: metrics of the final global adapter per tier.
        global_state: the final rank-R global adapter.
        traffic: per round: clients, bytes up and down (fp32), server aggregation seconds, ranks.
        wall_seconds: the run's wall time, workbench loading excluded.
    """

    config: dict[str, Any]
    client_ranks: list[int]
    client_examples: list[int]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    final: TierMetrics = field(default_factory=dict)
    global_state: AdapterState = field(default_factory=dict)
    traffic: list[dict[str, Any]] = field(default_factory=list)
    wall_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "client_ranks": self.client_ranks,
            "client_examples": self.client_examples,
            "rounds": self.rounds,
            "final": {"tiers": self.final},
            "traffic": self.traffic,
            "wall_seconds": round(self.wall_seconds, 2),
        }


def assign_ranks(spec: RankSpec, clients: int, seed: int) -> list[int]:
    """Client ranks: the list cycled over clients, or drawn from the distribution with ``seed``."""
    if spec.probabilities is None:
        return [spec.ranks[k % len(spec.ranks)] for k in range(clients)]
    generator = torch.Generator().manual_seed(seed)
    draws = torch.multinomial(torch.tensor(spec.probabilities), clients, True, generator=generator)
    return [spec.ranks[i] for i in draws.tolist()]


def client_seed(seed: int, round_index: int, client: int) -> int:
    """A distinct, reproducible seed for one client's training in one round."""
    return (seed * 1_000_003 + round_index * 10_007 + client) % (2**63 - 1)


def round_seed(seed: int, round_index: int, salt: int) -> int:
    """A reproducible seed for one round's draws (client sampling: salt 1; failures: salt 2)."""
    return (seed * 7_919 + round_index * 104_729 + salt) % (2**63 - 1)


def run_simulation(
    config: SimulationConfig,
    workbench: Workbench | None = None,
    progress: bool = True,
    on_round: Callable[[SimulationResult], None] | None = None,
    checkpoint_dir: Path | None = None,
    resume: Checkpoint | None = None,
) -> SimulationResult:
    """Run one federation.

    Args:
        config: the run's settings.
        workbench: a loaded task and model to reuse (built from ``config`` if None).
        progress: show a progress bar and one line per evaluated round.
        on_round: called with the partial result after every evaluated round (to save it).
        checkpoint_dir: save the server state there after every round.
        resume: continue from this checkpoint instead of round 0.

    Returns:
        Per-round and final metrics per tier and the final global adapter.

    Raises:
        ConfigError, DataError, ModelError: bad settings, data or model.
    """
    bench = workbench or build_workbench(config)
    adapted, kind = bench.adapted, bench.batch_kind
    method = get_method(config.method)
    ladder = config.ranks.ladder
    train_config = LocalTrainingConfig(
        config.local_steps,
        config.batch_size,
        config.lr,
        config.weight_decay,
        1.0,
        config.resolved_nested,
        HETLORA_GAMMA if method.self_prune else 0.0,
        config.resolved_head_lr,
        config.optimizer,
        method.trains_adapter,
    )

    pool = list(range(len(bench.train)))
    if config.train_examples is not None and config.train_examples < len(pool):
        pool = sorted(random.Random(config.seed).sample(pool, config.train_examples))
    parts = partition_indices(
        [bench.train.labels[i] for i in pool],
        config.clients,
        config.partition,
        config.seed,
        config.dirichlet_alpha,
        config.classes_per_client,
        min_examples=2,
    )
    client_rows = [[pool[i] for i in part] for part in parts]
    ranks = method.client_ranks(assign_ranks(config.ranks, config.clients, config.seed))
    if method.balance_tiers:
        weights = tier_balanced_weights(ranks, ladder)
        train_config = dataclasses.replace(train_config, truncation_weights=weights)
    result = SimulationResult(config.to_dict(), list(ranks), [len(p) for p in client_rows])

    per_tier = config.resolved_head == "per-tier" and bench.objective == HEAD
    adapted.use_tier_heads(ladder if per_tier else None)
    adapted.reset_parameters(torch.Generator().manual_seed(config.seed))
    global_state = get_state(adapted)
    fresh_state = dict(global_state)
    if method.merges:
        for name, layer in adapted.layers.items():
            global_state[name + MERGED] = torch.zeros_like(layer.base.weight, dtype=torch.float32)
    aggregate = method.aggregator(AggregationContext(ladder, adapted.scale, fresh_state))
    allowed_ranks = None if method.self_prune else set(ladder) | set(ranks)
    per_round = config.clients_per_round or config.clients
    pad_id = bench.tokenizer.pad_token_id
    first_round, previous_stack = 1, 0
    if resume is not None:
        global_state, ranks = resume.global_state, list(resume.client_ranks)
        result.rounds, result.traffic = list(resume.rounds), list(resume.traffic)
        first_round, previous_stack = resume.round + 1, resume.previous_stack_numel
        if result.rounds and result.rounds[-1]["round"] == config.rounds:
            result.final = result.rounds[-1]["tiers"]

    start = time.perf_counter()
    bar = tqdm(
        total=config.rounds * per_round,
        initial=(first_round - 1) * per_round,
        desc=config.method,
        unit="client",
        disable=not progress,
        dynamic_ncols=True,
    )
    for round_index in range(first_round, config.rounds + 1):
        round_start = time.perf_counter()
        sampler = torch.Generator().manual_seed(round_seed(config.seed, round_index, 1))
        chosen = sorted(torch.randperm(config.clients, generator=sampler)[:per_round].tolist())
        failures = torch.rand(
            len(chosen),
            generator=torch.Generator().manual_seed(round_seed(config.seed, round_index, 2)),
        ).tolist()
        updates, losses, down, dropped, rejected = [], [], 0, [], []
        for client, failure_draw in zip(chosen, failures, strict=True):
            rank = ranks[client]
            sent = slice_to_rank(global_state, rank)
            down += downlink_numel(sent, previous_stack if method.merges else None)
            bar.update(1)
            if failure_draw < config.client_failure_rate:
                dropped.append(client)  # the client vanished mid-round: no update arrives
                continue
            set_state(adapted, sent)
            cseed = client_seed(config.seed, round_index, client)
            torch.manual_seed(cseed)  # base-model dropout draws from the global stream
            local = train_local(
                adapted,
                bench.train,
                client_rows[client],
                kind,
                pad_id,
                rank,
                ladder,
                train_config,
                torch.Generator().manual_seed(cseed),
            )
            trained_tiers = {tier_of(r, ladder) for r in local.trained_ranks}
            state = get_state(adapted, head_tiers=trained_tiers)
            problem = update_problem(
                state, rank, global_state, allowed_ranks, config.max_update_norm, adapted.scale
            )
            if problem is not None:
                log.warning(
                    "round %d: rejected the update of client %d: %s", round_index, client, problem
                )
                rejected.append({"client": client, "reason": problem})
                continue
            updates.append(ClientUpdate(client, state, rank, len(client_rows[client])))
            losses.append(local.mean_loss)
            if method.self_prune and local.tail_ratio < HETLORA_THRESHOLD:
                ranks[client] = max(min(ladder), rank - tail_size(rank))
            bar.set_postfix(round=round_index, loss=f"{local.mean_loss:.3f}")
        agg_start = time.perf_counter()
        if updates:
            global_state = aggregate(global_state, updates)
        else:
            log.warning("round %d: no valid update; the global adapter is unchanged", round_index)
        result.traffic.append(
            {
                "round": round_index,
                "clients": len(updates),
                "bytes_up": 4 * sum(uplink_numel(u.state) for u in updates),
                "bytes_down": 4 * down,
                "aggregation_seconds": round(time.perf_counter() - agg_start, 4),
                "ranks": [u.rank for u in updates],
                "dropped": dropped,
                "rejected": rejected,
                "segments": segment_record(global_state, ladder, adapted.scale),
            }
        )
        if updates:
            previous_stack = stacked_numel(updates)
        last = round_index == config.rounds
        if last or round_index % config.eval_every == 0:
            readout = None
            if last and bench.readout_rows:
                readout = ReadoutData(bench.train, bench.readout_rows, bench.task.num_labels)
            tiers = evaluate_tiers(
                adapted,
                global_state,
                ladder,
                bench.objective,
                bench.test,
                bench.tokenizer,
                generation_data=bench.generation if (last or config.rouge_every_round) else None,
                max_new_tokens=config.max_new_tokens,
                readout=readout,
                same_at_every_tier=not method.trains_adapter and not adapted.tier_heads,
            )
            record = {
                "round": round_index,
                "tiers": tiers,
                "train_loss": sum(losses) / len(losses) if losses else float("nan"),
                "seconds": round(time.perf_counter() - round_start, 2),
            }
            result.rounds.append(record)
            if last:
                result.final = tiers
            if progress:
                bar.write(format_round(config.method, record))
        result.global_state, result.client_ranks = global_state, list(ranks)
        result.wall_seconds = time.perf_counter() - start
        if checkpoint_dir is not None:
            save_checkpoint(
                checkpoint_dir,
                Checkpoint(
                    round_index,
                    global_state,
                    list(ranks),
                    result.rounds,
                    result.traffic,
                    previous_stack,
                    result.config,
                ),
            )
        if on_round is not None:
            on_round(result)
    bar.close()
    result.global_state = global_state
    result.wall_seconds = time.perf_counter() - start
    return result


def segment_record(
    global_state: AdapterState, ladder: tuple[int, ...], scale: float
) -> list[dict[str, Any]]:
    """Per rank segment of the global adapter: ``||s B_seg A_seg||_F`` and its share of the energy.

    Shows whether training concentrates the signal in the prefix, or leaves it stuck in the first
    segment ("rank collapse") or spread evenly (a truncation then loses most of it).
    """
    bounds = segment_bounds(ladder, state_rank(global_state))
    norms = segment_norms(global_state, bounds, scale)
    energy = sum(n * n for n in norms)
    return [
        {"lo": lo, "hi": hi, "norm": n, "share": n * n / energy if energy > 0 else 0.0}
        for (lo, hi), n in zip(bounds, norms, strict=True)
    ]


def uplink_numel(state: AdapterState) -> int:
    """Numbers a client sends: its factors and head (a merged base term is never sent up)."""
    return sum(v.numel() for k, v in state.items() if not k.endswith(MERGED))


def downlink_numel(sent: AdapterState, stacked_numel_previous: int | None) -> int:
    """Numbers a client receives: its prefix and head, or for FLoRA the previous round's stack.

    FLoRA clients rebuild the merged base from the stacked factors of the last round's clients
    (``sum_k r_k (in + out)`` per module), and start from a fresh, seeded adapter.
    """
    if stacked_numel_previous is None:
        return uplink_numel(sent)
    head = sum(v.numel() for k, v in sent.items() if not is_lora_key(k) and not k.endswith(MERGED))
    return head + stacked_numel_previous


def format_round(method: str, record: dict[str, Any]) -> str:
    """One line per round: ``prelort round 3: loss 1.234 | r2 acc 0.512 | r4 ...``."""
    parts = [f"{method} round {record['round']}: loss {record['train_loss']:.3f}"]
    for tier, metrics in record["tiers"].items():
        values = " ".join(f"{_short(k)} {v:.4g}" for k, v in metrics.items())
        parts.append(f"r{tier} {values}")
    return " | ".join(parts)


def _short(metric: str) -> str:
    return {"accuracy": "acc", "perplexity": "ppl", "rouge_l": "rougeL"}.get(metric, metric)
