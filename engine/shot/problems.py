"""Problems found in a shot config, and the one error that carries them.

Validation collects every problem instead of stopping at the first, so that a user fixes a
shot file in one round trip. Each problem names the file, the key path (``drive.region``,
``actor.media[1]``) and the YAML line where one is known, and prints on one line as
``FILE:LINE: key.path: message`` (the format editors and CI annotators understand).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from engine.errors import ConfigError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a shot config."""

    file: str
    key_path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key_path}: {self.message}" if self.key_path else f"{where}: {self.message}"


class ShotConfigError(ConfigError):
    """A shot config is invalid; ``problems`` lists everything wrong with it (one line each)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems) or "invalid shot config")


def sort_problems(problems: Sequence[Problem]) -> list[Problem]:
    """File order (by line; problems without a line last), stable within a line."""
    return sorted(problems, key=lambda p: (p.line is None, p.line or 0))
