"""SMPTE timecode <-> frame counts (SMPTE ST 12-1), including drop-frame.

A timecode counts frames at the *nominal* integer rate (24 for 23.976, 30 for 29.97).
At 30000/1001 and 60000/1001 that count drifts from the wall clock by 0.1 %, so
drop-frame timecode skips frame *labels* (not frames): labels 0 and 1 (0-3 at 59.94) at
the start of every minute except minutes 0, 10, 20, ... Drop-frame timecodes are written
with ';' before the frames field (``01:00:00;00``), non-drop with ':'.

Frame numbers in the engine are the plate's numbers (1001-based by default); the shot
config maps its start frame to a start timecode, and
``timecode_for_frame(frame, fps, start_frame=1001, start_timecode="01:00:00:00")`` gives
each frame's label. Counts wrap at 24 hours, as timecode does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from engine.errors import ConfigError

__all__ = ["Timecode", "nominal_rate", "is_drop_frame_rate", "parse_timecode", "frames_to_timecode",
           "timecode_to_frames", "timecode_for_frame"]

_TC_RE = re.compile(r"^(\d{1,2}):(\d{2}):(\d{2})([:;.,])(\d{2,3})$")


@dataclass(frozen=True)
class Timecode:
    hours: int
    minutes: int
    seconds: int
    frames: int
    drop_frame: bool

    def __str__(self) -> str:
        sep = ";" if self.drop_frame else ":"
        return f"{self.hours:02d}:{self.minutes:02d}:{self.seconds:02d}{sep}{self.frames:02d}"


def nominal_rate(fps: Fraction | int) -> int:
    """Frames per timecode second: 24000/1001 -> 24, 30000/1001 -> 30, 25 -> 25."""
    fps = Fraction(fps)
    if fps <= 0:
        raise ConfigError(f"frame rate must be positive, got {fps}")
    return round(fps)


def is_drop_frame_rate(fps: Fraction | int) -> bool:
    """Rates where drop-frame timecode is defined and is the default: 29.97 and 59.94."""
    return Fraction(fps) in (Fraction(30000, 1001), Fraction(60000, 1001))


def _drop_count(fps: Fraction) -> int:
    return 2 * nominal_rate(fps) // 30   # 2 labels at 29.97, 4 at 59.94


def _resolve_drop(fps: Fraction, drop_frame: bool | None) -> bool:
    if drop_frame is None:
        return is_drop_frame_rate(fps)
    if drop_frame and not is_drop_frame_rate(fps):
        raise ConfigError(f"drop-frame timecode exists only at 29.97 and 59.94 fps, not {fps}")
    return drop_frame


def parse_timecode(text: str) -> Timecode:
    """``"01:00:00:00"`` or ``"01:00:00;00"`` (drop-frame) -> Timecode. Checks field ranges
    only; :func:`timecode_to_frames` checks the frames field against a rate."""
    m = _TC_RE.match(text.strip())
    if not m:
        raise ConfigError(f"not a SMPTE timecode (HH:MM:SS:FF or HH:MM:SS;FF): {text!r}")
    h, mi, s, sep, f = int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4), int(m.group(5))
    if h > 23 or mi > 59 or s > 59:
        raise ConfigError(f"timecode field out of range: {text!r}")
    return Timecode(h, mi, s, f, drop_frame=sep in ";,")


def timecode_to_frames(tc: str | Timecode, fps: Fraction | int, drop_frame: bool | None = None) -> int:
    """Frames since 00:00:00:00. Drop-frame is taken from the separator unless given."""
    fps = Fraction(fps)
    t = parse_timecode(tc) if isinstance(tc, str) else tc
    drop = t.drop_frame if drop_frame is None else drop_frame
    drop = _resolve_drop(fps, drop) if drop else False
    nom = nominal_rate(fps)
    if t.frames >= nom:
        raise ConfigError(f"timecode {t} has frame {t.frames}, but {fps} fps counts 0..{nom - 1}")
    count = (t.hours * 3600 + t.minutes * 60 + t.seconds) * nom + t.frames
    if drop:
        d = _drop_count(fps)
        if t.seconds == 0 and t.minutes % 10 != 0 and t.frames < d:
            raise ConfigError(f"timecode {t} does not exist in drop-frame counting "
                              f"(labels 00-{d - 1:02d} are skipped at this minute)")
        total_minutes = t.hours * 60 + t.minutes
        count -= d * (total_minutes - total_minutes // 10)
    return count


def frames_to_timecode(count: int, fps: Fraction | int, drop_frame: bool | None = None) -> Timecode:
    """Frames since 00:00:00:00 -> Timecode (wrapping at 24 hours)."""
    fps = Fraction(fps)
    drop = _resolve_drop(fps, drop_frame)
    nom = nominal_rate(fps)
    if drop:
        d = _drop_count(fps)
        per_min = nom * 60 - d
        per_10min = nom * 600 - d * 9
        day = per_10min * 6 * 24
        count %= day
        tens, rem = divmod(count, per_10min)
        # The first minute of each ten keeps all its labels; the other nine lose d each.
        extra = d * 9 * tens + (d * ((rem - d) // per_min) if rem >= d else 0)
        count += extra
    else:
        count %= nom * 86400
    frames = count % nom
    secs = count // nom
    return Timecode(secs // 3600, (secs // 60) % 60, secs % 60, frames, drop)


def timecode_for_frame(frame_number: int, fps: Fraction | int, *, start_frame: int = 1001,
                       start_timecode: str = "00:00:00:00", drop_frame: bool | None = None) -> str:
    """SMPTE label of a plate frame, given which timecode the plate's ``start_frame`` carries."""
    fps = Fraction(fps)
    start = parse_timecode(start_timecode)
    if drop_frame is None:
        drop_frame = start.drop_frame   # ';' in the start timecode means drop-frame
    base = timecode_to_frames(Timecode(start.hours, start.minutes, start.seconds, start.frames,
                                       drop_frame), fps, drop_frame)
    return str(frames_to_timecode(base + frame_number - start_frame, fps, drop_frame))
