"""Packaged datasets, a user's own files, tokenisation and client partitions."""

from prelort.data.encoding import EncodedSplit, encode_split, make_batch
from prelort.data.partition import PARTITIONS, partition_indices
from prelort.data.tasks import (
    CLASSIFICATION,
    GENERATION,
    PACKAGED_TASKS,
    FileFields,
    Split,
    TaskData,
    load_task,
)

__all__ = [
    "CLASSIFICATION",
    "GENERATION",
    "PACKAGED_TASKS",
    "PARTITIONS",
    "EncodedSplit",
    "FileFields",
    "Split",
    "TaskData",
    "encode_split",
    "load_task",
    "make_batch",
    "partition_indices",
]
