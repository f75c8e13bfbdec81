"""What travels in Flower messages: a prefix down, a reply up, as Array/Config/Metric records.

Adapters travel as ``ArrayRecord`` in the run's wire format (fp32, float16, or bfloat16 sent as
its 16 bits, since numpy has no bfloat16) and are fp32 once decoded; everything else as scalars.
Decoding a reply checks only its form; whether it may be aggregated is the server step's call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from prelort.adapters.state import AdapterState
from prelort.aggregation.lda import ClassStatistics
from prelort.errors import AdapterError
from prelort.federation.client import ClientReply
from prelort.federation.wire import on_wire

ADAPTER, SETTINGS, METRICS = "adapter", "settings", "metrics"


def to_arrays(state: Mapping[str, torch.Tensor], wire_dtype: str = "float32") -> ArrayRecord:
    sent = on_wire(state, wire_dtype)
    if wire_dtype == "bfloat16":
        sent = {k: v.view(torch.int16) for k, v in sent.items()}
    return ArrayRecord({k: v.detach().contiguous() for k, v in sent.items()})


def from_arrays(record: ArrayRecord, wire_dtype: str = "float32") -> AdapterState:
    arrays = record.to_torch_state_dict()
    if wire_dtype == "bfloat16":
        arrays = {k: v.view(torch.bfloat16) for k, v in arrays.items()}
    # the decoded arrays are read-only views of the message buffer: own them
    return {k: v.float().clone() for k, v in arrays.items()}


def encode_prefix(
    prefix: Mapping[str, torch.Tensor], client: int, round_index: int, wire_dtype: str = "float32"
) -> RecordDict:
    """The server's train message to ``client``: its rank prefix of the global adapter."""
    settings = ConfigRecord({"client": client, "round": round_index})
    return RecordDict({ADAPTER: to_arrays(prefix, wire_dtype), SETTINGS: settings})


def decode_prefix(
    content: RecordDict, wire_dtype: str = "float32"
) -> tuple[AdapterState, int, int]:
    """(prefix, client, round) of a train message.

    Raises:
        AdapterError: a message without the adapter or its settings.
    """
    try:
        settings = content.config_records[SETTINGS]
        return (
            from_arrays(content.array_records[ADAPTER], wire_dtype),
            int(settings["client"]),
            int(settings["round"]),
        )
    except KeyError as missing:
        raise AdapterError(f"a train message without {missing}") from None


def encode_reply(reply: ClientReply, wire_dtype: str = "float32") -> RecordDict:
    """A client's reply; ``num-examples`` is the key Flower's own aggregators read."""
    metrics = MetricRecord(
        {
            "client": reply.client_id,
            "rank": reply.rank,
            "num-examples": reply.num_examples,
            "loss": reply.loss,
            "tail-ratio": reply.tail_ratio,
        }
    )
    return RecordDict({ADAPTER: to_arrays(reply.state, wire_dtype), METRICS: metrics})


def decode_reply(content: RecordDict, wire_dtype: str = "float32") -> ClientReply:
    """A reply as the server step takes it.

    Raises:
        AdapterError: a reply without an adapter or without one of its metrics.
    """
    try:
        metrics = content.metric_records[METRICS]
        state = from_arrays(content.array_records[ADAPTER], wire_dtype)
        client, rank, examples = metrics["client"], metrics["rank"], metrics["num-examples"]
        loss, tail = float(metrics["loss"]), float(metrics["tail-ratio"])
    except KeyError as missing:
        raise AdapterError(f"a reply without {missing}") from None
    if not all(isinstance(v, int) for v in (client, rank)):
        raise AdapterError(f"client and rank must be integers, got {client!r} and {rank!r}")
    return ClientReply(
        client, state, rank, examples, loss if math.isfinite(loss) else math.nan, tail
    )


STATISTICS = "statistics"
STATISTIC_FIELDS = ("counts", "sums", "scatter")


def encode_statistics(client: int, per_tier: Mapping[int, ClassStatistics]) -> RecordDict:
    """A node's calibration reply: per tier its class counts, per-class sums and scatter."""
    arrays = {
        f"{tier}.{name}": getattr(stats, name).contiguous()
        for tier, stats in per_tier.items()
        for name in STATISTIC_FIELDS
    }
    settings = ConfigRecord({"client": client})
    return RecordDict({STATISTICS: ArrayRecord(arrays), SETTINGS: settings})


def decode_statistics(
    content: RecordDict, tiers: Sequence[int], classes: int, width: int
) -> tuple[int, dict[int, ClassStatistics]]:
    """(client, per-tier statistics) of a calibration reply, checked against the run's shapes.

    Raises:
        AdapterError: a missing tier or field, a wrong shape, NaN/Inf, or a negative count.
    """
    try:
        client = int(content.config_records[SETTINGS]["client"])
        arrays = content.array_records[STATISTICS].to_torch_state_dict()
        parts = {
            t: ClassStatistics(*(arrays[f"{t}.{n}"].double() for n in STATISTIC_FIELDS))
            for t in tiers
        }
    except KeyError as missing:
        raise AdapterError(f"a calibration reply without {missing}") from None
    expected = {"counts": (classes,), "sums": (classes, width), "scatter": (width, width)}
    for tier, stats in parts.items():
        for name, shape in expected.items():
            value = getattr(stats, name)
            if tuple(value.shape) != shape:
                raise AdapterError(
                    f"tier {tier} {name} has shape {tuple(value.shape)}, not {shape}"
                )
            if not torch.isfinite(value).all():
                raise AdapterError(f"tier {tier} {name} has NaN or Inf")
        if (stats.counts < 0).any():
            raise AdapterError(f"tier {tier} has a negative class count")
    return client, parts
