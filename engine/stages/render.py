"""Render stage: face-model parameters + actor model + plate -> delivery EXR frames.

Each output frame is a resumable item (one ledger line per frame), exactly as the
pass-through stage it replaces: a chunk (``--frames 1001-1048``, one cluster array task)
renders only its frames; a rerun renders only frames that are missing or invalid; a frame a
killed job wrote but did not record is adopted when it decodes completely and carries this
stage's fingerprint (inputs + params) in its header.

Per frame: the plate frame is decoded, handed to the crop renderer (display-referred, through
:mod:`engine.render.ocio`), the crop render's matte is built (:mod:`engine.render.composite`),
filtered over time with its neighbours (:mod:`engine.render.temporal`), and everything is
pasted back at plate resolution and written with the passes of :mod:`engine.render.passes`.
The temporal filter needs ``radius`` neighbours either side: they are rendered too (not
written) so a chunk's frames are identical to a whole-shot render's and chunk boundaries are
seamless.

Where the parameters come from: the drive file when the shot has one (video- or
audio-driven), else the plate's tracking (self re-enactment). Without an actor model
(``checkpoint=None``) every frame passes the plate through (neural alpha 0) and is flagged.
Frames with no face (no tracked face, or a drive frame without one) pass the plate through
unchanged and are listed, with the reason, in the chunk's sidecar
``{prefix}.noface.{first}-{last}.json`` next to the frames. A dub that drives only the mouth
(``drive.region: mouth``) composites the lower face only (:class:`MatteConfig` ``region``).

Array tasks render chunks of one version: pass its number (``portrait render --version N``)
so that every chunk writes into the same folder; a version marked complete is never
written into (the pipeline refuses).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np

from engine import __version__
from engine.errors import ConfigError
from engine.io import colour
from engine.io.exr import exr_frame_metadata
from engine.io.plate import open_plate
from engine.io.sequence import is_sequence_pattern
from engine.pipeline import ItemStage, StageContext, StageItem
from engine.render import ocio
from engine.render.composite import (MatteConfig, PlateBox, SelfieSegmenter, composite_over, face_matte,
                                     footprint_box, mouth_matte, paste_layers)
from engine.render.model import CropFrame, CropRendererLike, crop_frames, load_crop_renderer
from engine.render.passes import FINGERPRINT_KEY, NO_FACE_KEY, FramePasses, frame_is_valid, write_frame
from engine.render.temporal import TemporalConfig, smooth_low_frequencies, smooth_sequence
from engine.stages.common import FrameSequenceStageMixin, FrameTiming, ShotLayout, provenance
from engine.util.atomic import atomic_write_json

log = logging.getLogger(__name__)

ALL_PASSES = ("rgba", "neural", "matte", "depth", "normals", "st")
SIDECAR_SCHEMA = "portrait.render-noface/1"


@dataclass(frozen=True)
class NeuralRenderConfig:
    """compression / layout / passes: the shot's ``render`` section; colourspace: the plate's
    (resolved); device: torch device of the crop renderer; batch_size: frames per network
    call; owner / comments / provenance: EXR metadata."""

    compression: str = "zip"
    layout: str = "multilayer"
    passes: tuple[str, ...] = ALL_PASSES
    colourspace: str = "Rec.709"
    owner: str = ""
    comments: str = "Portrait Engine neural render"
    provenance: dict[str, str] = field(default_factory=dict)
    device: str = "auto"
    batch_size: int = 4
    matte: MatteConfig = field(default_factory=MatteConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)

    def validate(self) -> None:
        unknown = [p for p in self.passes if p not in ALL_PASSES]
        if unknown or not self.passes:
            raise ConfigError(f"render passes {list(self.passes)}: unknown {unknown}; valid: {', '.join(ALL_PASSES)}")
        if "rgba" not in self.passes:
            raise ConfigError("render passes must include rgba (the composited frame)")
        if self.layout not in ("multilayer", "multipart"):
            raise ConfigError(f"render layout must be multilayer or multipart, got {self.layout!r}")
        if self.batch_size < 1:
            raise ConfigError("render batch_size must be >= 1")
        self.matte.validate()
        self.temporal.validate()


@dataclass
class RenderTimings:
    """Seconds spent per phase in the last run (for the benchmark)."""

    decode: float = 0.0
    network: float = 0.0
    matte: float = 0.0
    composite: float = 0.0
    exr_write: float = 0.0
    frames_written: int = 0
    frames_rendered: int = 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class NeuralRenderStage(FrameSequenceStageMixin, ItemStage):
    """The final render of a shot (or of one chunk of it, ``frames``).

    ``checkpoint``: the actor model (None: pass-through). ``tracking``: the plate's tracking
    file (needed with a checkpoint: its face model conditions the network, and its parameters
    drive a self re-enactment); ``drive``: a drive file whose parameters replace the
    tracking's. ``renderer`` / ``params``: an already-loaded crop renderer and in-memory
    FrameParams (tests, benchmarks: both travel with the pickled stage; the params' content
    is hashed into the stage's params). Per-phase timings of the last run are written to
    :attr:`timings_path`.
    """

    name = "render"
    item_unit = "frames"
    version = 1

    def __init__(self, plate: str | Path, layout: ShotLayout, timing: FrameTiming, config: NeuralRenderConfig,
                 *, checkpoint: str | Path | None = None, tracking: str | Path | None = None,
                 drive: str | Path | None = None, frames: Sequence[int] | None = None, name: str | None = None,
                 renderer: CropRendererLike | None = None, params: Any = None) -> None:
        config.validate()
        self.plate = Path(plate)
        self.layout = layout
        self.timing = timing
        self.config = config
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.tracking = Path(tracking) if tracking else None
        self.drive = Path(drive) if drive else None
        if self.checkpoint is not None and self.tracking is None:
            raise ConfigError("a neural render needs the plate's tracking file (face model and parameters)")
        self.frames = list(frames) if frames is not None else list(timing.frames)
        if not self.frames:
            raise ConfigError("render: no frames to render")
        if name:
            self.name = name
        self._renderer = renderer
        self._params = params
        self.timings = RenderTimings()

    @classmethod
    def for_shot(cls, shot, layout: ShotLayout, timing: FrameTiming, *, model: str | Path | None = None,
                 drive: str | Path | None = None, tracking: str | Path | None = None,
                 frames: Sequence[int] | None = None, name: str | None = None,
                 config: NeuralRenderConfig | None = None, root: Path | None = None) -> "NeuralRenderStage":
        """The render stage of a shot. ``model``: the actor model checkpoint (None: pass-through);
        ``drive``: the drive file (None: self re-enactment from the plate's tracking);
        ``tracking``: the plate's tracking file (default: the path of the shot's ``track-plate``
        stage, which must run first); ``frames`` / ``name``: a chunk and its stage name;
        ``config``: default :func:`shot_render_config`; ``root``: the tracking cache's root."""
        return _for_shot(cls, shot, layout, timing, model=model, drive=drive, tracking=tracking, frames=frames,
                         name=name, config=config, root=root)

    # -- Stage ------------------------------------------------------------------------------
    def inputs(self) -> dict[str, Path]:
        ins = {"plate": self.plate.parent if is_sequence_pattern(self.plate) else self.plate}
        for key in ("checkpoint", "tracking", "drive"):
            if getattr(self, key) is not None:
                ins[key] = getattr(self, key)
        return ins

    def params(self) -> dict[str, Any]:
        out = {"config": asdict(self.config), "frames": [self.frames[0], self.frames[-1], len(self.frames)],
               "timing": asdict(self.timing), "prefix": self.layout.frame_prefix}
        if self._params is not None:
            import hashlib
            h = hashlib.sha256()
            for k, v in sorted(self._params.to_arrays().items()):
                h.update(k.encode())
                h.update(np.ascontiguousarray(v).tobytes())
            out["frame_params_sha256"] = h.hexdigest()
        return out

    @property
    def timings_path(self) -> Path:
        return self.state_dir() / f"{self.validate_name()}.timings.json"

    @property
    def sidecar_path(self) -> Path:
        return self.layout.render_dir / f"{self.layout.frame_prefix}.noface.{self.frames[0]:04d}-{self.frames[-1]:04d}.json"

    # -- inputs -----------------------------------------------------------------------------
    def load_params(self):
        """FrameParams of the shot: the drive file's, else the plate tracking's; None without."""
        from engine.face.params import FrameParams

        if self._params is not None:
            return self._params
        if self.drive is not None:
            from engine.drive.drive_file import load_drive

            return load_drive(self.drive).params
        if self.tracking is not None:
            from engine.face.tracking_file import load_tracking

            return FrameParams.from_tracking(load_tracking(self.tracking))
        return None

    def renderer(self) -> CropRendererLike | None:
        if self._renderer is None and self.checkpoint is not None:
            from engine.face.tracking_file import load_tracking

            face_model = load_tracking(self.tracking).face_model()
            self._renderer = load_crop_renderer(self.checkpoint, face_model, device=self.config.device)
        return self._renderer

    def no_face_frames(self, params) -> dict[int, str]:
        """Frame -> reason, for this stage's frames that pass the plate through."""
        if self.checkpoint is None and self._renderer is None:
            return {f: "no actor model" for f in self.frames}
        if params is None:
            return {f: "no face parameters" for f in self.frames}
        index = {int(f): i for i, f in enumerate(params.frame_numbers)}
        out = {}
        for f in self.frames:
            i = index.get(f)
            if i is None:
                out[f] = "no face parameters for this frame"
            elif not bool(params.usable[i]):
                out[f] = "no usable face"
        return out

    # -- metadata -----------------------------------------------------------------------------
    def _metadata(self, frame: int, fingerprint: Any, no_face: str | None) -> dict[str, Any]:
        # Content hashes come from the stage's fingerprint: hashed once per run, and exactly
        # the bytes the frame was made from.
        hashes = {k: str(v.get("sha256", ""))[:16] for k, v in fingerprint.inputs.items()}
        prov = dict(self.config.provenance)
        prov["actorModelHash"] = hashes.get("checkpoint", "none (pass-through)" if self._renderer is None
                                            else f"in-memory {type(self._renderer).__name__}")
        prov["plateHash"] = hashes.get("plate", "")
        if self.drive is not None:
            prov["driveFileHash"] = hashes.get("drive", "")
        prov.setdefault("drivingSource", str(self.drive) if self.drive is not None else "none (plate performance)")
        prov.setdefault("shotVersion", self.layout.version)
        meta = exr_frame_metadata(frame, self.timing.fps, start_frame=self.timing.start_frame,
                                  start_timecode=self.timing.start_timecode, owner=self.config.owner or None,
                                  comments=self.config.comments, provenance=provenance(prov))
        lin = colour.linear_space_of(self.config.colourspace)
        meta["portrait/colourspace"] = lin
        meta["portrait/ocioColourspace"] = ocio.ocio_name(lin)
        meta["portrait/ocioConfig"] = ocio.CONFIG_NAME
        meta[FINGERPRINT_KEY] = fingerprint.digest
        meta[NO_FACE_KEY] = no_face or ""
        meta["portrait/passes"] = ",".join(self.config.passes)
        return meta

    # -- run ---------------------------------------------------------------------------------
    def run(self, ctx: StageContext) -> None:
        self.timings = RenderTimings()
        items = ctx.all_items()
        pending = ctx.pending_items()
        fingerprint = ctx.fingerprint.digest
        todo = []
        for it in pending:
            if frame_is_valid(it.outputs["exr"], self.config.passes, fingerprint):
                ctx.item_done(it)   # written by a killed run, complete, same inputs/params
            else:
                todo.append(it)
        if len(todo) < len(pending):
            ctx.log.info("%s: adopted %d complete frame(s) written by an earlier run", self.name,
                         len(pending) - len(todo))
        params = self.load_params() if (self.checkpoint is not None or self._renderer is not None) else None
        no_face = self.no_face_frames(params)
        self.layout.render_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.sidecar_path, {
            "schema": SIDECAR_SCHEMA, "engine_version": __version__, "shot_version": self.layout.version,
            "frames": [self.frames[0], self.frames[-1]],
            "no_face": [{"frame": f, "reason": r} for f, r in sorted(no_face.items())]})
        if not todo:
            return
        by_frame = {int(it.key): it for it in todo}
        t0 = time.perf_counter()
        with ctx.progress(len(items), "frames", initial=len(items) - len(todo)) as prog:
            _ChunkRun(self, params, no_face, fingerprint, by_frame, ctx, prog).run()
        atomic_write_json(self.timings_path, {**self.timings.as_dict(), "total": time.perf_counter() - t0},
                          overwrite=True)


class _ChunkRun:
    """Streams plate frames through the renderer and writes finished frames as soon as their
    temporal neighbourhood has been rendered (memory: a window of crops, not the chunk)."""

    def __init__(self, stage: NeuralRenderStage, params, no_face: dict[int, str], fingerprint: str,
                 todo: dict[int, StageItem], ctx: StageContext, prog) -> None:
        self.stage, self.cfg = stage, stage.config
        self.params, self.no_face, self.fingerprint = params, no_face, fingerprint
        self.todo, self.ctx, self.prog = todo, ctx, prog
        self.t = stage.timings
        self.renderer = stage.renderer() if params is not None else None
        self.index = ({int(f): i for i, f in enumerate(params.frame_numbers)} if params is not None else {})
        self.segmenter = SelfieSegmenter() if self.cfg.matte.segmentation == "selfie" else None
        self.crops: dict[int, CropFrame | None] = {}
        self.mattes: dict[int, np.ndarray | None] = {}
        self.mouths: dict[int, np.ndarray | None] = {}
        self.lows: dict[int, np.ndarray] = {}
        self.plates: dict[int, np.ndarray] = {}

    def _has_face(self, frame: int) -> bool:
        return self.renderer is not None and frame in self.index and bool(self.params.usable[self.index[frame]])

    def _needed_runs(self) -> list[tuple[int, int]]:
        tc = self.cfg.temporal
        lo, hi = self.stage.timing.first, self.stage.timing.last
        back, ahead = (tc.radius, tc.lookahead) if self.renderer is not None else (0, 0)
        need: set[int] = set()
        for f in self.todo:
            need.update(range(max(lo, f - back), min(hi, f + ahead) + 1))
        runs: list[tuple[int, int]] = []
        for f in sorted(need):
            if runs and f == runs[-1][1] + 1:
                runs[-1] = (runs[-1][0], f)
            else:
                runs.append((f, f))
        return runs

    def run(self) -> None:
        timing = self.stage.timing
        with open_plate(self.stage.plate, timing.fps, timing.start_frame) as plate:
            for first, last in self._needed_runs():
                self._run_range(plate, first, last)
        if self.segmenter is not None:
            self.segmenter.close()

    def _run_range(self, plate, first: int, last: int) -> None:
        # Frames enter the window in order (a no-face frame waits behind the face frames of
        # the batch being filled) so that "rendered up to frame f" always means every frame
        # up to f: a frame is only finished once its whole temporal neighbourhood exists.
        batch: list[tuple[int, np.ndarray | None]] = []
        it: Iterator = plate.iter(first, last)
        while True:
            t0 = time.perf_counter()
            nxt = next(it, None)
            self.t.decode += time.perf_counter() - t0
            if nxt is not None:
                frame, image = nxt
                if frame in self.todo:
                    self.plates[frame] = image
                batch.append((frame, image if self._has_face(frame) else None))
            n_faces = sum(img is not None for _, img in batch)
            if batch and (nxt is None or n_faces >= self.cfg.batch_size or n_faces == 0):
                self._render(batch)
                batch = []
            if nxt is None:
                break
            self._finish_ready(last, done=False)
        self._finish_ready(last, done=True)
        self.crops.clear(); self.mattes.clear(); self.mouths.clear(); self.lows.clear()

    def _render(self, batch: list[tuple[int, np.ndarray | None]]) -> None:
        space = self.cfg.colourspace
        faces = [(f, img) for f, img in batch if img is not None]
        rendered: dict[int, CropFrame] = {}
        if faces:
            t0 = time.perf_counter()
            disp = [ocio.plate_to_network(img, space) for _, img in faces]
            out = self.renderer.render(self.params, [self.index[f] for f, _ in faces], disp)
            rendered = dict(zip([f for f, _ in faces], crop_frames(out)))
            self.t.network += time.perf_counter() - t0
            self.t.frames_rendered += len(faces)
        for f, _ in batch:
            self._add(f, rendered.get(f))

    def _add(self, frame: int, crop: CropFrame | None) -> None:
        self.crops[frame] = crop
        if crop is None:
            self.mattes[frame] = None
            self.mouths[frame] = None
            return
        t0 = time.perf_counter()
        # Segment what the plate shows (hair, background), not what the network painted.
        seg_src = crop.context if crop.context is not None else crop.composite
        person = self.segmenter(seg_src) if self.segmenter is not None else None
        self.mattes[frame] = face_matte(crop.mask_face, self.cfg.matte, person, crop.lips)
        self.mouths[frame] = mouth_matte(crop.mask_mouth, self.cfg.matte, crop.mask_face, crop.lips)
        self.t.matte += time.perf_counter() - t0

    def _finish_ready(self, last: int, done: bool) -> None:
        tc = self.cfg.temporal
        ahead = tc.lookahead if self.renderer is not None else 0
        rendered_to = max(self.crops) if self.crops else None
        for f in sorted(k for k in self.plates):
            if not done and (rendered_to is None or min(f + ahead, last) > rendered_to):
                break
            self._finish(f)
            self.prog.update()
        # Forget crops no unfinished frame can need any more.
        keep_from = (min(self.plates) if self.plates else (rendered_to or 0) + 1) - tc.radius
        for d in (self.crops, self.mattes, self.mouths, self.lows):
            for k in [k for k in d if k < keep_from]:
                del d[k]

    def _smoothed_colour(self, frame: int, crop: CropFrame) -> np.ndarray:
        """The crop render with the low frequencies of its difference to the plate crop
        averaged over time (the mouth keeps its own): see engine.render.temporal."""
        tc = self.cfg.temporal
        if tc.colour_sigma <= 0:
            return crop.composite
        if crop.context is None:   # a renderer without the plate crop: filter the render itself
            return smooth_low_frequencies({k: (c.composite if c is not None else None)
                                           for k, c in self.crops.items()}, frame, tc, self.lows)
        diffs = {k: (None if c is None or c.context is None else c.composite - c.context)
                 for k, c in self.crops.items()}
        mouth = self.mouths.get(frame)
        keep = None
        if mouth is not None and mouth.any():
            sigma = tc.lowpass * crop.composite.shape[0]
            keep = np.clip(2.0 * cv2.GaussianBlur(mouth, (0, 0), 2.0 * sigma), 0.0, 1.0)
        diff = smooth_low_frequencies(diffs, frame, tc, self.lows, keep=keep, clip=False)
        return np.clip(crop.context + diff, 0.0, 1.0).astype(np.float32)

    def _finish(self, frame: int) -> None:
        cfg, space = self.cfg, self.cfg.colourspace
        image = self.plates.pop(frame)
        t0 = time.perf_counter()
        plate_lin = ocio.plate_to_linear(image, space)
        crop = self.crops.get(frame)
        h, w = plate_lin.shape[:2]
        if crop is None:
            passes = FramePasses(rgb=plate_lin, box=PlateBox(0, 0, 0, 0))
        else:
            matte_c = smooth_sequence(self.mattes, frame, cfg.temporal.matte_sigma, cfg.temporal.mode)
            comp_c = self._smoothed_colour(frame, crop)
            size = comp_c.shape[0]
            box = footprint_box(crop.affine, size, (w, h))
            aov_parts = [a if a.ndim == 3 else a[:, :, None] for a in (crop.depth, crop.normal, crop.uv)
                         if a is not None]
            pasted = paste_layers(ocio.network_to_linear(comp_c, space), [matte_c, self.mouths[frame]],
                                  crop.affine, box, aov=np.concatenate(aov_parts, 2) if aov_parts else None,
                                  aov_mask=crop.mask_face)
            # Composite with the values the passes store (half): the frame rebuilt from the
            # passes then matches R,G,B up to the rounding of the result itself.
            render_box = pasted.render.astype(np.float16).astype(np.float32)
            matte_face = pasted.mattes[0].astype(np.float16).astype(np.float32)
            fb = pasted.face_box
            rgb = composite_over(plate_lin, render_box[fb.y0 - box.y0:fb.y1 - box.y0, fb.x0 - box.x0:fb.x1 - box.x0],
                                 matte_face, fb)
            depth = normal = st = None
            if pasted.aov is not None:
                k = 0
                if crop.depth is not None:
                    depth, k = pasted.aov[:, :, 0], 1
                if crop.normal is not None:
                    normal, k = pasted.aov[:, :, k:k + 3], k + 3
                    # interpolation shortens unit vectors (between differing normals): renormalise
                    length = np.linalg.norm(normal, axis=-1, keepdims=True)
                    normal = np.divide(normal, length, out=np.zeros_like(normal), where=length > 1e-6)
                if crop.uv is not None:
                    st = pasted.aov[:, :, k:k + 2]
            passes = FramePasses(rgb=rgb, box=box, neural_rgb=render_box, neural_alpha=pasted.valid.astype(np.float32),
                                 face_box=fb, matte_face=matte_face, matte_mouth=pasted.mattes[1], depth=depth,
                                 normal=normal, st=st)
        self.t.composite += time.perf_counter() - t0
        t0 = time.perf_counter()
        item = self.todo[frame]
        write_frame(item.outputs["exr"], passes, passes=cfg.passes, compression=cfg.compression, layout=cfg.layout,
                    metadata=self.stage._metadata(frame, self.ctx.fingerprint, self.no_face.get(frame)))
        self.t.exr_write += time.perf_counter() - t0
        self.t.frames_written += 1
        self.ctx.item_done(item)


# ------------------------------------------------------------------------------------------
# shots
# ------------------------------------------------------------------------------------------
def shot_render_config(shot, layout: ShotLayout) -> NeuralRenderConfig:
    """The render settings of a shot: its ``render`` section, plate colourspace, provenance."""
    region = "face" if shot.drive.mode == "none" else (shot.drive.region or
                                                       ("mouth" if shot.drive.mode == "audio" else "face"))
    # The composited frame is the deliverable (and what the review movie and QC read): it is
    # written whatever the pass list says.
    passes = ("rgba",) + tuple(p for p in shot.render.passes if p != "rgba")
    return NeuralRenderConfig(
        compression=shot.render.compression, layout=shot.render.layout, passes=passes,
        matte=MatteConfig(region=region), colourspace=shot.plate.colourspace, owner=shot.show,
        comments=f"Portrait Engine {__version__} render of {shot.show} {shot.sequence} {shot.shot} "
                 f"{layout.version} (actor {shot.actor.id})",
        provenance={"shotVersion": layout.version, "shotConfigHash": shot.config_hash()[:16],
                    "actor": shot.actor.id, "driveMode": shot.drive.mode,
                    "drivingSource": str(shot.drive.source) if shot.drive.source is not None
                    else "none (plate performance)"})


def _plate_tracking_stage(shot, root: Path | None = None):
    from engine.stages.track import shot_track_stages

    stages, deps = shot_track_stages(shot, root=root)
    return next(s for s in stages if s.name == "track-plate"), stages, deps


def _for_shot(cls, shot, layout: ShotLayout, timing: FrameTiming, *, model: str | Path | None = None,
              drive: str | Path | None = None, tracking: str | Path | None = None,
              frames: Sequence[int] | None = None, name: str | None = None,
              config: NeuralRenderConfig | None = None, root: Path | None = None) -> "NeuralRenderStage":
    if model is not None and tracking is None:
        tracking = _plate_tracking_stage(shot, root)[0].tracking_path()
    return cls(shot.plate.path, layout, timing, config or shot_render_config(shot, layout), checkpoint=model,
               tracking=tracking if model is not None else None, drive=drive if model is not None else None,
               frames=frames, name=name)


def shot_render_stage(shot, layout: ShotLayout, timing: FrameTiming, *, frames: Sequence[int] | None = None,
                      root: Path | None = None, name: str | None = None,
                      config: NeuralRenderConfig | None = None) -> tuple[NeuralRenderStage, list, dict[str, list[str]]]:
    """The render stage of a shot (or of the chunk ``frames``) and the stages it needs.

    Returns ``(render, upstream, deps)``: ``upstream`` are the stages whose outputs the render
    reads (``track-plate`` [+ ``track-drive``] [+ ``drive``]; none without ``actor.model``),
    ``deps`` maps each stage name (the render's included) to the names it needs, for
    :func:`engine.pipeline.run_stages`. Without ``actor.model`` the render passes the plate
    through (all passes written, neural alpha 0, every frame listed in the sidecar).
    """
    name = name or (f"render-{frames[0]}-{frames[-1]}" if frames else "render")
    upstream: list = []
    deps: dict[str, list[str]] = {name: []}
    tracking = drive = None
    if shot.actor.model is not None:
        plate_track, track_stages, track_deps = _plate_tracking_stage(shot, root)
        upstream.extend(track_stages)
        deps.update(track_deps)
        tracking = plate_track.tracking_path()
        deps[name] = [plate_track.name]
        if shot.drive.mode != "none":
            from engine.stages.drive import shot_drive_stage

            drive_stage, drive_deps = shot_drive_stage(shot, track_stages, root=root)
            upstream.append(drive_stage)
            deps[drive_stage.name] = list(drive_deps)
            drive = drive_stage.out_path
            deps[name].append(drive_stage.name)
    stage = NeuralRenderStage.for_shot(shot, layout, timing, model=shot.actor.model, drive=drive, tracking=tracking,
                                       frames=frames, name=name, config=config, root=root)
    return stage, upstream, deps
