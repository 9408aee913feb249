"""Compatibility alias: the exceptions live in :mod:`ditta_ros.errors` (a leaf module that
``config.py`` and ``labels.py`` import without loading the engine package). Import from
there; this module re-exports the same classes, so ``except`` clauses match either way."""

from ditta_ros.errors import (
    AdaptationError,
    CancelledError,
    CheckpointError,
    ConfigError,
    DittaError,
    InputError,
)

__all__ = ["AdaptationError", "CancelledError", "CheckpointError", "ConfigError", "DittaError",
           "InputError"]
