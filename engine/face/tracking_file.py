"""The tracking file, schema ``portrait.tracking/1``: everything face tracking learned about one
media file (a plate, an actor's training clip, a driving video), handed to later stages.

One ``.npz`` holds the per-frame arrays and a JSON header (the array ``header``, a 0-d string):

header (JSON)
    ``schema`` (``portrait.tracking``), ``schema_version``, ``schema_label``
    (``portrait.tracking/1``), ``engine_version`` (the code that wrote it), ``created``;
    ``media``: path, kind (video / sequence), ``sha256`` (content hash: the file, or a
    sequence's frame files), image size (W, H), start frame, colourspace; ``fps`` (a rational
    as text, ``"25"``, ``"24000/1001"``), ``first_frame`` / ``last_frame`` / ``frame_count``;
    ``face_model``: ``id`` and ``content_hash`` of the model the parameters belong to, its
    ``name``, ``kind``, ``spec`` (the :class:`~engine.face.model.FaceModelConfig` to load it
    again), ``base_id`` (the configured model), ``derived_from_media`` (the built-in model's
    identity learned from this media), ``sidecar`` (the file beside this one holding a model
    that cannot be reloaded from its spec), ``exp_names``, ``n_id``, ``n_exp``; ``config``
    (the TrackConfig, as a dict); ``camera`` (pinhole focal and principal point, and the
    convention the pose follows); ``status_names`` (index = the code in ``status``),
    ``status_counts``; ``summary`` (fit error, jitter and lag figures), ``timings``, ``notes``.

arrays (N = frames, 0-based index; ``frame_numbers`` maps index -> the media's frame number)
    ``frame_numbers`` (N,) int64; ``status`` (N,) uint8 codes into ``status_names``;
    ``lm_*``: MediaPipe landmarks (:class:`engine.face.landmarks.LandmarkTrack`: points
    (N,478,3) pixels u = x W + 0.5 (engine/face/camera.py convention), status, confidence,
    bbox, num_faces, image_size, status_names); ``fit_*``: face-model parameters
    (:class:`engine.face.fit.FitResult`: identity, expression (N,K_exp), rotation (camera
    axis-angle, ``x_cam = R x + t``), head_rotation, translation, focal, principal_point,
    landmarks_2d (the fitted model's landmarks, reprojected), error_px, nme, iod, fitted);
    ``crop_*``: the stabilised crops (:class:`engine.face.crop.CropTrack`).

A file is written atomically (a reader sees the old file or the new one, never half). Readers
go through :func:`load_tracking`, which checks the schema and its version: a file from a newer
engine is refused with a one-line error; an older version is upgraded in memory by the
functions registered with :func:`register_upgrade` (``from_version -> (header, arrays)`` of
the next version), so a schema change never strands the tracking caches of earlier shots.
"""
from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from engine import __version__
from engine.errors import MediaError
from engine.face.crop import CropTrack
from engine.face.fit import FitResult
from engine.util.schema_npz import SchemaNpz

SCHEMA = "portrait.tracking"
SCHEMA_VERSION = 1
SCHEMA_LABEL = f"{SCHEMA}/{SCHEMA_VERSION}"
SUFFIX = ".tracking.npz"

# Per-frame status of a tracked frame (the file stores the names, so codes can grow).
STATUS_OK = 0
STATUS_NO_FACE = 1
STATUS_LOW_CONFIDENCE = 2
STATUS_MULTIPLE_FACES = 3
STATUS_FIT_FAILED = 4     # landmarks usable, but the face model could not be fitted
STATUS_POOR_FIT = 5       # fitted, but the reprojection error is above TrackConfig.max_nme
STATUS_NAMES: tuple[str, ...] = ("ok", "no_face", "low_confidence", "multiple_faces", "fit_failed",
                                 "poor_fit")
#: Frames whose fitted parameters downstream stages may trust as measurements. A
#: ``multiple_faces`` frame is usable (the tracked person is followed) but still flagged for review.
USABLE_STATUSES = (STATUS_OK, STATUS_MULTIPLE_FACES)

_LM_KEYS = ("points", "status", "confidence", "bbox", "num_faces", "image_size", "status_names")
_FIT_KEYS = ("identity", "expression", "rotation", "head_rotation", "translation", "principal_point",
             "landmarks_2d", "error_px", "nme", "iod", "fitted", "focal", "image_size", "converged")
_CROP_KEYS = ("affine", "center", "side", "angle", "valid", "size", "plate_size")

_FILE = SchemaNpz(SCHEMA, SCHEMA_VERSION, "tracking", "re-track the media")
register_upgrade = _FILE.register_upgrade
unregister_upgrade = _FILE.unregister_upgrade


def fps_text(fps: Fraction) -> str:
    fps = Fraction(fps)
    return str(fps.numerator) if fps.denominator == 1 else f"{fps.numerator}/{fps.denominator}"


@dataclass
class TrackingResult:
    """A tracked media file: header + landmarks + fitted face model + crops (N frames).

    ``status`` codes index ``status_names`` (:data:`STATUS_NAMES` for files this engine writes).
    ``path`` is the file it was read from or written to (None while only in memory).
    """

    header: dict[str, Any]
    frame_numbers: np.ndarray     # (N,) int64
    status: np.ndarray            # (N,) uint8
    landmarks: Any                # engine.face.landmarks.LandmarkTrack
    fit: FitResult
    crops: CropTrack
    path: Path | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # arrays of newer writers, kept as read
    # The FaceModel in memory (not persisted in the file): set by the tracker, or by
    # face_model() once loaded. A model that cannot be reloaded from its spec (learned from
    # the media, or handed in as an object) is written as a sidecar next to the file.
    model: Any = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.frame_numbers.shape[0])

    # -- header shortcuts ------------------------------------------------------------------
    @property
    def fps(self) -> Fraction:
        return Fraction(self.header["fps"])

    @property
    def image_size(self) -> tuple[int, int]:
        w, h = self.header["media"]["image_size"]
        return int(w), int(h)

    @property
    def status_names(self) -> tuple[str, ...]:
        return tuple(self.header["status_names"])

    @property
    def media_sha256(self) -> str:
        return str(self.header["media"]["sha256"])

    @property
    def face_model_id(self) -> str:
        return str(self.header["face_model"]["id"])

    @property
    def face_model_hash(self) -> str:
        return str(self.header["face_model"]["content_hash"])

    @property
    def exp_names(self) -> tuple[str, ...]:
        return tuple(self.header["face_model"]["exp_names"])

    # -- per-frame views ---------------------------------------------------------------------
    def status_name(self, index: int) -> str:
        return self.status_names[int(self.status[index])]

    @property
    def usable(self) -> np.ndarray:
        """(N,) bool: frames whose fitted parameters are measurements (ok / multiple_faces)."""
        codes = [self.status_names.index(n) for n in ("ok", "multiple_faces") if n in self.status_names]
        return np.isin(self.status, codes)

    @property
    def flagged(self) -> np.ndarray:
        """(N,) bool: every frame whose status is not ``ok`` (for review; no_face frames are
        passed through by the renderer)."""
        return self.status != self.status_names.index("ok")

    def status_counts(self) -> dict[str, int]:
        return {name: int((self.status == code).sum()) for code, name in enumerate(self.status_names)}

    def index_of(self, frame_number: int) -> int:
        """0-based index of a frame number (MediaError when the file does not have it)."""
        idx = np.flatnonzero(self.frame_numbers == int(frame_number))
        if idx.size == 0:
            raise MediaError(f"frame {frame_number} is not in the tracking file "
                             f"({int(self.frame_numbers[0])}-{int(self.frame_numbers[-1])})")
        return int(idx[0])

    def face_model(self):
        """Load the face model the parameters belong to, checking its content hash.

        A model derived from the media (the built-in model with the actor's identity) is read
        from the sidecar beside this file; otherwise from the path it was loaded from."""
        from engine.face.model import FaceModelConfig, load_face_model_npz

        fm = self.header["face_model"]
        if self.model is not None:
            return self.model
        if fm.get("sidecar"):
            if self.path is None:
                raise MediaError("tracking result has no file: cannot locate its face-model sidecar")
            model = load_face_model_npz(self.path.parent / fm["sidecar"])
        elif fm.get("spec"):
            model = FaceModelConfig(**fm["spec"]).load()
        else:
            raise MediaError(f"tracking file does not say how to load its face model {fm.get('id')}")
        if model.content_hash() != fm["content_hash"]:
            raise MediaError(f"face model {model.model_id()} does not match the tracking file's "
                             f"{fm['id']} (content hash differs): re-track {self.header['media']['path']}")
        self.model = model
        return model

    # -- persistence -------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {"frame_numbers": np.asarray(self.frame_numbers, np.int64),
                                      "status": np.asarray(self.status, np.uint8)}
        for k, v in self.landmarks.to_arrays().items():
            out[f"lm_{k}"] = np.asarray(v)
        for k, v in self.fit.as_arrays().items():
            out[f"fit_{k}"] = np.asarray(v)
        for k, v in self.crops.to_arrays().items():
            out[f"crop_{k}"] = np.asarray(v)
        out.update(self.extra)
        return out

    def write(self, path: str | os.PathLike) -> Path:
        """Write atomically to ``path`` (should end with ``.tracking.npz``); returns it."""
        return write_tracking(self, path)

    def summary(self) -> dict[str, Any]:
        s = dict(self.header.get("summary", {}))
        s["status_counts"] = self.status_counts()
        return s


def new_header(*, media: Mapping[str, Any], fps: Fraction, frame_numbers: np.ndarray,
               face_model: Mapping[str, Any], config: Mapping[str, Any],
               status_names: tuple[str, ...] = STATUS_NAMES) -> dict[str, Any]:
    """The JSON header of a new tracking file (summary/timings are added by the tracker)."""
    fn = np.asarray(frame_numbers)
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "schema_label": SCHEMA_LABEL,
        "engine_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "media": dict(media),
        "fps": fps_text(fps),
        "first_frame": int(fn[0]) if fn.size else None,
        "last_frame": int(fn[-1]) if fn.size else None,
        "frame_count": int(fn.size),
        "face_model": dict(face_model),
        "config": dict(config),
        "status_names": list(status_names),
    }


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where a tracking file's face-model sidecar lives: ``<stem>.face_model.npz``."""
    path = Path(path)
    stem = path.name[:-len(SUFFIX)] if path.name.endswith(SUFFIX) else path.stem
    return path.with_name(stem + ".face_model.npz")


def write_tracking(result: TrackingResult, path: str | os.PathLike) -> Path:
    """Write atomically. A face model that cannot be reloaded from its spec (header
    ``face_model.needs_sidecar``) is saved first beside the file, so that a tracking file on
    disk always has its model next to it."""
    path = Path(path)
    if not path.name.endswith(SUFFIX):
        raise MediaError(f"tracking file name must end with {SUFFIX}: {path}")
    header = dict(result.header)
    fm = dict(header["face_model"])
    if fm.get("needs_sidecar"):
        if result.model is None:
            raise MediaError("tracking result has no face model in memory: cannot write its sidecar")
        side = sidecar_path(path)
        result.model.save(side)
        fm["sidecar"] = side.name
        header["face_model"] = fm
    header["status_counts"] = result.status_counts()
    arrays = result.arrays()
    _check_shapes(header, arrays, path)
    _FILE.write(path, header, arrays)
    result.path = path
    result.header = header
    return path


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """Only the JSON header (cheap: the arrays are not decompressed)."""
    return _FILE.read_header(path)


def load_tracking(path: str | os.PathLike) -> TrackingResult:
    """Read a tracking file, upgrading older schema versions; one-line MediaError if unusable."""
    from engine.face.landmarks import LandmarkTrack

    p = Path(path)
    header, arrays = _FILE.load(p)
    _check_shapes(header, arrays, p)
    try:
        lm = LandmarkTrack.from_arrays({k: arrays[f"lm_{k}"] for k in _LM_KEYS})
        fa = {k: arrays[f"fit_{k}"] for k in _FIT_KEYS}
        fit = FitResult(identity=fa["identity"], expression=fa["expression"], rotation=fa["rotation"],
                        head_rotation=fa["head_rotation"], translation=fa["translation"],
                        focal=float(fa["focal"]), principal_point=fa["principal_point"],
                        image_size=tuple(int(v) for v in fa["image_size"]), landmarks_2d=fa["landmarks_2d"],
                        error_px=fa["error_px"], nme=fa["nme"], iod=fa["iod"],
                        fitted=np.asarray(fa["fitted"], bool), converged=bool(fa["converged"]))
        crops = CropTrack.from_arrays({k: arrays[f"crop_{k}"] for k in _CROP_KEYS})
    except KeyError as exc:
        raise MediaError(f"{p}: tracking file lacks array {exc.args[0]!r}") from None
    known = {"frame_numbers", "status"} | {f"lm_{k}" for k in _LM_KEYS} | {f"fit_{k}" for k in _FIT_KEYS} \
        | {f"crop_{k}" for k in _CROP_KEYS}
    extra = {k: v for k, v in arrays.items() if k not in known}
    return TrackingResult(header=header, frame_numbers=np.asarray(arrays["frame_numbers"], np.int64),
                          status=np.asarray(arrays["status"], np.uint8), landmarks=lm, fit=fit, crops=crops,
                          path=p, extra=extra)


def _check_shapes(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray], path: Path) -> None:
    """Every per-frame array has N rows and the status codes are in range: a truncated or
    hand-edited file fails here with one line rather than deep inside a later stage."""
    if "frame_numbers" not in arrays or "status" not in arrays:
        raise MediaError(f"{path}: tracking file lacks frame_numbers/status arrays")
    n = int(np.asarray(arrays["frame_numbers"]).shape[0])
    if int(header.get("frame_count", n)) != n:
        raise MediaError(f"{path}: header says {header.get('frame_count')} frames, arrays hold {n}")
    per_frame = ["status", "lm_points", "lm_status", "fit_expression", "fit_rotation", "fit_translation",
                 "fit_landmarks_2d", "fit_fitted", "crop_affine", "crop_valid"]
    for k in per_frame:
        if k in arrays and np.asarray(arrays[k]).shape[:1] != (n,):
            raise MediaError(f"{path}: tracking array {k} has {np.asarray(arrays[k]).shape[0]} rows, expected {n}")
    names = header.get("status_names") or []
    status = np.asarray(arrays["status"])
    if n and (not names or int(status.max()) >= len(names)):
        raise MediaError(f"{path}: tracking status codes exceed the {len(names)} status names")
    fn = np.asarray(arrays["frame_numbers"])
    if n > 1 and not (np.diff(fn) > 0).all():
        raise MediaError(f"{path}: tracking frame numbers are not increasing")



