"""Load and validate shot YAML files into :class:`engine.shot.schema.Shot`.

Validation collects every problem (file, key path, line, message) rather than stopping at
the first. It runs in three passes:

1. YAML: parsed safely (:mod:`engine.shot.yaml_reader`), with duplicate keys and unsupported
   tags reported.
2. Schema label: ``schema: portrait.shot/N``; older versions are upgraded to the current one
   (:mod:`engine.shot.upgrade`), newer or unknown labels stop here.
3. Fields: the dataclasses in :mod:`engine.shot.schema` drive type conversion, unknown-key
   rejection (listing the valid keys) and per-field checks; then the rules that span keys
   (frame range, plate coverage, drive mode vs source, ...) and the file checks.

A problem in one value never cascades: anything that depends on an invalid value is not
checked, so each mistake is reported once.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
from collections.abc import Mapping as AbcMapping
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from engine.shot.fields import config_fields, default_of, is_required
from engine.shot.problems import Problem, ShotConfigError, sort_problems
from engine.shot.schema import (ActorConfig, DriveConfig, FaceModelConfig, FramesConfig,
                                PlateConfig, SCHEMA_LABEL, Shot)
from engine.shot.upgrade import UpgradeError, parse_schema_label, upgrade_to_current
from engine.shot.values import (describe, fps_to_str, media_exists, media_kind, parse_timecode)
from engine.shot.yaml_reader import KeyPath, YamlDocument, YamlSyntaxError, parse_yaml


class _Invalid:
    """Marks a value that failed validation (already reported)."""

    def __repr__(self) -> str:
        return "<invalid>"


INVALID: Any = _Invalid()


def format_key_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


class _Context:
    """Where problems go, and what is known about the file they are in."""

    def __init__(self, file: str, base_dir: Path, doc: YamlDocument | None, check_files: bool) -> None:
        self.file = file
        self.base_dir = base_dir
        self.lines = doc.lines if doc else {}
        self.texts = doc.texts if doc else {}
        self.check_files = check_files
        self.from_file = False  # set once a file's text was parsed (its lines are known)
        self.problems: list[Problem] = []
        self.written: dict[KeyPath, str] = {}  # path fields: the text as written, for messages
        self.data_keys: dict[KeyPath, set[Any]] = {}  # keys written under each mapping path

    def given(self, path: KeyPath) -> set[Any]:
        """Keys written in the file under ``path`` (to tell a default from an explicit value)."""
        return self.data_keys.get(tuple(path), set())

    def line(self, path: KeyPath) -> int | None:
        # The key's own line, else its nearest written ancestor (a missing key is reported
        # at the section that should hold it).
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return 1 if self.from_file and not path else None  # about the whole file: its first line

    def err(self, path: KeyPath, message: str, line: int | None = None) -> Any:
        where = line if line is not None else self.line(path)
        self.problems.append(Problem(self.file, format_key_path(path), where, message))
        return INVALID


# ------------------------------------------------------------------------ type conversion
def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _choice(value: Any, choices: tuple[Any, ...], path: KeyPath, ctx: _Context) -> Any:
    allowed = ", ".join(str(c) for c in choices)
    if isinstance(value, str):
        by_lower = {str(c).lower(): c for c in choices}
        hit = by_lower.get(value.strip().lower())
        if hit is not None:
            return hit
        return ctx.err(path, f"invalid value {value!r}{_suggest(value, [str(c) for c in choices])}; "
                             f"allowed: {allowed}")
    return ctx.err(path, f"expected one of: {allowed}; got {describe(value)}")


def _resolve_path(text: str, ctx: _Context) -> Path:
    p = Path(os.path.expanduser(text))
    if not p.is_absolute():
        p = ctx.base_dir / p
    return Path(os.path.normpath(p))


def _convert(hint: Any, value: Any, path: KeyPath, ctx: _Context,
             choices: tuple[Any, ...] | None = None) -> Any:
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        if value is None and len(options) < len(get_args(hint)):
            return None
        if len(options) != 1:
            raise TypeError(f"unsupported config type {hint!r} at {format_key_path(path)}")
        return _convert(options[0], value, path, ctx, choices)
    if origin is Literal:
        return _choice(value, get_args(hint), path, ctx)
    if dataclasses.is_dataclass(hint):
        return build_section(hint, value, path, ctx)
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and path in ctx.texts:
            value = ctx.texts[path]  # a plain scalar in a text field is taken as written: `010`
        if not isinstance(value, str):
            return ctx.err(path, f"expected a string, got {describe(value)}")
        return _choice(value, choices, path, ctx) if choices else value
    if hint is bool:
        if not isinstance(value, bool):
            return ctx.err(path, f"expected true or false, got {describe(value)}")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            return ctx.err(path, f"expected an integer, got {describe(value)}")
        return value
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value \
                or value in (float("inf"), float("-inf")):
            return ctx.err(path, f"expected a number, got {describe(value)}")
        return float(value)
    if hint is Path:
        if not isinstance(value, str) or not value.strip():
            return ctx.err(path, f"expected a path, got {describe(value)}")
        ctx.written[path] = value
        return _resolve_path(value.strip(), ctx)
    if origin is tuple:
        item_hint = get_args(hint)[0]
        if not isinstance(value, list):
            return ctx.err(path, f"expected a list, got {describe(value)}")
        items = [_convert(item_hint, v, path + (i,), ctx, choices) for i, v in enumerate(value)]
        return INVALID if any(v is INVALID for v in items) else tuple(items)
    if origin in (dict, AbcMapping):
        if not isinstance(value, dict):
            return ctx.err(path, f"expected a mapping, got {describe(value)}")
        return dict(value)
    raise TypeError(f"unsupported config type {hint!r} at {format_key_path(path)}")


def _convert_field(f: dataclasses.Field, hint: Any, value: Any, path: KeyPath, ctx: _Context) -> Any:
    meta = f.metadata
    if meta.get("parse"):
        try:
            out = meta["parse"](value)
        except ValueError as exc:
            return ctx.err(path, str(exc))
    else:
        out = _convert(hint, value, path, ctx, meta.get("choices"))
        if out is INVALID:
            return INVALID
    if meta.get("check") and out is not None:
        try:
            out = meta["check"](out)
        except ValueError as exc:
            return ctx.err(path, str(exc))
    return out


def build_fields(cls: type, value: Any, path: KeyPath, ctx: _Context) -> dict[str, Any] | Any:
    """Convert a mapping into keyword arguments for ``cls``; INVALID if it is not a mapping.

    Absent keys take their defaults; a missing required key, a wrong type or a failed check
    is reported and its value is INVALID.
    """
    if value is None:
        value = {}  # `drive:` with nothing under it means "all defaults"
    if not isinstance(value, dict):
        return ctx.err(path, f"expected a mapping of keys, got {describe(value)}")
    fields = config_fields(cls)
    names = [f.name for f in fields]
    for key in value:
        if key not in names:
            shown = key if isinstance(key, str) else repr(key)
            ctx.err(path + (key,), f"unknown key {shown!r}{_suggest(str(key), names)}; valid keys: "
                                   + ", ".join(names))
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields:
        sub = path + (f.name,)
        if f.name in value:
            kwargs[f.name] = _convert_field(f, hints[f.name], value[f.name], sub, ctx)
        elif is_required(f):
            kwargs[f.name] = ctx.err(sub, "required key is missing")
        elif dataclasses.is_dataclass(hints[f.name]):
            # An absent section is an empty one: its defaults go through the same resolution.
            kwargs[f.name] = build_section(hints[f.name], {}, sub, ctx)
        else:
            default = default_of(f)
            # A default path is relative to the shot file like a written one.
            kwargs[f.name] = _resolve_path(str(default), ctx) if isinstance(default, Path) else default
    return kwargs


def _instantiate(cls: type, kwargs: dict[str, Any] | Any) -> Any:
    if kwargs is INVALID or any(v is INVALID for v in kwargs.values()):
        return INVALID
    return cls(**kwargs)


def build_section(cls: type, value: Any, path: KeyPath, ctx: _Context) -> Any:
    kwargs = build_fields(cls, value, path, ctx)
    if kwargs is not INVALID and cls is FramesConfig:
        _check_frames(kwargs, path, ctx)
    return _instantiate(cls, kwargs)


# --------------------------------------------------------------------- cross-field rules
def _check_frames(kw: dict[str, Any], path: KeyPath, ctx: _Context) -> None:
    first, last, handles = kw["first"], kw["last"], kw["handles"]
    if first is not INVALID and last is not INVALID and last < first:
        kw["last"] = ctx.err(path + ("last",), f"last frame {last} is before first frame {first}")
    if first is not INVALID and handles is not INVALID and first - handles.head < 0:
        kw["handles"] = ctx.err(path + ("handles", "head"),
                                f"head handle {handles.head} puts the first rendered frame at "
                                f"{first - handles.head}; frame numbers must be >= 0")


def _written(path: KeyPath, resolved: Path, ctx: _Context) -> str:
    text = ctx.written.get(path, str(resolved))
    return text if text == str(resolved) else f"{text} (resolved: {resolved})"


_KIND_NAMES = {"video": "a video file", "sequence": "an image sequence", "audio": "an audio file"}


def _check_media(path_value: Path, path: KeyPath, ctx: _Context, allowed: tuple[str, ...],
                 what: str) -> bool:
    """Media type and (with check_files) existence; reports and returns False on a problem."""
    try:
        kind = media_kind(path_value)
    except ValueError as exc:
        ctx.err(path, str(exc))
        return False
    if kind not in allowed:
        ctx.err(path, f"{what} must be " + " or ".join(_KIND_NAMES[k] for k in allowed)
                + f", not {_KIND_NAMES[kind]} ({path_value.name})")
        return False
    if ctx.check_files and not media_exists(path_value):
        if kind == "sequence":
            ctx.err(path, f"no files match the {what} sequence {_written(path, path_value, ctx)}")
        else:
            ctx.err(path, f"{what} file not found: {_written(path, path_value, ctx)}")
        return False
    return True


def _check_exists(path_value: Path, path: KeyPath, ctx: _Context, what: str) -> None:
    if ctx.check_files and not path_value.exists():
        ctx.err(path, f"{what} not found: {_written(path, path_value, ctx)}")


_AUTO_COLOURSPACE = {".exr": "ACEScg", ".png": "sRGB", ".jpg": "sRGB", ".jpeg": "sRGB"}


def _finish_plate(plate: PlateConfig, frames: Any, fps: Any, ctx: _Context) -> Any:
    p = ("plate",)
    _check_media(plate.path, p + ("path",), ctx, ("video", "sequence"), "plate")
    changes: dict[str, Any] = {}
    if plate.colourspace == "auto":
        changes["colourspace"] = _AUTO_COLOURSPACE.get(plate.path.suffix.lower(), "Rec.709")
    if plate.audio is not None:
        _check_media(plate.audio, p + ("audio",), ctx, ("audio", "video"), "plate audio")
    if plate.timecode is not None:
        try:
            changes["timecode"] = parse_timecode(plate.timecode, fps if fps is not INVALID else None)
        except ValueError as exc:
            ctx.err(p + ("timecode",), str(exc))
    if frames is not INVALID:
        if plate.start_frame is None:
            changes["start_frame"] = frames.render_first
        elif plate.start_frame > frames.render_first:
            ctx.err(p + ("start_frame",),
                    f"plate starts at frame {plate.start_frame}, after the first frame to render "
                    f"({frames.render_first} = frames.first - frames.handles.head)")
    return dataclasses.replace(plate, **changes)


def _finish_actor(actor: ActorConfig, plate: Any, ctx: _Context) -> Any:
    p = ("actor",)
    changes: dict[str, Any] = {}
    if "media" not in ctx.given(p):
        if plate is not INVALID:
            changes["media"] = (plate.path,)
    elif not actor.media:
        ctx.err(p + ("media",), "must list at least one training video or image sequence")
    else:
        seen: dict[Path, int] = {}
        for i, media in enumerate(actor.media):
            if media in seen:
                ctx.err(p + ("media", i), f"listed twice (also item {seen[media]})")
                continue
            seen[media] = i
            _check_media(media, p + ("media", i), ctx, ("video", "sequence"), "training media")
    if actor.model is not None:
        _check_exists(actor.model, p + ("model",), ctx, "actor model")
    return dataclasses.replace(actor, **changes)


def _finish_face_model(fm: FaceModelConfig, ctx: _Context) -> None:
    p = ("face_model",)
    if fm.kind == "builtin":
        if fm.path is not None:
            ctx.err(p + ("path",), "only used with kind ict or flame (kind is builtin)")
    elif fm.path is None:
        ctx.err(p + ("path",), f"required for kind {fm.kind}: the {fm.kind} model file")
    else:
        _check_exists(fm.path, p + ("path",), ctx, f"{fm.kind} face model")


def _finish_drive(drive: DriveConfig, ctx: _Context) -> DriveConfig:
    p = ("drive",)
    if drive.mode == "none":
        if drive.source is not None:
            ctx.err(p + ("source",), "set, but drive.mode is none; set mode: video or audio, or "
                                     "remove source")
    elif drive.source is None:
        ctx.err(p + ("source",), f"required for mode {drive.mode}: the driving "
                                 + ("video" if drive.mode == "video" else "audio"))
    elif drive.mode == "video":
        _check_media(drive.source, p + ("source",), ctx, ("video", "sequence"), "driving video")
    else:
        _check_media(drive.source, p + ("source",), ctx, ("audio", "video"), "driving audio")
    if drive.pose in ("driving", "relative") and drive.mode != "video":
        ctx.err(p + ("pose",), f"pose {drive.pose!r} needs a driving video (drive.mode is "
                               f"{drive.mode}); use pose: plate")
    region = drive.region or ("mouth" if drive.mode == "audio" else "face")
    return dataclasses.replace(drive, region=region)


def _index_keys(data: Any, path: KeyPath, out: dict[KeyPath, set[Any]]) -> None:
    if isinstance(data, dict):
        out[path] = set(data)
        for k, v in data.items():
            _index_keys(v, path + (k,), out)


def _build_shot(data: dict[str, Any], ctx: _Context, raw: Any, source: Path | None) -> Any:
    _index_keys(data, (), ctx.data_keys)
    kw = build_fields(Shot, data, (), ctx)
    # Sections with defaults that depend on other sections are finished here.
    if kw["plate"] is not INVALID:
        kw["plate"] = _finish_plate(kw["plate"], kw["frames"], kw["fps"], ctx)
    if kw["actor"] is not INVALID:
        kw["actor"] = _finish_actor(kw["actor"], kw["plate"], ctx)
    if kw["face_model"] is not INVALID:
        _finish_face_model(kw["face_model"], ctx)
    if kw["drive"] is not INVALID:
        kw["drive"] = _finish_drive(kw["drive"], ctx)
    if ctx.problems:
        return INVALID
    return Shot(**kw, source=source, raw=raw)


# ------------------------------------------------------------------------------ entry points
def _check_schema(data: dict[str, Any], ctx: _Context) -> dict[str, Any] | Any:
    if "schema" not in data:
        return ctx.err(("schema",), f"missing schema label; add `schema: {SCHEMA_LABEL}` as the "
                                    "first line", line=1 if ctx.from_file else None)
    try:
        version = parse_schema_label(data["schema"])
    except ValueError as exc:
        return ctx.err(("schema",), str(exc))
    try:
        return upgrade_to_current(data, version)
    except UpgradeError as exc:
        return ctx.err(("schema",), str(exc))


def _from_data(data: Any, ctx: _Context, raw: Any, source: Path | None) -> Any:
    if data is None:
        return ctx.err((), f"file is empty; a shot file starts with `schema: {SCHEMA_LABEL}`")
    if not isinstance(data, dict):
        return ctx.err((), f"expected a mapping of keys at the top level, got {describe(data)}")
    upgraded = _check_schema(data, ctx)
    if upgraded is INVALID:
        return INVALID  # without a readable schema version the rest cannot be judged
    return _build_shot(upgraded, ctx, raw, source)


def _load(path: str | os.PathLike, check_files: bool) -> tuple[Shot | None, list[Problem]]:
    file = os.fspath(path)
    source = Path(os.path.abspath(file))
    ctx = _Context(file, source.parent, None, check_files)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        ctx.err((), "shot file not found")
        return None, ctx.problems
    except UnicodeDecodeError as exc:
        ctx.err((), f"not UTF-8 text ({exc.reason} at byte {exc.start})")
        return None, ctx.problems
    except OSError as exc:
        ctx.err((), f"cannot read shot file: {exc.strerror or exc}")
        return None, ctx.problems
    try:
        doc = parse_yaml(text)
    except YamlSyntaxError as exc:
        ctx.problems.append(Problem(file, "", exc.line, exc.message))
        return None, ctx.problems
    ctx.lines, ctx.texts, ctx.from_file = doc.lines, doc.texts, True
    for key_path, line, first_line in doc.duplicates:
        ctx.problems.append(Problem(file, format_key_path(key_path), line,
                                    f"duplicate key {key_path[-1]!r} (first written at line "
                                    f"{first_line}); YAML would silently keep only the last one"))
    for key_path, line, message in doc.tag_problems:
        ctx.problems.append(Problem(file, format_key_path(key_path), line, message))
    shot = _from_data(doc.data, ctx, doc.data, source)
    if ctx.problems or shot is INVALID:
        return None, sort_problems(ctx.problems)
    return shot, []


def validate_shot(path: str | os.PathLike, *, check_files: bool = True) -> list[Problem]:
    """Every problem in a shot file (empty list: valid). Reads only; writes nothing."""
    return _load(path, check_files)[1]


def load_shot(path: str | os.PathLike, *, check_files: bool = True) -> Shot:
    """Load a shot file; raises :class:`ShotConfigError` listing every problem.

    ``check_files=False`` skips checks that referenced media and models exist (e.g. on a
    submit host that does not mount the media); types, ranges and rules are still checked.
    """
    shot, problems = _load(path, check_files)
    if problems or shot is None:
        raise ShotConfigError(problems)
    return shot


def parse_shot(data: dict[str, Any], *, base_dir: str | os.PathLike, file: str = "<shot>",
               check_files: bool = True) -> Shot:
    """Validate an in-memory shot dict (relative paths resolve against ``base_dir``)."""
    ctx = _Context(file, Path(os.path.abspath(base_dir)), None, check_files)
    shot = _from_data(data, ctx, copy.deepcopy(data), None)
    if ctx.problems or shot is INVALID:
        raise ShotConfigError(sort_problems(ctx.problems))
    return shot


def shot_to_dict(shot: Any) -> Any:
    """A JSON-able dict of the resolved config (for hashing and provenance); loads back as-is."""
    if dataclasses.is_dataclass(shot) and not isinstance(shot, type):
        return {f.name: shot_to_dict(getattr(shot, f.name)) for f in config_fields(type(shot))}
    if isinstance(shot, Fraction):
        return fps_to_str(shot)
    if isinstance(shot, Path):
        return str(shot)
    if isinstance(shot, (list, tuple)):
        return [shot_to_dict(v) for v in shot]
    if isinstance(shot, AbcMapping):
        return {str(k): shot_to_dict(v) for k, v in shot.items()}
    return shot
