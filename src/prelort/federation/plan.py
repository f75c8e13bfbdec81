"""The federation plan: who holds which rows, at which rank, and who takes part in each round.

Every random choice derives from the config's one seed, per (seed, round, client), so any engine
that builds the plan from the same config sees the same partitions, ranks, samples and streams,
and a resumed run needs no generator state.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from prelort.config import RankSpec, SimulationConfig
from prelort.data.partition import partition_indices

T = TypeVar("T")


def per_client(
    values: Sequence[T], probabilities: Sequence[float] | None, clients: int, seed: int
) -> list[T]:
    """One value per client: ``values`` cycled over clients, or drawn with ``probabilities``."""
    if probabilities is None:
        return [values[k % len(values)] for k in range(clients)]
    generator = torch.Generator().manual_seed(seed)
    draws = torch.multinomial(torch.tensor(probabilities), clients, True, generator=generator)
    return [values[i] for i in draws.tolist()]


def assign_ranks(spec: RankSpec, clients: int, seed: int) -> list[int]:
    """Client ranks: the list cycled over clients, or drawn from the distribution with ``seed``."""
    return per_client(spec.ranks, spec.probabilities, clients, seed)


def client_seed(seed: int, round_index: int, client: int) -> int:
    """A distinct, reproducible seed for one client's training in one round."""
    return (seed * 1_000_003 + round_index * 10_007 + client) % (2**63 - 1)


def round_seed(seed: int, round_index: int, salt: int) -> int:
    """A reproducible seed for one round's draws (client sampling: salt 1; failures: salt 2)."""
    return (seed * 7_919 + round_index * 104_729 + salt) % (2**63 - 1)


@dataclass(frozen=True)
class FederationPlan:
    """Partitions, initial ranks and the per-round draws of one run.

    Attributes:
        seed: the run's seed.
        client_rows: each client's rows of the training split.
        client_ranks: each client's rank at round 1 (a method may map or prune them later).
        per_round: clients sampled each round.
        failure_rate: probability that a sampled client's reply never arrives (simulated).
    """

    seed: int
    client_rows: tuple[tuple[int, ...], ...]
    client_ranks: tuple[int, ...]
    per_round: int
    failure_rate: float = 0.0

    @property
    def clients(self) -> int:
        return len(self.client_rows)

    def sampled(self, round_index: int) -> list[int]:
        """The clients of round ``round_index``, sorted."""
        sampler = torch.Generator().manual_seed(round_seed(self.seed, round_index, 1))
        return sorted(torch.randperm(self.clients, generator=sampler)[: self.per_round].tolist())

    def fails(self, round_index: int, sampled: Sequence[int]) -> list[bool]:
        """For each sampled client, whether its reply is lost this round (simulated failures)."""
        stream = torch.Generator().manual_seed(round_seed(self.seed, round_index, 2))
        draws = torch.rand(len(sampled), generator=stream).tolist()
        return [d < self.failure_rate for d in draws]

    def draw(self, round_index: int) -> RoundDraw:
        """Round ``round_index``'s clients, the same in every engine: sampled, and which lose
        their reply (simulated failures)."""
        sampled = self.sampled(round_index)
        lost = self.fails(round_index, sampled)
        return RoundDraw(
            tuple(sampled), frozenset(c for c, gone in zip(sampled, lost, strict=True) if gone)
        )

    def client_seed(self, round_index: int, client: int) -> int:
        return client_seed(self.seed, round_index, client)

    def num_examples(self, client: int) -> int:
        return len(self.client_rows[client])


@dataclass(frozen=True)
class RoundDraw:
    """One round's clients: ``sampled`` (sorted) and those of them whose reply is ``lost``."""

    sampled: tuple[int, ...]
    lost: frozenset[int] = frozenset()

    @property
    def reached(self) -> list[int]:
        """The sampled clients whose reply will arrive, in order."""
        return [c for c in self.sampled if c not in self.lost]


def build_plan(
    config: SimulationConfig, train_labels: Sequence[int], client_ranks: Sequence[int] | None = None
) -> FederationPlan:
    """The plan of a run from its settings and the training labels (which the partitioner splits).

    Args:
        config: the run's settings (seed, clients, partition, ranks, sampling).
        train_labels: the label (or group) of every training row.
        client_ranks: the ranks the method trains at, from ``assign_ranks`` (default: those).

    Raises:
        DataError: too few examples for the clients, or an unsatisfiable partition.
    """
    pool = list(range(len(train_labels)))
    if config.train_examples is not None and config.train_examples < len(pool):
        pool = sorted(random.Random(config.seed).sample(pool, config.train_examples))
    parts = partition_indices(
        [train_labels[i] for i in pool],
        config.clients,
        config.partition,
        config.seed,
        config.dirichlet_alpha,
        config.classes_per_client,
        min_examples=2,
    )
    if client_ranks is None:
        client_ranks = assign_ranks(config.ranks, config.clients, config.seed)
    return FederationPlan(
        config.seed,
        tuple(tuple(pool[i] for i in part) for part in parts),
        tuple(client_ranks),
        config.clients_per_round or config.clients,
        config.client_failure_rate,
    )
