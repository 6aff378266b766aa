"""Field metadata for the shot config dataclasses.

Every config field is declared with :func:`spec`, which stores what the validator and the
generated reference (``python -m engine.shot.docs``) need: a one-line doc, an example
value, the allowed values and, where the default depends on other keys, a description
of that default. Keeping this next to the type means the reference cannot drift from the
code.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

_NO_DEFAULT: Any = dataclasses.MISSING


def spec(default: Any = _NO_DEFAULT, *, doc: str, example: Any,
         default_factory: Callable[[], Any] | None = None,
         choices: Sequence[Any] | None = None,
         default_doc: str | None = None,
         type_doc: str | None = None,
         parse: Callable[[Any], Any] | None = None,
         check: Callable[[Any], Any] | None = None) -> Any:
    """Declare a config field.

    ``default`` / ``default_factory``: the value when the key is absent (neither: required).
    ``doc``: one line for the reference. ``example``: a valid YAML value for the key.
    ``choices``: the allowed values (shown in the reference, enforced by the loader).
    ``default_doc``: how the loader derives the default when it depends on other keys (the
    dataclass default is then a placeholder, usually ``None``).
    ``type_doc``: the type as users write it, where the Python type would mislead.
    ``parse``: converts the value as written (replaces the type-driven conversion).
    ``check``: validates/normalises the typed value.
    Both raise ``ValueError`` with a one-line message for a bad value.
    """
    metadata = {"doc": doc, "example": example, "choices": tuple(choices) if choices else None,
                "default_doc": default_doc, "type_doc": type_doc, "parse": parse, "check": check}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    if default is _NO_DEFAULT:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def config_fields(cls: type) -> list[dataclasses.Field]:
    """The user-facing fields of a config dataclass (those declared with :func:`spec`)."""
    return [f for f in dataclasses.fields(cls) if "doc" in f.metadata]
