"""What the QC reads: a render (EXR/PNG sequence or movie, frames may be missing), its plate
and its audio, all addressed by plate frame numbers and all turned into display-referred
float32 RGB in [0, 1] -- the domain a reviewer looks at and the networks were trained in.

A render from another tool is a plain sequence or movie; one of ours is an EXR sequence whose
header names its scene-linear space (``portrait/colourspace``). Display conversion of a
``Linear Rec.709`` render over a display-referred plate (sRGB, Rec.709 video) inverts the
plate's own encoding (:func:`engine.io.colour.from_scene_linear`), exactly as the render stage
applied it, so a pass-through render compares equal to its plate up to half-float rounding.
A missing or unreadable render frame is not fatal: it is reported, and the QC goes on.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from engine.errors import MediaError
from engine.io import colour
from engine.io.exr import read_exr
from engine.io.ffmpeg import format_fps, probe
from engine.io.plate import FrameSource, open_plate
from engine.io.sequence import SequencePattern, _to_display_window, is_sequence_pattern

__all__ = ["RenderFrame", "RenderSource", "open_render", "display_of", "MATTE_LAYER", "load_audio",
           "AudioTrack"]

#: EXR layer holding the face matte (alpha of the pasted face), written by the render stage.
MATTE_LAYER = "matte.face"


@dataclass
class RenderFrame:
    """One render frame: ``rgb`` display-referred float32 (H, W, 3) or None when missing /
    unreadable (``error`` says why); ``matte`` (H, W) float32 in [0, 1] when the EXR has one."""

    frame: int
    rgb: np.ndarray | None
    matte: np.ndarray | None = None
    error: str | None = None
    header: dict | None = None


def display_of(image: np.ndarray, space: str, plate_space: str) -> np.ndarray:
    """Pixels of a frame in ``space`` -> display float32 in [0, 1] (see the module doc)."""
    if image.dtype == np.uint8 or image.dtype == np.uint16:
        return colour.as_float(image)
    if space == "Linear Rec.709" and plate_space in colour.DISPLAY_SPACES:
        return np.clip(colour.from_scene_linear(image, plate_space), 0.0, 1.0)
    if space in colour.DISPLAY_SPACES:
        return np.clip(image.astype(np.float32), 0.0, 1.0)
    return colour.to_display(image, space)


def _matte_of(channels: dict[str, np.ndarray]) -> np.ndarray | None:
    """The face matte: channel ``matte.face`` itself, or its first present component
    (``matte.face.A`` / ``.Y`` / ``.R``), as float32 [0, 1]."""
    for name in (MATTE_LAYER, f"{MATTE_LAYER}.A", f"{MATTE_LAYER}.Y", f"{MATTE_LAYER}.a",
                 f"{MATTE_LAYER}.R", f"{MATTE_LAYER}.alpha"):
        if name in channels:
            return np.clip(channels[name].astype(np.float32), 0.0, 1.0)
    return None


class RenderSource:
    """A render by frame number. Sequences tolerate missing frames (reported per frame);
    movies are numbered ``start_frame + decode index``."""

    def __init__(self, path: str | os.PathLike, fps: Fraction, *, start_frame: int = 1001,
                 colourspace: str | None = None, plate_colourspace: str = "Rec.709") -> None:
        self.path = Path(path)
        self.fps = Fraction(fps)
        self.plate_colourspace = plate_colourspace
        self._movie: FrameSource | None = None
        self._files: dict[int, Path] = {}
        if is_sequence_pattern(path):
            pattern = SequencePattern(path)
            self._files = pattern.scan()
            if not self._files:
                raise MediaError(f"no render frames match {path}")
            self.kind = "exr" if self.path.suffix.lower() == ".exr" else "image"
            numbers = sorted(self._files)
            self.frame_numbers = range(numbers[0], numbers[-1] + 1)
        else:
            if not self.path.is_file():
                raise MediaError(f"render not found: {path}")
            self.kind = "movie"
            info = probe(self.path)
            if not info.has_video:
                raise MediaError(f"render {path} has no video stream")
            if info.fps != self.fps:
                raise MediaError(f"render {path} is {format_fps(info.fps)} fps, the plate {format_fps(self.fps)} fps")
            self._movie = open_plate(self.path, self.fps, start_frame)
            self.frame_numbers = self._movie.frame_numbers
        self.colourspace = colourspace or self._default_space()

    def _default_space(self) -> str:
        if self.kind != "exr":
            return "sRGB" if self.kind == "image" else "Rec.709"
        first = self._files[min(self._files)]
        try:
            _, header = read_exr(first, header_only=True)
        except MediaError:
            return "Linear Rec.709"
        space = str(header.get("portrait/colourspace") or "")
        return space if space in colour.LINEAR_SPACES + colour.DISPLAY_SPACES else "Linear Rec.709"

    def has(self, frame: int) -> bool:
        return frame in self._files if self._movie is None else frame in self.frame_numbers

    def iter(self, first: int, last: int) -> Iterator[RenderFrame]:
        """Every frame ``first..last`` in order; absent ones come back with ``rgb=None``."""
        if self._movie is not None:
            lo, hi = max(first, self.frame_numbers.start), min(last, self.frame_numbers.stop - 1)
            stream = iter(self._movie.iter(lo, hi)) if lo <= hi else iter(())
            for f in range(first, last + 1):
                if lo <= f <= hi:
                    _, img = next(stream)
                    yield RenderFrame(f, colour.as_float(img))
                else:
                    yield RenderFrame(f, None, error="outside the render movie")
            return
        for f in range(first, last + 1):
            yield self._read_file(f)

    def _read_file(self, f: int) -> RenderFrame:
        path = self._files.get(f)
        if path is None:
            return RenderFrame(f, None, error="missing")
        if self.kind != "exr":
            from engine.io.sequence import _load_raster_rgb8
            try:
                return RenderFrame(f, colour.as_float(_load_raster_rgb8(path)))
            except MediaError as exc:
                return RenderFrame(f, None, error=str(exc))
        try:
            channels, header = read_exr(path)
        except MediaError as exc:
            return RenderFrame(f, None, error=str(exc))
        if not all(c in channels for c in "RGB"):
            return RenderFrame(f, None, error=f"no R,G,B channels in {path.name}")
        rgb = np.stack([channels[c].astype(np.float32) for c in "RGB"], -1)
        matte = _matte_of(channels)
        dw, disp = header["dataWindow"], header["displayWindow"]
        if dw != disp:
            rgb = _to_display_window(rgb, dw, disp)
            if matte is not None:
                matte = _to_display_window(matte[..., None], dw, disp)[..., 0]
        return RenderFrame(f, display_of(rgb, self.colourspace, self.plate_colourspace), matte, header=header)

    def close(self) -> None:
        if self._movie is not None:
            self._movie.close()

    def __enter__(self) -> "RenderSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_render(path: str | os.PathLike, fps: Fraction, **kw) -> RenderSource:
    return RenderSource(path, fps, **kw)


@dataclass
class AudioTrack:
    """Mono samples whose sample 0 plays at plate frame ``start_frame``."""

    samples: np.ndarray
    sr: int
    start_frame: int
    path: Path

    def segment(self, first: int, n_frames: int, fps: Fraction) -> tuple[np.ndarray, int]:
        """(samples covering frames ``first..first+n-1``, zero-padded where the audio does not
        reach, and the sample rate). Sample positions come from frame numbers (Fraction)."""
        from engine.io.audio import samples_for_frames
        a, b = samples_for_frames(first, n_frames, fps, self.start_frame, self.sr)
        out = np.zeros(b - a, np.float32)
        lo, hi = max(a, 0), min(b, len(self.samples))
        if hi > lo:
            out[lo - a:hi - a] = self.samples[lo:hi]
        return out, self.sr


def load_audio(path: str | os.PathLike, start_frame: int, sr: int = 16000) -> AudioTrack:
    """Decode an audio file (or a movie's audio) to mono ``sr`` Hz; sample 0 sits at
    ``start_frame`` (for a movie: its first video frame, see :mod:`engine.io.audio`)."""
    from engine.io.audio import extract_audio
    return AudioTrack(extract_audio(path, sr), sr, int(start_frame), Path(path))
