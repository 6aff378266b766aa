"""Plates: one interface over video files and image sequences, addressed by frame number.

Every stage reads footage through :func:`open_plate`, which returns a :class:`FrameSource`
whose ``frame_numbers`` are the plate's own numbers: for an image sequence the numbers in
its file names, for a video ``start_frame + index`` (index = decoded frame order). A video
whose frame rate differs from the shot's is refused (``plate is 30 fps, shot says 25 fps``)
rather than silently resampled: resampling would invent or drop frames, and every frame
number downstream would then point at the wrong picture.
"""
from __future__ import annotations

import contextlib
import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Protocol, runtime_checkable

import numpy as np

from engine.errors import MediaError
from engine.io.ffmpeg import format_fps, probe
from engine.io.sequence import ImageSequenceSource, is_sequence_pattern
from engine.io.video import VideoSource

__all__ = ["FrameSource", "VideoPlate", "SequencePlate", "open_plate"]

log = logging.getLogger(__name__)


@runtime_checkable
class FrameSource(Protocol):
    """Frames by plate frame number. RGB: uint8 for video/PNG/JPEG, float32 for EXR."""

    path: Path
    fps: Fraction
    frame_shape: tuple[int, ...]

    @property
    def frame_numbers(self) -> range: ...

    def read(self, frame_number: int) -> np.ndarray: ...

    def iter(self, first: int, last: int) -> Iterator[tuple[int, np.ndarray]]: ...

    def close(self) -> None: ...

    def __enter__(self) -> "FrameSource": ...

    def __exit__(self, *exc) -> None: ...


def _check_range(first: int, last: int, numbers: range, what: str) -> None:
    if first > last:
        raise MediaError(f"empty frame range {first}-{last} requested from {what}")
    if first < numbers.start or last > numbers.stop - 1:
        raise MediaError(f"frames {first}-{last} are outside the plate {what} "
                         f"(frames {numbers.start}-{numbers.stop - 1})")


class VideoPlate:
    """A video file as a FrameSource. Sequential ``read`` calls reuse one decoder."""

    def __init__(self, video: VideoSource, start_frame: int) -> None:
        self.video = video
        self.path = video.path
        self.fps = video.fps
        self.start_frame = start_frame
        self.frame_shape = video.frame_shape
        self._stream: Iterator[np.ndarray] | None = None
        self._next: int | None = None

    def __repr__(self) -> str:
        r = self.frame_numbers
        return f"VideoPlate({str(self.path)!r}, frames {r.start}-{r.stop - 1} @ {format_fps(self.fps)} fps)"

    @property
    def frame_numbers(self) -> range:
        return range(self.start_frame, self.start_frame + self.video.frame_count)

    def read(self, frame_number: int) -> np.ndarray:
        _check_range(frame_number, frame_number, self.frame_numbers, str(self.path))
        if self._stream is None or self._next != frame_number:
            self.close()
            self._stream = self.video.iter_frames(frame_number - self.start_frame)
        frame = next(self._stream)
        self._next = frame_number + 1
        return frame

    def iter(self, first: int, last: int) -> Iterator[tuple[int, np.ndarray]]:
        _check_range(first, last, self.frame_numbers, str(self.path))
        frames = self.video.iter_frames(first - self.start_frame, last - first + 1)
        return zip(range(first, last + 1), frames)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()  # type: ignore[attr-defined]   (ends the ffmpeg process)
            self._stream = None

    def __enter__(self) -> "VideoPlate":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        # Best effort at garbage collection (possibly during interpreter shutdown, when
        # anything may already be torn down); close() is the real API.
        with contextlib.suppress(Exception):
            self.close()


class SequencePlate:
    """An image sequence as a FrameSource (frame numbers from the file names)."""

    def __init__(self, seq: ImageSequenceSource, fps: Fraction) -> None:
        self.sequence = seq
        self.path = Path(seq.pattern.pattern)
        self.fps = fps
        self.frame_shape = seq.frame_shape

    def __repr__(self) -> str:
        r = self.frame_numbers
        return f"SequencePlate({str(self.path)!r}, frames {r.start}-{r.stop - 1})"

    @property
    def frame_numbers(self) -> range:
        return self.sequence.frame_numbers

    def read(self, frame_number: int) -> np.ndarray:
        _check_range(frame_number, frame_number, self.frame_numbers, str(self.path))
        return self.sequence.read(frame_number)

    def iter(self, first: int, last: int) -> Iterator[tuple[int, np.ndarray]]:
        _check_range(first, last, self.frame_numbers, str(self.path))
        return self.sequence.iter(first, last)

    def close(self) -> None:
        pass

    def __enter__(self) -> "SequencePlate":
        return self

    def __exit__(self, *exc) -> None:
        pass


def open_plate(path: str | os.PathLike, fps: Fraction, start_frame: int = 1001) -> FrameSource:
    """Open a plate for a shot running at ``fps``.

    ``path`` is a video file or an image-sequence pattern (``plate.%04d.exr``,
    ``plate.####.png``). ``start_frame`` numbers a video's first frame; a sequence keeps the
    numbers in its file names. Raises MediaError when the video's rate is not the shot's,
    or (EXR) when the frames' ``framesPerSecond`` header says another rate.
    """
    fps = Fraction(fps)
    if is_sequence_pattern(path):
        seq = ImageSequenceSource(path)
        if seq.ext == ".exr":
            from engine.io.exr import read_exr_header
            stated = read_exr_header(seq.path(seq.first)).get("framesPerSecond")
            if stated is not None and Fraction(stated) != fps:
                raise MediaError(f"{path}: plate is {format_fps(Fraction(stated))} fps, shot says "
                                 f"{format_fps(fps)} fps")
        return SequencePlate(seq, fps)
    info = probe(path)
    if not info.has_video:
        raise MediaError(f"plate {path} has no video stream")
    if info.fps != fps:
        raise MediaError(f"{path}: plate is {format_fps(info.fps)} fps, shot says {format_fps(fps)} fps "
                         "(conform the plate or fix the shot's fps; frames are never resampled)")
    if info.vfr:
        log.warning("%s is variable-frame-rate (average %s fps): frames are numbered in decode "
                    "order as if constant-rate", path, format_fps(info.avg_fps))
    return VideoPlate(VideoSource(path, info=info), start_frame)
