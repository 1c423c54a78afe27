"""User-facing errors.

Every mistake a user can make (bad path, bad config key, shape mismatch, ...) raises a
subclass of :class:`PytcError` whose message is one line saying what is wrong and what to do.
The CLI prints that line in red and exits with code 2; bugs still raise normally.
"""

from __future__ import annotations


class PytcError(Exception):
    """Base class for user mistakes; the message is one actionable line."""

    exit_code = 2

    def __init__(self, message: str):
        # One line: newlines would break the CLI's single-line contract.
        super().__init__(" ".join(str(message).split("\n")))


class ConfigError(PytcError):
    """Invalid configuration file, key, value or override."""


class VolumeError(PytcError):
    """A volume cannot be found, opened, parsed or written."""


class OutputExistsError(VolumeError):
    """An output already exists and ``--force`` was not given."""


class ModelError(PytcError):
    """Unknown architecture or a model that cannot be built with the given settings."""


class CheckpointError(PytcError):
    """A checkpoint is missing, incompatible or unsafe to load."""


class DataError(PytcError):
    """Training or evaluation data that is inconsistent (shapes, dtypes, values)."""
