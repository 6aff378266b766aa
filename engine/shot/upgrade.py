"""Schema versions and upgrade functions (the OpenTimelineIO "schema version" pattern).

A shot file declares ``schema: portrait.shot/N``. When the schema changes incompatibly the
current version goes up by one and an upgrade function is registered for the old version:
it takes the plain dict of a version-N file and returns the equivalent version-N+1 dict.
Loading an older file runs the chain N -> N+1 -> ... -> current on the raw data before
validation, so old shots keep working and are validated by today's rules. A label newer
than this code understands, or not a shot label at all, is a clear error.

Register an upgrade next to the schema change::

    @register_upgrade(1)          # turns a portrait.shot/1 dict into portrait.shot/2
    def _v1_to_v2(data: dict) -> dict:
        data["drive"]["offset"] = data["drive"].pop("delay", 0)
        return data
"""
from __future__ import annotations

import copy
import re
from typing import Any, Callable

from engine.shot.schema import CURRENT_VERSION, SCHEMA_LABEL, SCHEMA_NAME

UpgradeFn = Callable[[dict[str, Any]], dict[str, Any]]

_LABEL_RE = re.compile(r"^" + re.escape(SCHEMA_NAME) + r"/(\d+)$")


class UpgradeError(ValueError):
    """An upgrade chain cannot run (missing link, or an upgrade function rejected the data)."""


class UpgradeRegistry:
    """Upgrade functions keyed by the version they upgrade *from*."""

    def __init__(self) -> None:
        self._fns: dict[int, UpgradeFn] = {}

    def register(self, from_version: int) -> Callable[[UpgradeFn], UpgradeFn]:
        """Decorator: ``fn(dict) -> dict`` upgrades ``from_version`` to ``from_version + 1``."""
        if not isinstance(from_version, int) or isinstance(from_version, bool) or from_version < 0:
            raise ValueError(f"from_version must be a non-negative integer, got {from_version!r}")

        def decorator(fn: UpgradeFn) -> UpgradeFn:
            if from_version in self._fns:
                raise ValueError(f"an upgrade from version {from_version} is already registered "
                                 f"({self._fns[from_version].__qualname__})")
            self._fns[from_version] = fn
            return fn
        return decorator

    def unregister(self, from_version: int) -> None:
        self._fns.pop(from_version, None)

    def versions(self) -> list[int]:
        return sorted(self._fns)

    def upgrade(self, data: dict[str, Any], from_version: int, to_version: int) -> dict[str, Any]:
        """Run the chain ``from_version -> to_version`` on a deep copy of ``data``."""
        if from_version > to_version:
            raise UpgradeError(f"cannot downgrade from version {from_version} to {to_version}")
        missing = [v for v in range(from_version, to_version) if v not in self._fns]
        if missing:
            raise UpgradeError(f"no upgrade registered from {SCHEMA_NAME}/{missing[0]} to "
                               f"{SCHEMA_NAME}/{missing[0] + 1}")
        out = copy.deepcopy(data)
        for version in range(from_version, to_version):
            try:
                out = self._fns[version](out)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                # Upgrade functions see user data that may be malformed in ways the new
                # schema's validation would report; say which step failed and why.
                raise UpgradeError(f"cannot upgrade from {SCHEMA_NAME}/{version}: "
                                   f"{type(exc).__name__}: {exc}") from exc
            if not isinstance(out, dict):
                raise UpgradeError(f"upgrade from {SCHEMA_NAME}/{version} returned "
                                   f"{type(out).__name__}, not a mapping")
            out["schema"] = f"{SCHEMA_NAME}/{version + 1}"
        return out


SHOT_UPGRADES = UpgradeRegistry()
register_upgrade = SHOT_UPGRADES.register
unregister_upgrade = SHOT_UPGRADES.unregister


def parse_schema_label(value: Any) -> int:
    """``"portrait.shot/1"`` -> 1; raises ValueError for anything this code cannot read."""
    if not isinstance(value, str):
        raise ValueError(f"schema label must be a string like {SCHEMA_LABEL!r}, got {value!r}")
    m = _LABEL_RE.match(value.strip())
    if not m:
        raise ValueError(f"unknown schema label {value!r} (expected {SCHEMA_LABEL!r})")
    version = int(m.group(1))
    if version > CURRENT_VERSION:
        raise ValueError(f"schema {value!r} is newer than this Portrait Engine understands "
                         f"(up to {SCHEMA_LABEL}); upgrade Portrait Engine")
    return version


def upgrade_to_current(data: dict[str, Any], version: int,
                       registry: UpgradeRegistry = SHOT_UPGRADES) -> dict[str, Any]:
    if version == CURRENT_VERSION:
        return data
    return registry.upgrade(data, version, CURRENT_VERSION)
