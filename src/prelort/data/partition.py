"""Non-IID client partitions with ``flwr-datasets`` partitioners over in-memory labels.

``flwr-datasets`` and ``datasets`` are imported when a partition is made, so that the rest of the
package (adapters, aggregation, training, evaluation) imports on a machine that has neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from prelort.errors import ConfigError, DataError

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner

PARTITIONS = ("iid", "dirichlet", "pathological")


def make_partitioner(
    scheme: str, num_clients: int, seed: int, alpha: float, classes_per_client: int
) -> Partitioner:
    """A new partitioner: a partitioner takes one dataset, so each run needs its own."""
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
    )

    if scheme == "iid":
        return IidPartitioner(num_partitions=num_clients)
    if scheme == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            alpha=alpha,
            min_partition_size=2,
            self_balancing=True,
            seed=seed,
        )
    if scheme == "pathological":
        return PathologicalPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            num_classes_per_partition=classes_per_client,
            seed=seed,
        )
    raise ConfigError(
        f"partition: unknown scheme {scheme!r}; choose one of {', '.join(PARTITIONS)}"
    )


def partition_indices(
    labels: Sequence[int],
    num_clients: int,
    scheme: str = "dirichlet",
    seed: int = 0,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    min_examples: int = 1,
) -> list[list[int]]:
    """Split example indices over clients.

    Args:
        labels: the label (or group) of every training example.
        num_clients: how many partitions.
        scheme: "iid", "dirichlet" (label proportions ~ Dir(alpha)) or "pathological"
            (``classes_per_client`` labels per client).
        seed: seeds the partitioner.
        alpha: Dirichlet concentration; smaller is more skewed.
        classes_per_client: labels per client for "pathological".
        min_examples: every client must get at least this many examples.

    Returns:
        One list of indices into ``labels`` per client.

    Raises:
        DataError: too few examples for the clients, or the partitioner cannot satisfy the scheme.
    """
    if len(labels) < num_clients * min_examples:
        raise DataError(
            f"{len(labels)} training examples are too few for {num_clients} clients "
            f"with at least {min_examples} each"
        )
    from datasets import Dataset

    partitioner = make_partitioner(scheme, num_clients, seed, alpha, classes_per_client)
    partitioner.dataset = Dataset.from_dict(
        {"label": list(labels), "index": list(range(len(labels)))}
    )
    try:
        parts = [list(partitioner.load_partition(k)["index"]) for k in range(num_clients)]
    except ValueError as e:
        raise DataError(
            f"partition: {scheme} partitioning of {len(labels)} examples failed: {e}"
        ) from None
    small = [k for k, p in enumerate(parts) if len(p) < min_examples]
    if small:
        raise DataError(
            f"partition: clients {small[:5]} got fewer than {min_examples} examples; use fewer "
            "clients, more examples or a larger Dirichlet alpha"
        )
    return parts
