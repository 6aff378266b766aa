"""Assemble stage: EXR frames + dialogue audio -> H.264 review movie with burn-in.

The audio is placed by frame numbers: the plate's audio sample 0 plays at the plate's first
frame (``start_frame``), so a movie starting at ``first`` skips ``first - start_frame`` frames
of audio; ``audio_offset_frames`` shifts it further (a dub's ``drive.offset``). Burn-in carries
shot, version, frame number and timecode so a reviewer's note can name the exact frame.

Pictures go through an OpenColorIO view transform (:mod:`engine.render.ocio`, the built-in
ACES config): the EXRs' scene-linear pixels -> ``display`` / ``view`` (default: sRGB display,
the ACES SDR output transform for scene-linear plates, un-tone-mapped on the plate's own
display for video plates: see :func:`engine.render.ocio.view_transform`). The
side-by-side plate goes through the same transform, so the two halves differ only where the
render changed the picture.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.errors import MediaError
from engine.io import colour
from engine.io.exr import read_exr
from engine.io.ffmpeg import probe
from engine.io.movie import ReviewMovieWriter
from engine.io.plate import open_plate
from engine.io.sequence import is_sequence_pattern
from engine.io.timecode import timecode_for_frame
from engine.pipeline import Stage, StageContext
from engine.render import ocio
from engine.stages.common import FrameTiming, ShotLayout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReviewConfig:
    colourspace: str = "Rec.709"      # the plate's colourspace; the EXRs are in its linear space
    burn_in: bool = True
    side_by_side: bool = False
    crf: int = 18
    display: str = "auto"             # an OCIO display; auto: ocio.default_display(colourspace)
    view: str = "auto"                # an OCIO view of `display`; auto: ocio.default_view(colourspace)
    audio_offset_frames: int = 0      # extra delay of the audio (frames), e.g. a dub's drive.offset


def exr_display_rgb(path: Path, colourspace: str, *, display: str = "auto",
                    view: str = "auto") -> np.ndarray:
    """The ``R,G,B`` layer of a delivery EXR (scene-linear in the linear space of the plate's
    ``colourspace``) as display-referred uint8 through the OCIO view transform."""
    channels, _ = read_exr(path)
    try:
        lin = np.stack([channels["R"], channels["G"], channels["B"]], -1).astype(np.float32)
    except KeyError as exc:
        raise MediaError(f"{path}: no R,G,B channels") from exc
    return colour.to_uint8(ocio.view_transform(lin, colour.linear_space_of(colourspace), display=display,
                                               view=view, plate_space=colourspace))


def plate_display_rgb(image: np.ndarray, colourspace: str, *, display: str = "auto",
                      view: str = "auto") -> np.ndarray:
    """A plate frame through the same view transform as the render (for side by side)."""
    lin = ocio.plate_to_linear(image, colourspace)
    return colour.to_uint8(ocio.view_transform(lin, colour.linear_space_of(colourspace), display=display,
                                               view=view, plate_space=colourspace))


def burn_in(image: np.ndarray, lines: list[str]) -> np.ndarray:
    """Draw text lines on a dark band at the bottom of the frame (scaled to its height)."""
    out = image.copy()
    h, w = out.shape[:2]
    scale = max(h / 720.0, 0.3)
    thick = max(1, int(round(scale * 2)))
    line_h = int(30 * scale) + 2
    band = line_h * len(lines) + 4
    out[h - band:] = (out[h - band:].astype(np.float32) * 0.35).astype(np.uint8)
    for i, text in enumerate(lines):
        y = h - band + line_h * (i + 1) - 4
        cv2.putText(out, text, (4, y), cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


class ReviewStage(Stage):
    name = "review"

    def __init__(self, layout: ShotLayout, timing: FrameTiming, config: ReviewConfig,
                 plate: Path, audio: Path | None) -> None:
        self.layout, self.timing, self.config = layout, timing, config
        self.plate = Path(plate)
        self.audio = Path(audio) if audio else None

    def inputs(self) -> dict[str, Path]:
        ins = {"frames": self.layout.render_dir}
        if self.audio:
            ins["audio"] = self.audio
        if self.config.side_by_side:
            ins["plate"] = self.plate.parent if is_sequence_pattern(self.plate) else self.plate
        return ins

    def params(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "timing": asdict(self.timing), "prefix": self.layout.frame_prefix}

    def outputs(self) -> dict[str, Path]:
        return {"movie": self.layout.review_movie}

    def _audio_source(self) -> Path | None:
        if self.audio is None:
            return None
        if not probe(self.audio).has_audio:
            log.warning("%s has no audio stream: review movie will be silent", self.audio)
            return None
        return self.audio

    def run(self, ctx: StageContext) -> None:
        frames = list(self.timing.frames)
        missing = [f for f in frames if not self.layout.frame_path(f).exists()]
        if missing:
            raise MediaError(f"cannot assemble review movie: {len(missing)} frame(s) missing, first {missing[0]}")
        cfg = self.config
        view = {"display": cfg.display, "view": cfg.view}
        first = exr_display_rgb(self.layout.frame_path(frames[0]), cfg.colourspace, **view)
        h, w = first.shape[:2]
        size = (w * 2, h) if self.config.side_by_side else (w, h)
        audio = self._audio_source()
        plate = open_plate(self.plate, self.timing.fps, self.timing.start_frame) if self.config.side_by_side else None
        meta = {"title": f"{self.layout.show} {self.layout.sequence} {self.layout.shot} {self.layout.version}"}
        try:
            with ReviewMovieWriter(self.layout.review_movie, self.timing.fps, size, audio=audio,
                                   audio_offset_frames=(self.timing.start_frame - self.timing.first
                                                        + cfg.audio_offset_frames),
                                   crf=self.config.crf, overwrite=True, metadata=meta) as mov, \
                    ctx.progress(len(frames), "frames") as prog:
                plate_iter = plate.iter(frames[0], frames[-1]) if plate else None
                for f in frames:
                    img = first if f == frames[0] else exr_display_rgb(self.layout.frame_path(f),
                                                                       cfg.colourspace, **view)
                    if plate_iter is not None:
                        _, pimg = next(plate_iter)
                        img = np.concatenate([plate_display_rgb(pimg, cfg.colourspace, **view), img], 1)
                    if self.config.burn_in:
                        tc = (timecode_for_frame(f, self.timing.fps, start_frame=self.timing.start_frame,
                                                 start_timecode=self.timing.start_timecode)
                              if self.timing.start_timecode else "")
                        img = burn_in(img, [f"{self.layout.shot} {self.layout.version}  frame {f}  {tc}".rstrip()])
                    mov.write(img)
                    prog.update()
        finally:
            if plate is not None:
                plate.close()
