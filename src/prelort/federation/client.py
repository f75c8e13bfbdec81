"""The client step: the received rank prefix and the client's rows in, one reply out.

It needs the model and the data, never the aggregation rules: the same function runs inside the
in-process simulation and inside a Flower ClientApp.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from prelort.adapters.heads import tier_of
from prelort.adapters.inject import NestedLoRAModel
from prelort.adapters.state import AdapterState, get_state, set_state, state_rank
from prelort.data.encoding import EncodedSplit
from prelort.training.local import LocalTrainingConfig, train_local
from prelort.training.objective import PLAIN, LocalObjective


@dataclass(frozen=True)
class ClientReply:
    """What a client sends back after a round.

    Attributes:
        client_id: the client (its partition).
        state: its trained rank-``rank`` adapter: A (rank, in), B (out, rank), and the heads of
            the tiers it trained.
        rank: the adapter's rank.
        num_examples: its training examples, the weight of the reply.
        loss: mean training loss.
        tail_ratio: ``||tail update|| / ||update||`` over the method's tail (0 if it has none).
    """

    client_id: int
    state: AdapterState
    rank: int
    num_examples: int
    loss: float
    tail_ratio: float = 0.0


def client_step(
    adapted: NestedLoRAModel,
    received: Mapping[str, torch.Tensor],
    data: EncodedSplit,
    rows: Sequence[int],
    kind: str,
    pad_id: int,
    ladder: Sequence[int],
    config: LocalTrainingConfig,
    client_id: int,
    seed: int,
    objective: LocalObjective = PLAIN,
) -> ClientReply:
    """Load the received prefix, train it on ``rows``, and report.

    Args:
        adapted: the shared model; its adapter is overwritten by ``received``.
        received: the rank-r prefix (and head) the server sent; r is the client's rank.
        data: the encoded training split; ``rows`` are this client's.
        rows: the client's rows of ``data``.
        kind: "classification" or "generation".
        pad_id: the tokenizer's pad id.
        ladder: the ranks in use; nested training truncates at those <= r.
        config: local training settings.
        client_id: the client's id, echoed in the reply.
        seed: the (seed, round, client) seed of its batches, truncations and dropout.
        objective: the method's part of local training (``Method.local_objective``).
    """
    rank = state_rank(received)
    set_state(adapted, received)
    objective.prepare(adapted, rank, seed)
    torch.manual_seed(seed)  # base-model dropout draws from the global stream
    local = train_local(
        adapted,
        data,
        rows,
        kind,
        pad_id,
        rank,
        ladder,
        config,
        torch.Generator().manual_seed(seed),
        objective,
    )
    trained_tiers = {tier_of(r, ladder) for r in local.trained_ranks}
    return ClientReply(
        client_id,
        get_state(adapted, head_tiers=trained_tiers),
        rank,
        len(rows),
        local.mean_loss,
        local.tail_ratio,
    )
