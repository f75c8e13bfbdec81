"""prelort: federated LoRA fine-tuning under rank heterogeneity.

PreLort treats every client's LoRA adapter as a prefix of one nested adapter of the maximum
rank R, trains each adapter under several truncations (prefix-nested training) and aggregates
each rank segment only over the clients that hold it (segment-wise aggregation).
"""

from prelort.errors import AdapterError, ConfigError, DataError, ModelError, PrelortError

__version__ = "0.1.0"

__all__ = [
    "AdapterError",
    "ConfigError",
    "DataError",
    "ModelError",
    "PrelortError",
    "__version__",
]
