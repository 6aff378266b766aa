"""The one exception hierarchy of Portrait Engine.

Every error a user can cause (bad YAML, corrupt media, an existing version, ...) is a
subclass of :class:`PortraitError`; CLIs catch it and print ``error: <message>`` on one
line, exiting non-zero. Anything else escaping is a bug and keeps its traceback.
"""
from __future__ import annotations


class PortraitError(Exception):
    """Base class of every error Portrait Engine raises on purpose."""

    exit_code = 1


class ConfigError(PortraitError):
    """A configuration (shot YAML, preset, override) is invalid."""

    exit_code = 2


class MediaError(PortraitError):
    """Media cannot be read or written: missing, corrupt, wrong fps, no audio, ..."""


class OutputExistsError(PortraitError):
    """Refusing to overwrite an existing output (versions never overwrite)."""


class StageError(PortraitError):
    """A pipeline stage failed; carries the (possibly remote) traceback text."""

    def __init__(self, message: str, traceback_text: str = "") -> None:
        super().__init__(message)
        self.traceback_text = traceback_text
