"""ditta_ros's exceptions: one small hierarchy, each message says what, where and what to do.

The node turns them into failed transitions or counted rejections; console scripts turn them
into one line on stderr and exit code 2.
"""


class DittaError(Exception):
    """Base of every error ditta_ros raises on purpose."""


class ConfigError(DittaError, ValueError):
    """A setting has an invalid value or combination."""


class CheckpointError(DittaError):
    """A checkpoint or adaptation file is missing, unreadable or does not fit the model."""


class InputError(DittaError, ValueError):
    """A frame cannot be processed (shape, dtype, size)."""


class AdaptationError(DittaError):
    """Adaptation could not produce an adapted model (e.g. no SAM2 object at all)."""


class CancelledError(DittaError):
    """Adaptation was cancelled cooperatively."""
