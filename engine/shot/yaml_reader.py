"""Safe YAML reading for shot configs: plain data, a line for every key, duplicate-key detection.

Why not ``yaml.safe_load``:

* PyYAML silently keeps the last of two equal keys; a shot with ``fps`` written twice would
  render at whichever came last. We walk the composed node tree ourselves and report it.
* Problems must name the YAML line of the key they are about, so every key path and list
  item gets the line it was written on.
* PyYAML implements YAML 1.1 scalars, whose surprises hurt here: ``10:00:00:00`` (a
  timecode) is the base-60 integer 2160000, ``shot: 010`` is octal 8, ``yes``/``on`` are
  booleans and ``1e-4`` is a string. :class:`ShotYamlLoader` resolves plain scalars by the
  YAML 1.2 core schema instead: only ``true``/``false`` are booleans, ``null``/``~``/empty
  is null, decimal/``0x``/``0o`` integers, floats with ``.`` or an exponent, everything else
  a string (no timestamps).

Only SafeLoader machinery is used (never a full loader): no Python objects are ever built
from tags, and unknown tags are reported as problems.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

KeyPath = tuple[Any, ...]  # str keys and int list indices

# Generous for a shot file; stops "billion laughs" alias bombs before they eat memory.
MAX_NODES = 100_000

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class ShotYamlLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema implicit scalars (see module doc)."""


ShotYamlLoader.yaml_implicit_resolvers = {}
ShotYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
ShotYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])
ShotYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"))
ShotYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?[0-9]+[eE][-+]?[0-9]+"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+.0123456789"))
ShotYamlLoader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])


def _construct_int_core(loader: ShotYamlLoader, node: ScalarNode) -> int:
    # YAML 1.2: "010" is ten (1.1 read it as octal eight); "0o17" octal, "0x1F" hex.
    text = loader.construct_scalar(node).replace("_", "")
    sign = -1 if text.startswith("-") else 1
    body = text.lstrip("+-")
    if body.startswith("0x"):
        return sign * int(body[2:], 16)
    if body.startswith("0o"):
        return sign * int(body[2:], 8)
    return sign * int(body, 10)


ShotYamlLoader.add_constructor("tag:yaml.org,2002:int", _construct_int_core)


class YamlSyntaxError(Exception):
    """The text is not YAML (or uses something shot files do not allow); ``line`` is 1-based."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass
class YamlDocument:
    """A parsed shot file: plain data plus where everything was written."""

    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)      # key path -> 1-based line
    texts: dict[KeyPath, str] = field(default_factory=dict)      # plain scalar -> source text
    duplicates: list[tuple[KeyPath, int, int]] = field(default_factory=list)  # (path, line, first line)
    tag_problems: list[tuple[KeyPath, int, str]] = field(default_factory=list)


def _mark_line(mark: Any) -> int | None:
    return None if mark is None else mark.line + 1


def _yaml_error(exc: yaml.YAMLError) -> YamlSyntaxError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    text = f"{context}, {problem}" if context else str(problem)
    return YamlSyntaxError(f"invalid YAML: {' '.join(text.split())}", _mark_line(mark))


class _Walker:
    """Turns a composed node tree into plain data, recording lines and duplicate keys."""

    def __init__(self, loader: ShotYamlLoader, doc: YamlDocument) -> None:
        self.loader = loader
        self.doc = doc
        self.count = 0
        self.stack: set[int] = set()

    def build(self, node: Node, path: KeyPath) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise YamlSyntaxError(f"invalid YAML: more than {MAX_NODES} values (alias bomb?)",
                                  _mark_line(node.start_mark))
        if id(node) in self.stack:
            raise YamlSyntaxError("invalid YAML: recursive alias", _mark_line(node.start_mark))
        self.stack.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            if isinstance(node, SequenceNode):
                return self._sequence(node, path)
            return self._scalar(node, path)
        finally:
            self.stack.discard(id(node))

    def _mapping(self, node: MappingNode, path: KeyPath) -> dict[Any, Any]:
        if node.tag != _MAP_TAG:
            self.doc.tag_problems.append((path, _mark_line(node.start_mark) or 0,
                                          f"unsupported YAML tag {node.tag!r}"))
        # Duplicates among the keys written in this mapping; keys pulled in by a `<<` merge
        # may legitimately be overridden, so they are not duplicates.
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, ScalarNode):
                continue
            key = self._key(key_node)
            line = _mark_line(key_node.start_mark) or 0
            if key in seen:
                self.doc.duplicates.append((path + (key,), line, seen[key]))
            else:
                seen[key] = line
        try:
            self.loader.flatten_mapping(node)
        except yaml.YAMLError as exc:
            raise _yaml_error(exc) from None
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                raise YamlSyntaxError("invalid YAML: a mapping key must be a plain name, not a "
                                      "list or mapping", _mark_line(key_node.start_mark))
            key = self._key(key_node)
            sub = path + (key,)
            self.doc.lines[sub] = _mark_line(key_node.start_mark) or 0
            out[key] = self.build(value_node, sub)
        return out

    def _sequence(self, node: SequenceNode, path: KeyPath) -> list[Any]:
        if node.tag != _SEQ_TAG:
            self.doc.tag_problems.append((path, _mark_line(node.start_mark) or 0,
                                          f"unsupported YAML tag {node.tag!r}"))
        out = []
        for i, item in enumerate(node.value):
            self.doc.lines[path + (i,)] = _mark_line(item.start_mark) or 0
            out.append(self.build(item, path + (i,)))
        return out

    def _key(self, key_node: ScalarNode) -> Any:
        key = self._construct(key_node, ())
        try:
            hash(key)
        except TypeError:
            raise YamlSyntaxError("invalid YAML: unhashable mapping key",
                                  _mark_line(key_node.start_mark)) from None
        return key

    def _scalar(self, node: ScalarNode, path: KeyPath) -> Any:
        if node.style is None:  # plain scalar: keep the text (e.g. shot `010` stays "010")
            self.doc.texts[path] = node.value
        return self._construct(node, path)

    def _construct(self, node: ScalarNode, path: KeyPath) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError:
            self.doc.tag_problems.append((path, _mark_line(node.start_mark) or 0,
                                          f"unsupported YAML tag {node.tag!r}"))
            return node.value
        except (ValueError, TypeError) as exc:  # e.g. !!int "abc", !!binary "%%%"
            self.doc.tag_problems.append((path, _mark_line(node.start_mark) or 0,
                                          f"bad value for tag {node.tag!r}: {exc}"))
            return node.value


def parse_yaml(text: str) -> YamlDocument:
    """Parse one YAML document; raises :class:`YamlSyntaxError` for text that is not YAML."""
    loader = ShotYamlLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise _yaml_error(exc) from None
        doc = YamlDocument(data=None)
        if node is None:
            return doc
        doc.data = _Walker(loader, doc).build(node, ())
        return doc
    finally:
        loader.dispose()
