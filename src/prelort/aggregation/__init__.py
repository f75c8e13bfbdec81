"""Aggregation rules, one module each, and the methods that pair them with training hooks.

``registry.METHODS`` finds a method by name; ``methods.Method`` holds the hooks by which a method
changes a round (rank pruning, merging, tail penalties, truncation weights).
"""

from prelort.aggregation.base import AggregateFn, ClientUpdate
from prelort.aggregation.flexlora import aggregate_flexlora
from prelort.aggregation.flora import aggregate_flora
from prelort.aggregation.hetlora import aggregate_hetlora
from prelort.aggregation.methods import AggregationContext, Method
from prelort.aggregation.prelort import aggregate_segmentwise
from prelort.aggregation.registry import METHODS, aggregate, get_method
from prelort.aggregation.zeropad import aggregate_zeropad

__all__ = [
    "METHODS",
    "AggregateFn",
    "AggregationContext",
    "ClientUpdate",
    "Method",
    "aggregate",
    "aggregate_flexlora",
    "aggregate_flora",
    "aggregate_hetlora",
    "aggregate_segmentwise",
    "aggregate_zeropad",
    "get_method",
]
