"""Federated methods, one module each: an aggregation rule and the hooks of its ``Method``.

``registry.get_method`` finds a method by name (``registry.methods()`` lists them); a method
module registers itself, so nothing here lists them.
"""

from prelort.aggregation.base import AggregateFn, ClientUpdate
from prelort.aggregation.flexlora import aggregate_flexlora
from prelort.aggregation.flora import aggregate_flora
from prelort.aggregation.hetlora import aggregate_hetlora
from prelort.aggregation.method import AggregationContext, Method
from prelort.aggregation.prelort import aggregate_segmentwise
from prelort.aggregation.registry import aggregate, get_method, methods
from prelort.aggregation.zeropad import aggregate_zeropad

__all__ = [
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
    "methods",
]
