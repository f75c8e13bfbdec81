"""What a run produces: per-round and final metrics per tier, traffic, the final adapter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from prelort.adapters.state import AdapterState
from prelort.aggregation.budget import ACCOUNTANT
from prelort.evaluation.tiers import TierMetrics
from prelort.federation.records import RoundRecord, TrafficRecord


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
        wall_seconds: the run's wall time, workbench loading excluded; a resumed run's counts
            every leg (the checkpoint keeps the time so far).
        phase_seconds: how this process's wall time split: ``train`` (client steps),
            ``aggregate`` (server steps), ``evaluate`` (tier metrics, records, checkpoints) and,
            with a calibration, ``calibrate`` (client statistics, LDA heads, their evaluation).
        rank_plan: ranks from memory budgets (``prelort.budgets.budget_plan``), or None.
        environment: package versions and device (``prelort.environment``).
        samples: per tier, a few generations of the last ROUGE-L evaluation (samples.json).
        examples: per tier and metric, each test example's final score (examples.json), in
            the same order for every method and seed of a task: what paired comparisons resample.
        calibrated_state: the final adapter with one LDA head per tier, when the calibration
            round ran (calibrated.safetensors); empty otherwise.
        head_inputs: per tier, the test examples' head inputs after the last round (head
            objective), which the calibration round's heads are scored on; not written.
    """

    config: dict[str, Any]
    client_ranks: list[int]
    client_examples: list[int]
    rounds: list[RoundRecord] = field(default_factory=list)
    final: TierMetrics = field(default_factory=dict)
    global_state: AdapterState = field(default_factory=dict)
    traffic: list[TrafficRecord] = field(default_factory=list)
    wall_seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)
    rank_plan: dict[str, Any] | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    examples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    calibrated_state: AdapterState = field(default_factory=dict)
    head_inputs: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "client_ranks": self.client_ranks,
            "client_examples": self.client_examples,
            "rounds": self.rounds,
            "final": {"tiers": self.final},
            "traffic": self.traffic,
            "wall_seconds": round(self.wall_seconds, 2),
            "phase_seconds": {k: round(v, 2) for k, v in self.phase_seconds.items()},
            **({"rank_plan": self.rank_plan} if self.rank_plan is not None else {}),
            **({"environment": self.environment} if self.environment else {}),
            **({"privacy": self.privacy_budget()} if self.privacy_budget() else {}),
        }

    def privacy_budget(self) -> dict[str, Any] | None:
        """The run's client-level (ε, δ) after its last round, or None without DP."""
        records = [t["privacy"] for t in self.traffic if t.get("privacy")]
        if not records:
            return None
        last = records[-1]
        return {
            "epsilon": last.get("epsilon"),
            "delta": last.get("delta"),
            "noise_multiplier": last["noise_multiplier"],
            "clip": last["clip"],
            "sample_rate": (self.config.get("clients_per_round") or self.config["clients"])
            / self.config["clients"],
            "rounds": len(self.traffic),
            "accountant": ACCOUNTANT,
        }
