"""Versioned ``.npz`` hand-off files: a JSON header (array ``header``) plus named arrays.

The tracking file and the drive file share this layout and its rules (OpenTimelineIO-style
schema labels): a reader checks the schema name, refuses a file from a newer engine with one
line, and upgrades an older one in memory through registered functions
``fn(header, arrays) -> (header, arrays)`` that each advance ``header["schema_version"]`` by
one, so a schema change never strands the files of earlier shots.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine.errors import MediaError

__all__ = ["SchemaNpz", "UpgradeFn", "one_line", "json_default"]

UpgradeFn = Callable[[dict, dict], tuple[dict, dict]]


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` for headers: numpy scalars/arrays, paths, Fractions."""
    from fractions import Fraction

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, Fraction)):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class SchemaNpz:
    """One file kind: ``schema`` name, current ``version``, a short name ("tracking") for
    messages and what the user should do with a file that cannot be upgraded ("re-track the
    media")."""

    def __init__(self, schema: str, version: int, short: str, redo: str) -> None:
        self.schema = schema
        self.version = int(version)
        self.short = short
        self.noun = f"{short} file"
        self.redo = redo
        self.upgrades: dict[int, UpgradeFn] = {}

    @property
    def label(self) -> str:
        return f"{self.schema}/{self.version}"

    def register_upgrade(self, from_version: int, fn: UpgradeFn) -> None:
        """``fn`` turns a ``from_version`` file into ``from_version + 1`` (it must set
        ``header["schema_version"]``)."""
        self.upgrades[int(from_version)] = fn

    def unregister_upgrade(self, from_version: int) -> None:
        self.upgrades.pop(int(from_version), None)

    def write(self, path: str | Path, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
        """Write ``arrays`` plus the JSON ``header`` atomically (a reader sees the old file or
        the new one, never half)."""
        from engine.util.atomic import atomic_path

        out = dict(arrays)
        out["header"] = np.array(json.dumps(header, sort_keys=True, default=json_default))
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **out)
        return Path(path)

    def read_header(self, path: str | Path) -> dict[str, Any]:
        """Only the JSON header (cheap: the arrays are not decompressed)."""
        p = Path(path)
        try:
            with np.load(p, allow_pickle=False) as z:
                if "header" not in z.files:
                    raise MediaError(f"{p} is not a Portrait Engine {self.noun} (no header)")
                text = str(z["header"])
        except FileNotFoundError:
            raise MediaError(f"{self.noun} not found: {p}") from None
        except (OSError, ValueError, EOFError) as exc:
            raise MediaError(f"cannot read {self.noun} {p}: {one_line(exc)}") from None
        try:
            header = json.loads(text)
        except ValueError:
            raise MediaError(f"{p}: {self.noun} header is not valid JSON") from None
        if not isinstance(header, dict) or header.get("schema") != self.schema:
            got = header.get("schema") if isinstance(header, dict) else None
            raise MediaError(f"{p} is not a Portrait Engine {self.noun} (schema {got!r})")
        return header

    def load(self, path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(header, arrays) at the current version; one-line MediaError if unusable."""
        p = Path(path)
        header = self.read_header(p)
        try:
            version = int(header.get("schema_version", 0))
        except (TypeError, ValueError):
            raise MediaError(f"{p}: {self.short} schema_version {header.get('schema_version')!r} "
                             "is not an integer") from None
        if version > self.version:
            raise MediaError(f"{p} was written by a newer Portrait Engine ({header.get('engine_version')}; "
                             f"{self.short} schema {version} > {self.version}): upgrade the engine or {self.redo}")
        try:
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files if k != "header"}
        except (OSError, ValueError, EOFError) as exc:
            raise MediaError(f"cannot read {self.noun} {p}: {one_line(exc)}") from None
        while version < self.version:
            fn = self.upgrades.get(version)
            if fn is None:
                raise MediaError(f"{p}: no upgrade from {self.short} schema {version} to {self.version}; {self.redo}")
            header, arrays = fn(dict(header), dict(arrays))
            new = int(header.get("schema_version", version))
            if new <= version:
                raise RuntimeError(f"{self.short} upgrade from version {version} did not advance schema_version")
            version = new
        header["schema_label"] = self.label
        return header, arrays
