"""Render stage, pass-through edition: the plate's frames to delivery EXRs.

Until the neural renderer lands this stage is what exercises the whole spine: decode the
plate frame-accurately, convert to scene-linear, write one EXR per plate frame with the
delivery naming, windows and metadata. Each frame is a resumable item: a killed job's rerun
writes only the frames that are missing or invalid, and a chunk (``--frames a-b``) renders
only its own frames.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from engine.io import colour
from engine.io.exr import exr_frame_metadata, write_exr
from engine.io.plate import open_plate
from engine.pipeline import ItemStage, StageContext
from engine.stages.common import FrameSequenceStageMixin, FrameTiming, ShotLayout, provenance


@dataclass(frozen=True)
class PassthroughRenderConfig:
    compression: str = "zip"
    colourspace: str = "Rec.709"      # the plate's colourspace (resolved, never "auto")
    owner: str = ""
    comments: str = "Portrait Engine pass-through render (no neural model applied)"
    provenance: dict[str, str] = field(default_factory=dict)


class PassthroughRenderStage(FrameSequenceStageMixin, ItemStage):
    name = "render"
    item_unit = "frames"

    def __init__(self, plate: Path, layout: ShotLayout, timing: FrameTiming,
                 config: PassthroughRenderConfig, frames: Sequence[int] | None = None,
                 name: str | None = None) -> None:
        self.plate = Path(plate)
        self.layout = layout
        self.timing = timing
        self.config = config
        self.frames = list(frames) if frames is not None else list(timing.frames)
        if name:
            self.name = name

    def inputs(self) -> dict[str, Path]:
        return {"plate": self.plate}

    def params(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "frames": [self.frames[0], self.frames[-1], len(self.frames)],
                "timing": asdict(self.timing), "prefix": self.layout.frame_prefix}

    def _write(self, frame: int, image: np.ndarray) -> None:
        lin = colour.to_scene_linear(image, self.config.colourspace)
        h, w = lin.shape[:2]
        rgba = np.empty((h, w, 4), dtype=np.float16)
        rgba[..., :3] = lin[..., :3]
        rgba[..., 3] = 1.0
        meta = exr_frame_metadata(frame, self.timing.fps, start_frame=self.timing.start_frame,
                                  start_timecode=self.timing.start_timecode, owner=self.config.owner or None,
                                  comments=self.config.comments, provenance=provenance(self.config.provenance))
        meta["portrait/colourspace"] = colour.linear_space_of(self.config.colourspace)
        write_exr(self.layout.frame_path(frame), {"rgba": rgba}, compression=self.config.compression,
                  metadata=meta, overwrite=True)

    def run(self, ctx: StageContext) -> None:
        items = ctx.all_items()
        pending = ctx.pending_items()
        pending_frames = sorted(int(it.key) for it in pending)
        by_key = {it.key: it for it in pending}
        with ctx.progress(len(items), "frames", initial=len(items) - len(pending)) as prog, \
                open_plate(self.plate, self.timing.fps, self.timing.start_frame) as plate:
            # Decode contiguous runs of pending frames in one pass each (seeking is exact but
            # costs a GOP decode; streaming a run costs one decode per frame).
            for first, last in _runs(pending_frames):
                for frame, image in plate.iter(first, last):
                    self._write(frame, image)
                    ctx.item_done(by_key[str(frame)])
                    prog.update()


def _runs(frames: Sequence[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for f in frames:
        if runs and f == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], f)
        else:
            runs.append((f, f))
    return runs
