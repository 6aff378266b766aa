"""What every shot stage shares: the shot's output layout and frame provenance."""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from engine import __version__


@dataclass(frozen=True)
class ShotLayout:
    """Where one version of a shot writes: ``{template}`` with task = render | review | qc.

    Frame files follow the delivery convention ``{show}_{sequence}_{shot}_{task}_vNNN.####.exr``
    numbered like the plate (1001-based by default).
    """

    show: str
    sequence: str
    shot: str
    version: str  # "v001"
    render_dir: Path
    review_dir: Path
    qc_dir: Path

    @property
    def frame_prefix(self) -> str:
        return f"{self.show}_{self.sequence}_{self.shot}_render_{self.version}"

    def frame_path(self, frame: int) -> Path:
        return self.render_dir / f"{self.frame_prefix}.{frame:04d}.exr"

    @property
    def frame_pattern(self) -> Path:
        return self.render_dir / f"{self.frame_prefix}.%04d.exr"

    @property
    def review_movie(self) -> Path:
        return self.review_dir / f"{self.show}_{self.sequence}_{self.shot}_review_{self.version}.mp4"


@dataclass(frozen=True)
class FrameTiming:
    """The shot's clock: frame numbers, fps and the plate's start timecode."""

    fps: Fraction
    first: int
    last: int
    start_frame: int          # frame number of the plate's first frame
    start_timecode: str | None  # timecode of start_frame

    @property
    def frames(self) -> range:
        return range(self.first, self.last + 1)


def job_id() -> str:
    """The scheduler's id of the running task, for provenance ('' when run by hand)."""
    for key in ("SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID", "SUBMITIT_LOCAL_JOB_ID"):
        val = os.environ.get(key)
        if val:
            task = os.environ.get("SLURM_ARRAY_TASK_ID")
            return f"{val}_{task}" if key == "SLURM_ARRAY_JOB_ID" and task else val
    return ""


def provenance(extra: dict[str, Any]) -> dict[str, str]:
    out = {"engineVersion": __version__, "jobId": job_id()}
    out.update({k: "" if v is None else str(v) for k, v in extra.items()})
    return out


class FrameSequenceStageMixin:
    """What the render stages share (mixed in before ``ItemStage``): the version's render
    folder is the output and holds the state (one ledger per chunk stage name, so array
    tasks never share one), and every frame number is one item. ``run`` streams the frames
    (decoding the plate in order), so ``run_item`` is never used."""

    layout: ShotLayout
    frames: list[int]

    def outputs(self) -> dict[str, Path]:
        return {"frames": self.layout.render_dir}

    def state_dir(self) -> Path:
        return self.layout.render_dir / ".portrait"

    def items(self) -> list:
        from engine.pipeline import StageItem

        return [StageItem(str(f), {"exr": self.layout.frame_path(f)}, {"frame": f}) for f in self.frames]

    def run_item(self, ctx, item) -> None:  # pragma: no cover - run() streams
        raise NotImplementedError(f"{type(self).__name__}.run streams frames; run_item is unused")
