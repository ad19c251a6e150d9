"""User-facing errors.

A ``FaceageError`` carries a message meant for the person at the keyboard; the CLI prints it
on one line and exits with ``exit_code`` instead of showing a traceback.
"""


class FaceageError(Exception):
    exit_code = 2


class ConfigError(FaceageError):
    """A recipe or override names an unknown key or an invalid value."""


class DataError(FaceageError):
    """A dataset yields no usable image, or a split file does not match the data."""


class CheckpointError(FaceageError):
    """A checkpoint is missing, unreadable or not a faceage checkpoint."""
