"""Face tracking of one media file: decode -> landmarks -> face-model fit -> smoothing -> crops.

:func:`track_media` runs the whole chain and returns a :class:`TrackingResult` (written with
:meth:`TrackingResult.write` as a ``portrait.tracking/1`` file, see
:mod:`engine.face.tracking_file`):

1. **decode** the media frame-accurately (:func:`engine.io.open_plate`; a video is numbered
   ``start_frame + index``, an image sequence by its file names; EXR frames go through the
   display transform of :mod:`engine.io.colour` because the landmark network sees display RGB);
2. **landmarks**: MediaPipe Face Mesh, 478 points per frame with a per-frame status
   (:mod:`engine.face.landmarks`); frames are streamed, never held in memory;
3. **face model**: the configured model (:class:`engine.face.model.FaceModelConfig`). The
   built-in model has no identity components: its *identity* is the actor's own shape, so by
   default (``builtin_identity="media"``) a built-in model is learned from this media's
   landmark tracks (:func:`engine.face.model_builtin.build_builtin_model`, anchored to the
   shipped generic model's frame) and stored beside the tracking file as a sidecar;
4. **fit**: identity (ICT), focal, per-frame expression and head pose by the batch landmark fit
   (:func:`engine.face.fit.fit_sequence`, which already has a temporal term);
5. **smoothing**: the fitted expression / rotation / translation tracks are filtered by a
   Savitzky-Golay filter with one frame of look-ahead (:mod:`engine.face.smoothing`): it keeps
   polynomial motion exactly (no lag on ramps) and removes the frame-to-frame landmark jitter
   the fit still passes through (measured on the actor plate: the fit alone removes ~20 % of
   the raw landmark acceleration, the filter brings it to ~57 %, lag 0 frames);
6. **crops**: stabilised square crops from the landmarks (:mod:`engine.face.crop`);
7. **status** per frame: the landmark status (``ok`` / ``no_face`` / ``low_confidence`` /
   ``multiple_faces``), then ``fit_failed`` (usable landmarks, not fitted) and ``poor_fit``
   (reprojection error above ``max_nme`` inter-ocular distances). A video without any face is
   not an error: every frame is flagged ``no_face``, the parameters are NaN and a warning is
   logged; corrupt media raise :class:`~engine.errors.MediaError` with one line.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from engine.errors import ConfigError, MediaError
from engine.face import landmarks as mp
from engine.face.crop import CropConfig, compute_crops
from engine.face.fit import FitConfig, FitResult, fit_sequence, postprocess
from engine.face.model import FaceModel, FaceModelConfig
from engine.face.smoothing import SmoothingConfig, mean_acceleration
from engine.face.tracking_file import (STATUS_FIT_FAILED, STATUS_NAMES, STATUS_POOR_FIT, TrackingResult,
                                       load_tracking, new_header)
from engine.util.hashing import file_sha256

__all__ = ["TrackConfig", "TrackingResult", "track_media", "load_tracking", "media_sha256", "load_model",
           "face_model_key", "tracking_stem", "estimate_lag_frames", "fitted_landmark_mask", "ProgressFn"]

log = logging.getLogger(__name__)

#: ``progress(phase, fraction)``; phases: ``landmarks``, ``model``, ``fit``, ``crops``.
ProgressFn = Callable[[str, float], None]

BUILTIN_IDENTITIES = ("media", "generic")


def _default_smoothing() -> SmoothingConfig:
    # Savitzky-Golay, 6 frames back, 1 ahead, quadratic: polynomials up to degree 2 pass
    # unchanged (no lag on ramps and steady accelerations), white jitter is cut ~3x in
    # acceleration; the one frame of look-ahead is the latency budget the issue allows.
    return SmoothingConfig(kind="savgol", past=6, lookahead=1, order=2)


@dataclass
class TrackConfig:
    """Settings of the whole tracking chain (nerfstudio-style: one dataclass per component)."""

    landmarks: mp.LandmarkConfig = field(default_factory=mp.LandmarkConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    smoothing: SmoothingConfig = field(default_factory=_default_smoothing)  # of the fitted tracks
    crop: CropConfig = field(default_factory=CropConfig)
    # Built-in model only: "media" learns the identity (and expression basis) from this
    # media's landmarks; "generic" uses the shipped generic model as is.
    builtin_identity: str = "media"
    min_identity_frames: int = 25    # usable frames needed to learn a built-in identity
    max_nme: float = 0.05            # fitted frames above this error (inter-ocular units): poor_fit

    def validate(self) -> None:
        self.landmarks.validate()
        self.fit.validate()
        self.smoothing.validate()
        self.crop.validate()
        if self.builtin_identity not in BUILTIN_IDENTITIES:
            raise ConfigError(f"track.builtin_identity must be one of {', '.join(BUILTIN_IDENTITIES)}, "
                              f"got {self.builtin_identity!r}")
        if self.min_identity_frames < 1:
            raise ConfigError(f"track.min_identity_frames must be >= 1, got {self.min_identity_frames}")
        if not self.max_nme > 0:
            raise ConfigError(f"track.max_nme must be > 0, got {self.max_nme}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------
# media identity
# ---------------------------------------------------------------------------------------
def is_sequence(path: str | os.PathLike) -> bool:
    from engine.io.sequence import is_sequence_pattern
    return is_sequence_pattern(path)


def media_sha256(path: str | os.PathLike) -> str:
    """Content hash of a media file, or of an image sequence's frame files (names + contents,
    not other files that share its folder)."""
    if is_sequence(path):
        import hashlib

        from engine.io.sequence import ImageSequenceSource

        seq = ImageSequenceSource(path)
        h = hashlib.sha256()
        for frame in seq.frame_numbers:
            p = seq.path(frame)
            h.update(f"{frame}:{p.name}:".encode())
            h.update(file_sha256(p).encode())
        return h.hexdigest()
    p = Path(path)
    if not p.is_file():
        raise MediaError(f"media file not found: {p}")
    return file_sha256(p)


# ---------------------------------------------------------------------------------------
# face model
# ---------------------------------------------------------------------------------------
_MODEL_CACHE: dict[tuple, FaceModel] = {}


def load_model(spec: FaceModelConfig | FaceModel | None) -> FaceModel:
    """The face model of a spec (memoised per process on the file's identity): the stage
    asks for the model id to name its output before it runs, then runs with the same model."""
    if isinstance(spec, FaceModel):
        return spec
    spec = spec or FaceModelConfig()
    key: tuple = (spec.kind, spec.path, spec.n_id, spec.n_exp)
    if spec.path is not None:
        try:
            st = Path(spec.path).stat()
        except OSError:
            raise MediaError(f"face model file not found: {spec.path}") from None
        key += (st.st_size, st.st_mtime_ns)
    hit = _MODEL_CACHE.get(key)
    if hit is None:
        hit = spec.load()
        _MODEL_CACHE[key] = hit
    return hit


def face_model_key(spec: FaceModelConfig | FaceModel | None, config: TrackConfig | None = None) -> str:
    """Names the face model in tracking file names: the base model's id, plus ``.media`` when
    a built-in identity is learned from the media itself."""
    model = load_model(spec)
    config = config or TrackConfig()
    key = model.model_id()
    if derives_identity(spec, config):
        key += ".media"
    return key


def derives_identity(spec: Any, config: TrackConfig) -> bool:
    """Only the *generic* built-in model (no path) gets the media's identity: a saved actor
    model (a path) is used as given, e.g. to track a driving video in the actor's basis."""
    if spec is None:
        spec = FaceModelConfig()
    return (isinstance(spec, FaceModelConfig) and spec.kind == "builtin" and spec.path is None
            and config.builtin_identity == "media")


def tracking_stem(model_key: str, params_hash: str) -> str:
    """``<face model key>-<8 hex of the settings hash>``: the same media tracked with the same
    model and settings is one file (across shots and versions); other settings never
    overwrite it."""
    return f"{model_key}-{params_hash[:8]}"


# ---------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------
def display_frames(source, first: int, last: int, colourspace: str) -> Iterator[tuple[int, np.ndarray]]:
    """(frame number, RGB uint8 display-referred frame) of a FrameSource: what the landmark
    network and review movies see (scene-linear EXR frames go through the display transform)."""
    from engine.io import colour

    for number, frame in source.iter(first, last):
        if frame.dtype != np.uint8:
            frame = colour.to_uint8(colour.to_display(frame, colourspace))
        yield number, frame


def resolve_colourspace(path: str | os.PathLike, colourspace: str) -> str:
    if colourspace != "auto":
        return colourspace
    name = str(path).lower()
    if name.endswith(".exr"):
        return "ACEScg"
    return "sRGB" if name.endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff")) else "Rec.709"


def open_media(path: str | os.PathLike, fps: Fraction | None, start_frame: int):
    """(FrameSource, fps, kind) for a video (fps None: its own rate) or an image sequence."""
    from engine.io import open_plate, probe

    if is_sequence(path):
        if fps is None:
            raise ConfigError(f"{path}: an image sequence needs an explicit fps")
        return open_plate(path, Fraction(fps)), Fraction(fps), "sequence"
    info = probe(path)   # MediaError (one line) for missing / corrupt files
    if not info.has_video:
        raise MediaError(f"{path} has no video stream")
    rate = Fraction(fps) if fps is not None else info.fps
    if rate is None:
        raise MediaError(f"{path}: cannot determine the video frame rate")
    if info.frame_count < 1:
        raise MediaError(f"{path} has no video frames")
    return open_plate(path, rate, start_frame), rate, "video"


# ---------------------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------------------
def track_media(path: str | os.PathLike, fps: Fraction | float | None = None, config: TrackConfig | None = None,
                face_model_spec: FaceModelConfig | FaceModel | None = None, progress: ProgressFn | None = None,
                *, start_frame: int = 1001, colourspace: str = "auto",
                frames: tuple[int, int] | None = None) -> TrackingResult:
    """Track the face in a video or image sequence (see the module doc).

    fps: the rate the media must have (a video at another rate is refused, never resampled);
    None takes a video's own rate. frames: (first, last) frame numbers to track (default all).
    Returns the result in memory; ``result.write(path)`` writes the tracking file.
    """
    config = config or TrackConfig()
    config.validate()
    progress = progress or (lambda phase, frac: None)
    t_start, c_start = time.perf_counter(), time.process_time()
    timings: dict[str, float] = {}
    fm_spec = face_model_spec if face_model_spec is not None else FaceModelConfig()
    base_model = load_model(fm_spec)            # fail on a bad model before decoding anything
    space = resolve_colourspace(path, colourspace)
    media_hash = media_sha256(path)
    timings["setup_s"] = time.perf_counter() - t_start

    # ---- decode + landmarks --------------------------------------------------------------
    t0, c0 = time.perf_counter(), time.process_time()
    source, rate, kind = open_media(path, None if fps is None else Fraction(fps), start_frame)
    with source:
        numbers = source.frame_numbers
        first, last = (numbers.start, numbers.stop - 1) if frames is None else (int(frames[0]), int(frames[1]))
        total = last - first + 1
        pts, status, conf, boxes, nfaces, frame_numbers = [], [], [], [], [], []
        size = None
        with mp.LandmarkTracker(config.landmarks) as tracker:
            for number, rgb in display_frames(source, first, last, space):
                r = tracker.process(rgb)
                size = (rgb.shape[1], rgb.shape[0])
                pts.append(r.points)
                status.append(r.status)
                conf.append(r.confidence)
                boxes.append(r.bbox)
                nfaces.append(min(r.num_faces, 255))
                frame_numbers.append(number)
                if len(pts) % 25 == 0 or len(pts) == total:
                    progress("landmarks", len(pts) / total)
    if not pts:
        raise MediaError(f"{path}: no frames decoded")
    lm_track = mp.LandmarkTrack(np.stack(pts), np.asarray(status, np.uint8), np.asarray(conf, np.float32),
                                np.stack(boxes), np.asarray(nfaces, np.uint8), size)
    frame_numbers = np.asarray(frame_numbers, np.int64)
    n = len(lm_track)
    usable = lm_track.usable
    timings["landmarks_s"] = time.perf_counter() - t0
    timings["landmarks_cpu_s"] = time.process_time() - c0
    notes: list[str] = []

    # ---- face model ------------------------------------------------------------------------
    t0 = time.perf_counter()
    model = base_model
    derived = False
    if derives_identity(face_model_spec, config):
        if int(usable.sum()) >= config.min_identity_frames:
            from engine.face.model_builtin import build_builtin_model

            clean = np.where(usable[:, None, None], lm_track.points, np.nan).astype(np.float32)
            model = build_builtin_model([clean], reference=base_model, name=f"{base_model.name}.media",
                                        source=f"built from the landmarks of {Path(path).name} (sha256 {media_hash[:16]})")
            derived = True
        elif usable.any():   # (no face at all is reported once, below)
            notes.append(f"only {int(usable.sum())} usable frames (< {config.min_identity_frames}): "
                         "the generic built-in model was used without the actor's identity")
            log.warning("%s: %s", path, notes[-1])
    progress("model", 1.0)
    timings["model_s"] = time.perf_counter() - t0

    # ---- fit + smoothing -------------------------------------------------------------------
    t0 = time.perf_counter()
    if usable.any():
        fit = fit_sequence(model, lm_track.points, usable, size, config.fit,
                           progress=lambda stage, frac: progress("fit", frac if stage == "frames" else 0.0))
        timings["fit_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        if config.smoothing.kind != "none":
            fit = postprocess(fit, model, {"expression": config.smoothing, "rotation": config.smoothing,
                                           "translation": config.smoothing}, float(rate), landmarks=lm_track.points)
        timings["smoothing_s"] = time.perf_counter() - t1
    else:
        fit = _nan_fit(model, n, size)
        timings["fit_s"] = time.perf_counter() - t0
        msg = f"no face found in any of the {n} frames: every frame is flagged no_face"
        notes.append(msg)
        log.warning("%s: %s", path, msg)
    progress("fit", 1.0)

    # ---- crops -----------------------------------------------------------------------------
    t0 = time.perf_counter()
    crops = compute_crops(lm_track, size, config.crop, rate)
    timings["crops_s"] = time.perf_counter() - t0
    progress("crops", 1.0)

    # ---- status ----------------------------------------------------------------------------
    if tuple(mp.STATUS_NAMES) != STATUS_NAMES[:len(mp.STATUS_NAMES)]:
        raise RuntimeError("landmark status codes no longer match the tracking file's")  # code bug
    track_status = lm_track.status.copy()
    fitted = np.asarray(fit.fitted, bool)
    track_status[usable & ~fitted] = STATUS_FIT_FAILED
    poor = usable & fitted & ~(np.nan_to_num(fit.nme, nan=np.inf) <= config.max_nme)
    track_status[poor] = STATUS_POOR_FIT

    timings["total_s"] = time.perf_counter() - t_start
    timings["total_cpu_s"] = time.process_time() - c_start
    timings["frames_per_s"] = n / max(timings["total_s"], 1e-9)
    fm_header = {
        "id": model.model_id(), "content_hash": model.content_hash(), "name": model.name,
        "kind": fm_spec.kind if isinstance(fm_spec, FaceModelConfig) else "npz",
        "spec": _spec_dict(fm_spec), "base_id": base_model.model_id(),
        "derived_from_media": derived, "sidecar": None,
        # A model learned from the media (or the generic fallback standing in for it), or one
        # handed in as an object, cannot be reloaded from a spec: it goes beside the file.
        "needs_sidecar": derives_identity(face_model_spec, config) or not isinstance(fm_spec, FaceModelConfig),
        "exp_names": list(model.exp_names), "n_id": model.n_id, "n_exp": model.n_exp,
    }
    media = {"path": str(Path(path).resolve()), "kind": kind,
             "sha256": media_hash, "image_size": [int(size[0]), int(size[1])],
             "start_frame": int(numbers.start), "colourspace": space,
             "frames_in_media": len(numbers)}
    header = new_header(media=media, fps=rate, frame_numbers=frame_numbers, face_model=fm_header,
                        config=config.to_dict())
    header["camera"] = {
        "model": "pinhole", "focal_px": float(fit.focal) if math.isfinite(fit.focal) else None,
        "principal_point": [float(v) for v in fit.principal_point], "image_size": [int(size[0]), int(size[1])],
        "convention": "engine/face/camera.py: OpenCV axes (+X right, +Y down, +Z forward), x_cam = R x + t "
                      "with R the axis-angle fit_rotation, pixel centres at +0.5; model units cm",
    }
    header["summary"] = _summary(lm_track, fit, model, usable)
    header["timings"] = {k: round(v, 4) for k, v in timings.items()}
    header["notes"] = notes
    return TrackingResult(header=header, frame_numbers=frame_numbers, status=track_status,
                          landmarks=lm_track, fit=fit, crops=crops, model=model)


def _spec_dict(spec: Any) -> dict[str, Any] | None:
    if isinstance(spec, FaceModelConfig):
        d = asdict(spec)
        d.pop("cache_dir", None)   # where derived data is cached does not change the model
        return d
    return None


def _nan_fit(model: FaceModel, n: int, size: tuple[int, int]) -> FitResult:
    nan3 = np.full((n, 3), np.nan, np.float32)
    return FitResult(identity=np.zeros(model.n_id, np.float32), expression=np.full((n, model.n_exp), np.nan, np.float32),
                     rotation=nan3.copy(), head_rotation=nan3.copy(), translation=nan3.copy(), focal=float("nan"),
                     principal_point=np.array([size[0] / 2.0, size[1] / 2.0], np.float32), image_size=tuple(size),
                     landmarks_2d=np.full((n, mp.NUM_LANDMARKS, 2), np.nan, np.float32),
                     error_px=np.full(n, np.nan, np.float32), nme=np.full(n, np.nan, np.float32),
                     iod=np.full(n, np.nan, np.float32), fitted=np.zeros(n, bool), converged=False)


def fitted_landmark_mask(model: FaceModel) -> np.ndarray:
    """(478,) bool: landmarks the model embeds with a positive fitting weight (the ones its
    reprojection error is measured on)."""
    return (np.asarray(model.landmark_tri) >= 0) & (np.asarray(model.landmark_weight) > 0)


def estimate_lag_frames(reference: np.ndarray, signal: np.ndarray, valid: np.ndarray | None = None,
                        max_lag: int = 5) -> float:
    """Delay (frames) of ``signal`` behind ``reference``, both (N, ...) tracks of the same
    points: the peak of the cross-correlation of their frame-to-frame velocities over shifts
    -max_lag..max_lag, refined by a parabola through the peak. Positive: ``signal[t]`` follows
    ``reference[t - lag]`` (a causal filter lags); 0 for a zero-phase filter. NaN if the
    tracks do not move. Velocities touching an invalid frame are left out."""
    ref = np.asarray(reference, np.float64).reshape(len(reference), -1)
    sig = np.asarray(signal, np.float64).reshape(len(signal), -1)
    ok = np.isfinite(ref).all(1) & np.isfinite(sig).all(1)
    if valid is not None:
        ok &= np.asarray(valid, bool)
    vr, vs = np.diff(ref, axis=0), np.diff(sig, axis=0)
    vok = ok[1:] & ok[:-1]
    vr = np.where(vok[:, None], vr, 0.0)
    vs = np.where(vok[:, None], vs, 0.0)
    vr -= vr.mean(1, keepdims=True)   # a global drift would correlate at every shift
    vs -= vs.mean(1, keepdims=True)
    m = len(vr)
    if m <= 2 * max_lag + 2:
        return float("nan")
    corr = []
    for lag in range(-max_lag, max_lag + 1):
        a = vr[max(0, -lag):m - max(0, lag)]
        b = vs[max(0, lag):m - max(0, -lag)]
        den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
        corr.append(float((a * b).sum()) / den if den > 0 else 0.0)
    c = np.asarray(corr)
    if not np.any(c > 0):
        return float("nan")
    k = int(np.argmax(c))
    offset = 0.0
    if 0 < k < len(c) - 1:
        den = c[k - 1] - 2 * c[k] + c[k + 1]
        if den < 0:
            offset = 0.5 * (c[k - 1] - c[k + 1]) / den
    return float(k - max_lag + offset)


def _summary(lm_track, fit: FitResult, model: FaceModel, usable: np.ndarray) -> dict[str, Any]:
    def r(x: float, k: int = 5) -> float | None:
        return round(float(x), k) if math.isfinite(float(x)) else None

    ok = np.asarray(fit.fitted, bool)
    out: dict[str, Any] = {"frames": int(ok.size), "usable": int(usable.sum()), "fitted": int(ok.sum()),
                           "focal_px": r(fit.focal, 2)}
    nme = np.asarray(fit.nme)[ok]
    if nme.size:
        out.update(nme_mean=r(np.nanmean(nme)), nme_median=r(np.nanmedian(nme)),
                   nme_p95=r(np.nanpercentile(nme, 95)), error_px_mean=r(np.nanmean(np.asarray(fit.error_px)[ok]), 3))
        mask = fitted_landmark_mask(model)
        raw = mean_acceleration(lm_track.points[:, mask, :2], ok)
        smooth = mean_acceleration(fit.landmarks_2d[:, mask], ok)
        out.update(jitter_raw_px=r(raw, 4), jitter_fit_px=r(smooth, 4),
                   jitter_reduction=r(1.0 - smooth / raw, 4) if raw > 0 else None,
                   lag_frames=r(estimate_lag_frames(lm_track.points[:, mask, :2], fit.landmarks_2d[:, mask], ok), 3))
    return out
