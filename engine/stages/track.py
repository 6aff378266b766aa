"""Track stage: a media file (plate, driving video) -> its tracking file, cached by content.

The output lives under the output root, keyed by what it is a function of, not by shot or
version::

    {output.root}/_cache/tracking/<sha256 of the media, 16 hex>/<face model key>-<settings hash 8>.tracking.npz

so a plate tracked for ``v001`` is reused by ``v002`` and by any other shot using the same
media, face model and settings (the stage's manifest then says "up to date" and nothing
runs). The face model key is the model's id (name + content hash), with ``.media`` when the
built-in model's identity is learned from the media; such a model is written beside the
tracking file as ``<stem>.face_model.npz`` (a second output). Manifests and progress files are
named after the output stem, not the stage name, so that the same media tracked as a plate
in one shot and as a driving video in another shares one manifest.

:class:`TrackOverlayStage` renders the overlay review movie (``<stem>.overlay.mp4``) from a
tracking file: a separate stage, so asking for the movie later does not re-track.
"""
from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path
from typing import Any

from engine.face.model import FaceModelConfig
from engine.face.overlay import OverlayConfig, write_overlay_movie
from engine.face.track import (TrackConfig, derives_identity, face_model_key, is_sequence, media_sha256,
                               track_media, tracking_stem)
from engine.face.tracking_file import SUFFIX, fps_text, load_tracking, sidecar_path
from engine.pipeline import Stage, StageContext

CACHE_DIR = Path("_cache") / "tracking"


class _StemNamedState:
    """State files (manifest, ledger, progress, scratch) named after the output stem."""

    def _state_stem(self) -> str:
        raise NotImplementedError

    def manifest_path(self) -> Path:
        return self.state_dir() / f"{self._state_stem()}.json"

    def ledger_path(self) -> Path:
        return self.state_dir() / f"{self._state_stem()}.items.jsonl"

    def progress_path(self) -> Path:
        return self.state_dir() / f"{self._state_stem()}.progress.json"

    def scratch_path(self) -> Path:
        return self.state_dir() / "scratch" / self._state_stem()


class TrackStage(_StemNamedState, Stage):
    """Track one media file with :func:`engine.face.track.track_media`.

    ``root``: the output root the cache goes under. ``fps``: the rate the media must have
    (None: a video's own rate). ``start_frame``: the frame number of a video's first frame.
    ``frames``: (first, last) to track only part of it.
    """

    version = 1

    def __init__(self, media: str | Path, root: str | Path, *, fps: Fraction | None = None, start_frame: int = 1001,
                 colourspace: str = "auto", config: TrackConfig | None = None,
                 face_model: FaceModelConfig | None = None, frames: tuple[int, int] | None = None,
                 name: str = "track") -> None:
        self.media = Path(media)
        self.root = Path(root)
        self.fps = None if fps is None else Fraction(fps)
        self.start_frame = int(start_frame)
        self.colourspace = colourspace
        self.config = config or TrackConfig()
        self.face_model = face_model or FaceModelConfig()
        self.frames = None if frames is None else (int(frames[0]), int(frames[1]))
        self.name = name
        self._stem: str | None = None
        self._folder: Path | None = None

    # -- naming ---------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        # Names are recomputed where the stage runs (the media may have changed meanwhile).
        return {**self.__dict__, "_stem": None, "_folder": None}

    def folder(self) -> Path:
        if self._folder is None:
            self._folder = self.root / CACHE_DIR / media_sha256(self.media)[:16]
        return self._folder

    def _state_stem(self) -> str:
        if self._stem is None:
            self._stem = tracking_stem(face_model_key(self.face_model, self.config), self.params_sha256())
        return self._stem

    def tracking_path(self) -> Path:
        return self.folder() / f"{self._state_stem()}{SUFFIX}"

    def state_dir(self) -> Path:
        return self.folder() / ".portrait"

    # -- Stage --------------------------------------------------------------------------------
    def media_input(self) -> Path:
        """What the stage hashes as its media input: the file, or a sequence's folder."""
        return self.media.parent if is_sequence(self.media) else self.media

    def inputs(self) -> dict[str, Path]:
        ins = {"media": self.media_input()}
        if self.face_model.path is not None:
            ins["face_model"] = Path(self.face_model.path)
        return ins

    def params(self) -> dict[str, Any]:
        fm = dataclasses.asdict(self.face_model)
        # The model file's content is an input (and names the output); where it sits or where
        # its derived data is cached does not change the result.
        fm.pop("path", None)
        fm.pop("cache_dir", None)
        return {"config": self.config.to_dict(), "face_model": fm,
                "fps": None if self.fps is None else fps_text(self.fps), "start_frame": self.start_frame,
                "colourspace": self.colourspace, "frames": list(self.frames) if self.frames else None}

    def outputs(self) -> dict[str, Path]:
        outs = {"tracking": self.tracking_path()}
        if derives_identity(self.face_model, self.config):
            outs["face_model"] = sidecar_path(self.tracking_path())
        return outs

    def run(self, ctx: StageContext) -> None:
        from engine.face.track import open_media

        source, _, _ = open_media(self.media, self.fps, self.start_frame)
        with source:
            total = len(source.frame_numbers) if self.frames is None else self.frames[1] - self.frames[0] + 1
        with ctx.progress(total, "frames") as prog:
            state = {"done": 0, "phase": "landmarks"}

            def progress(phase: str, frac: float) -> None:
                if phase == "landmarks":
                    n = int(round(frac * total))
                    if n > state["done"]:
                        prog.update(n - state["done"])
                        state["done"] = n
                elif phase != state["phase"]:
                    ctx.log.info("%s: %s", self.name, phase)
                state["phase"] = phase

            result = track_media(self.media, self.fps, self.config, self.face_model, progress,
                                 start_frame=self.start_frame, colourspace=self.colourspace, frames=self.frames)
        result.write(self.tracking_path())
        flagged = int(result.flagged.sum())
        if flagged:
            ctx.log.info("%s: %d of %d frames flagged (%s)", self.media.name, flagged, len(result),
                            ", ".join(f"{k} {v}" for k, v in result.status_counts().items() if v and k != "ok"))


class TrackOverlayStage(_StemNamedState, Stage):
    """The overlay review movie of a :class:`TrackStage`'s tracking file."""

    version = 1

    def __init__(self, track: TrackStage, config: OverlayConfig | None = None, name: str | None = None) -> None:
        self.track = track
        self.config = config or OverlayConfig()
        self.name = name or f"{track.name}-overlay"

    def _state_stem(self) -> str:
        return f"{self.track._state_stem()}.overlay"

    def state_dir(self) -> Path:
        return self.track.state_dir()

    def movie_path(self) -> Path:
        return self.track.folder() / f"{self.track._state_stem()}.overlay.mp4"

    def inputs(self) -> dict[str, Path]:
        ins = {"tracking": self.track.tracking_path(), "media": self.track.media_input()}
        ins.update({f"track_{k}": v for k, v in self.track.outputs().items() if k != "tracking"})
        return ins

    def outputs(self) -> dict[str, Path]:
        return {"overlay": self.movie_path()}

    def run(self, ctx: StageContext) -> None:
        tracking = load_tracking(self.track.tracking_path())
        with ctx.progress(len(tracking), "frames") as prog:
            write_overlay_movie(tracking, self.movie_path(), media_path=self.track.media, config=self.config,
                                progress=lambda done, total: prog.update(1))


def shot_track_stages(shot, *, config: TrackConfig | None = None, overlay: bool = False,
                      overlay_config: OverlayConfig | None = None,
                      face_model: FaceModelConfig | None = None,
                      root: Path | None = None) -> tuple[list[Stage], dict[str, list[str]]]:
    """The tracking stages of a shot: its plate (at the shot's fps, numbered from
    ``plate.start_frame``) and, when ``drive.mode`` is ``video``, the driving video (at its own
    rate, numbered from 0: its frames are mapped onto the plate's by the drive stage, with
    ``drive.offset``). ``root`` overrides ``output.root`` as the cache's root. Returns
    (stages, deps) for :func:`engine.pipeline.run_stages`."""
    fm = face_model or FaceModelConfig(kind=shot.face_model.kind,
                                       path=None if shot.face_model.path is None else str(shot.face_model.path))
    root = Path(root) if root is not None else Path(shot.output.root)
    stages: list[Stage] = [TrackStage(shot.plate.path, root, fps=shot.fps, start_frame=shot.plate.start_frame,
                                      colourspace=shot.plate.colourspace, config=config, face_model=fm,
                                      name="track-plate")]
    if shot.drive.mode == "video" and shot.drive.source is not None:
        drive = TrackStage(shot.drive.source, root, fps=None, start_frame=0, config=config, face_model=fm,
                           name="track-drive")
        if drive.tracking_path() != stages[0].tracking_path():
            stages.append(drive)
    deps: dict[str, list[str]] = {s.name: [] for s in stages}
    if overlay:
        for s in list(stages):
            ov = TrackOverlayStage(s, overlay_config)
            stages.append(ov)
            deps[ov.name] = [s.name]
    return stages, deps
