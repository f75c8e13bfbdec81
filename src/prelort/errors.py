"""Exceptions raised by prelort.

Every error a user can cause (a bad setting, a missing file, a malformed adapter) is a
``PrelortError``; the command line prints its message and exits non-zero without a traceback.
"""

from __future__ import annotations


class PrelortError(Exception):
    """Base class of every error prelort raises on purpose."""


class ConfigError(PrelortError, ValueError):
    """A setting has a wrong value; the message names the field."""


class DataError(PrelortError, ValueError):
    """A dataset is missing, malformed or too small for the requested federation."""


class ModelError(PrelortError, ValueError):
    """A model cannot be found, loaded or adapted."""


class AdapterError(PrelortError, ValueError):
    """An adapter state is malformed: wrong keys, shapes, ranks or values."""


class MethodUnsupported(ConfigError):
    """A method cannot run with a requested feature (secure aggregation, DP, a one-shot merge)."""
