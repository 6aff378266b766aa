"""Parsers for the shot config's value types: names, frame rates, versions, timecode,
output templates, media paths.

Each parser is a pure function of the written value that returns the typed value or raises
``ValueError`` with a one-line message (the loader adds file, line and key path).
"""
from __future__ import annotations

import math
import re
import string
from fractions import Fraction
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------------- names
NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def parse_name(value: str) -> str:
    """Show/sequence/shot/actor names become folder names: keep them to a safe alphabet."""
    if not NAME_RE.match(value):
        raise ValueError(f"invalid name {value!r}: use only letters, digits, '_' and '-'")
    return value


# ----------------------------------------------------------------------------- frame rate
# Floats that mean an NTSC rational everywhere in production; any other non-integer float
# is ambiguous (is 23.98 meant as 24000/1001 or 2398/100?) and must be written as a ratio.
NTSC_FLOATS: dict[float, Fraction] = {
    23.976: Fraction(24000, 1001),
    23.98: Fraction(24000, 1001),
    29.97: Fraction(30000, 1001),
    47.952: Fraction(48000, 1001),
    59.94: Fraction(60000, 1001),
    119.88: Fraction(120000, 1001),
}
MIN_FPS = 1
MAX_FPS = 1000
_RATIO_RE = re.compile(r"^\s*([+-]?\d+)\s*/\s*([+-]?\d+)\s*$")
_INT_RE = re.compile(r"^\s*[+-]?\d+\s*$")
_FLOAT_RE = re.compile(r"^\s*[+-]?(\d+\.\d*|\.\d+)\s*$")


def _check_fps_range(fps: Fraction, written: Any) -> Fraction:
    if fps <= 0:
        raise ValueError(f"invalid frame rate {written!r}: must be > 0")
    if fps < MIN_FPS:
        raise ValueError(f"invalid frame rate {written!r}: less than {MIN_FPS} fps")
    if fps > MAX_FPS:
        raise ValueError(f"invalid frame rate {written!r}: more than {MAX_FPS} fps")
    return fps


def parse_fps(value: Any) -> Fraction:
    """Frame rate as an exact rational.

    Accepts an integer (``25``), a ratio string (``"24000/1001"``), an integer-valued float
    (``25.0``) or one of the well-known NTSC floats 23.976/23.98, 29.97, 47.952, 59.94,
    119.88 (mapped to N*1000/1001). Other floats are rejected as ambiguous.
    """
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise ValueError(f"expected a frame rate like 25 or '24000/1001', got {describe(value)}")
    if isinstance(value, int):
        return _check_fps_range(Fraction(value), value)
    if isinstance(value, float):
        return _float_fps(value, value)
    if isinstance(value, Fraction):
        return _check_fps_range(value, str(value))
    if isinstance(value, str):
        m = _RATIO_RE.match(value)
        if m:
            num, den = int(m.group(1)), int(m.group(2))
            if den == 0:
                raise ValueError(f"invalid frame rate {value!r}: denominator is zero")
            return _check_fps_range(Fraction(num, den), value)
        if _INT_RE.match(value):
            return _check_fps_range(Fraction(int(value)), value)
        if _FLOAT_RE.match(value):
            return _float_fps(float(value), value)
    raise ValueError(f"invalid frame rate {value!r}: write an integer (25) or a ratio ('24000/1001')")


def _float_fps(value: float, written: Any) -> Fraction:
    if not math.isfinite(value):
        raise ValueError(f"invalid frame rate {written!r}")
    if value in NTSC_FLOATS:
        return NTSC_FLOATS[value]
    if value == int(value):
        return _check_fps_range(Fraction(int(value)), written)
    raise ValueError(f"ambiguous frame rate {written!r}: write it as a ratio string such as "
                     f"'{Fraction(value).limit_denominator(1001).numerator}/"
                     f"{Fraction(value).limit_denominator(1001).denominator}' (only 23.976, "
                     "23.98, 29.97, 47.952, 59.94 and 119.88 are accepted as decimals)")


def fps_to_str(fps: Fraction) -> str:
    return str(fps.numerator) if fps.denominator == 1 else f"{fps.numerator}/{fps.denominator}"


# -------------------------------------------------------------------------------- version
AUTO = "auto"
_VERSION_RE = re.compile(r"^[vV]?(\d+)$")


def parse_version(value: Any) -> int | str:
    """``auto`` (next free version at run time), an integer, or ``"v003"`` -> 3."""
    if isinstance(value, bool):
        raise ValueError(f"expected 'auto', an integer or 'vNNN', got {describe(value)}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    elif isinstance(value, str) and _VERSION_RE.match(value.strip()):
        number = int(_VERSION_RE.match(value.strip()).group(1))
    else:
        raise ValueError(f"expected 'auto', an integer or 'vNNN', got {describe(value)}")
    if number < 1:
        raise ValueError(f"version must be >= 1, got {number}")
    return number


def version_label(number: int) -> str:
    return f"v{number:03d}"


# ------------------------------------------------------------------------------- timecode
_TC_RE = re.compile(r"^(\d{2}):(\d{2}):(\d{2})([:;])(\d{2})$")


def nominal_fps(fps: Fraction) -> int:
    """Timecode counts frames at the rounded rate (24000/1001 counts 0..23)."""
    return max(1, round(fps))


def parse_timecode(value: str, fps: Fraction | None) -> str:
    """Validate ``HH:MM:SS:FF`` (``;`` before FF: drop-frame, only at 30000/1001 and 60000/1001)."""
    m = _TC_RE.match(value.strip())
    if not m:
        raise ValueError(f"invalid timecode {value!r}: expected HH:MM:SS:FF")
    hh, mm, ss, sep, ff = int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4), int(m.group(5))
    if hh > 23 or mm > 59 or ss > 59:
        raise ValueError(f"invalid timecode {value!r}: hours 0-23, minutes and seconds 0-59")
    if fps is None:
        return value.strip()
    base = nominal_fps(fps)
    if ff >= base:
        raise ValueError(f"invalid timecode {value!r}: frame field must be < {base} at "
                         f"{fps_to_str(fps)} fps")
    if sep == ";":
        if fps not in (Fraction(30000, 1001), Fraction(60000, 1001)):
            raise ValueError(f"drop-frame timecode {value!r} (';' before the frames) is only valid at 29.97 or "
                             f"59.94 fps, not {fps_to_str(fps)}")
        dropped = 2 if base == 30 else 4
        if ss == 0 and mm % 10 != 0 and ff < dropped:
            raise ValueError(f"timecode {value!r} does not exist in drop-frame counting "
                             f"(frames 00-{dropped - 1:02d} are skipped at minutes not divisible by 10)")
    return value.strip()


def timecode_to_frames(tc: str, fps: Fraction) -> int:
    """Frame count since 00:00:00:00 (drop-frame aware), for EXR/movie timecode metadata."""
    m = _TC_RE.match(tc)
    if not m:
        raise ValueError(f"invalid timecode {tc!r}")
    hh, mm, ss, sep, ff = int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4), int(m.group(5))
    base = nominal_fps(fps)
    frames = ((hh * 60 + mm) * 60 + ss) * base + ff
    if sep == ";":
        # SMPTE 12M drop-frame: skip `dropped` frame numbers each minute except every tenth.
        dropped = 2 if base == 30 else 4
        total_minutes = hh * 60 + mm
        frames -= dropped * (total_minutes - total_minutes // 10)
    return frames


# ------------------------------------------------------------------------ output template
TEMPLATE_FIELDS = ("root", "show", "sequence", "shot", "task", "version")
REQUIRED_TEMPLATE_FIELDS = ("task", "version")


def parse_template(value: str) -> str:
    """An output folder template that cannot escape ``{root}`` (see the reference).

    The rules are the ones :func:`engine.pipeline.versions.validate_template` enforces when a
    version folder is allocated, so a shot that validates also runs; on top, the shot needs
    ``{task}`` so that tasks never share a folder.
    """
    from engine.errors import ConfigError
    from engine.pipeline.versions import validate_template
    try:
        validate_template(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    fields = [name for _lit, name, _spec, _conv in string.Formatter().parse(value) if name]
    missing = [f for f in REQUIRED_TEMPLATE_FIELDS if f not in fields]
    if missing:
        raise ValueError("template must contain " + " and ".join("{" + f + "}" for f in missing)
                         + " so that tasks and versions never share a folder")
    return value


# ---------------------------------------------------------------------------------- media
VIDEO_EXTS = (".mp4", ".mov", ".mkv")
IMAGE_EXTS = (".exr", ".png", ".jpg", ".jpeg")
AUDIO_EXTS = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg")
_PRINTF_RE = re.compile(r"%(0?)(\d*)d")
_HASH_RE = re.compile(r"#+")


def frame_placeholder(name: str) -> tuple[str, int, str] | None:
    """Split ``plate.%04d.exr`` / ``plate.####.exr`` into (prefix, padding, suffix); None if none."""
    printf = list(_PRINTF_RE.finditer(name))
    hashes = list(_HASH_RE.finditer(name))
    found = printf + hashes
    if not found:
        return None
    if len(found) > 1:
        raise ValueError(f"more than one frame placeholder in {name!r}")
    m = found[0]
    padding = len(m.group(0)) if m.re is _HASH_RE else int(m.group(2) or 0)
    return name[:m.start()], padding, name[m.end():]


def media_kind(path: Path) -> str:
    """'video', 'sequence' (image sequence with a frame placeholder), 'audio', or raise."""
    ext = path.suffix.lower()
    placeholder = frame_placeholder(path.name)
    if ext in IMAGE_EXTS:
        if placeholder is None:
            raise ValueError(f"{path.name!r} is a single image; write an image sequence with a frame "
                             "placeholder, e.g. name.%04d" + ext + " or name.####" + ext)
        return "sequence"
    if placeholder is not None:
        raise ValueError(f"frame placeholder in {path.name!r}, but {ext or 'no extension'} is not an "
                         "image sequence type (" + ", ".join(IMAGE_EXTS) + ")")
    if ext in VIDEO_EXTS:
        return "video"
    if ext in AUDIO_EXTS:
        return "audio"
    raise ValueError(f"unsupported media type {ext or '(no extension)'!r} for {path.name!r}")


def sequence_regex(path: Path) -> re.Pattern[str]:
    prefix, padding, suffix = frame_placeholder(path.name)  # type: ignore[misc]
    digits = rf"\d{{{padding},}}" if padding else r"\d+"
    return re.compile("^" + re.escape(prefix) + f"(-?{digits})" + re.escape(suffix) + "$")


def sequence_frame_numbers(path: Path) -> list[int]:
    """Frame numbers of the files that exist for a sequence pattern (sorted)."""
    rx = sequence_regex(path)
    try:
        names = [e.name for e in path.parent.iterdir()]
    except OSError:
        return []
    return sorted(int(m.group(1)) for m in map(rx.match, names) if m)


def sequence_frame_path(path: Path, frame: int) -> Path:
    prefix, padding, suffix = frame_placeholder(path.name)  # type: ignore[misc]
    number = f"{frame:0{padding}d}" if padding else str(frame)
    return path.with_name(f"{prefix}{number}{suffix}")


def media_exists(path: Path) -> bool:
    if frame_placeholder(path.name) is not None:
        return bool(sequence_frame_numbers(path))
    return path.is_file()


# ---------------------------------------------------------------------- free-form mappings
_DOTTED_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_SBATCH_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_SCALARS = (str, int, float, bool, type(None))


def _plain_value(key: str, value: Any) -> Any:
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, list) and all(isinstance(v, _SCALARS) for v in value):
        return list(value)
    raise ValueError(f"value of {key!r} must be a scalar or a list of scalars, got {describe(value)}")


def parse_overrides(value: Any) -> dict[str, Any]:
    """Trainer overrides as ``{dotted.key: value}``; nested mappings are flattened.

    ``{stage1: {lr: 1e-4}}`` and ``{"stage1.lr": 1e-4}`` are the same override; writing both
    is an error rather than a silent choice.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of dotted keys to values, got {describe(value)}")
    out: dict[str, Any] = {}

    def walk(mapping: dict[Any, Any], prefix: str) -> None:
        for key, item in mapping.items():
            if not isinstance(key, str) or not _DOTTED_RE.match(key):
                raise ValueError(f"invalid override key {prefix + str(key)!r}: use dotted names "
                                 "like stage1.iterations")
            full = prefix + key
            if isinstance(item, dict):
                walk(item, full + ".")
                continue
            if full in out:
                raise ValueError(f"override {full!r} is given twice (nested and dotted)")
            out[full] = _plain_value(full, item)
    walk(value, "")
    return dict(sorted(out.items()))


def parse_sbatch_options(value: Any) -> dict[str, Any]:
    """Extra sbatch options ``{name: value}`` (passed to submitit verbatim)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of sbatch options, got {describe(value)}")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _SBATCH_KEY_RE.match(key):
            raise ValueError(f"invalid sbatch option name {key!r}")
        if not isinstance(item, (str, int, float, bool)):
            raise ValueError(f"sbatch option {key!r} must be a scalar, got {describe(item)}")
        out[key] = item
    return dict(sorted(out.items()))


# ------------------------------------------------------------------------- number ranges
def non_negative(value: int | float) -> int | float:
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}")
    return value


def positive(value: int | float) -> int | float:
    if value <= 0:
        raise ValueError(f"must be > 0, got {value}")
    return value


def unit_interval(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be in [0, 1], got {value}")
    return value


def cosine_range(value: float) -> float:
    if not -1.0 <= value <= 1.0:
        raise ValueError(f"must be in [-1, 1], got {value}")
    return value


def non_empty_text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


# ---------------------------------------------------------------------------------- misc
def describe(value: Any) -> str:
    """How a wrong value is named in messages ("a list", "string 'abc'", ...)."""
    if value is None:
        return "null (empty)"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"string {shown!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__
