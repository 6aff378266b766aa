"""Face-model geometry the expression transfer needs: landmark bases, facial measures, rest.

Every face model embeds MediaPipe's 478 landmarks on its surface (barycentric coordinates in
a triangle), and vertices are linear in the expression coefficients, so the landmarks are an
affine function of the expression: ``L(e) = L0 + sum_k e_k L_k`` (:class:`LandmarkBasis`).
That gives model-independent measures of a fitted expression in model space (cm, frontal,
free of head pose): the inner-lip gap, each eye's lid gap, mouth width, the outer-canthal
width (:func:`face_measures`, built on :mod:`engine.face.landmarks`' definitions).

**Rest expression** (:func:`estimate_rest`): transfer works on each person's deviation from
their own rest face, so that a face that rests with the lips slightly apart does not read
as "mouth open" and a wide-eyed person does not read as "surprised" (per-identity
normalisation, as in expression-retargeting work that subtracts each subject's neutral,
e.g. Thies et al. "Face2Face", CVPR 2016, transferring expression *deltas*).
``quiet_frames`` (default): the median expression of the frames closest to rest, i.e. the
lips the most closed (lowest ``rest_fraction`` of the mouth opening) with the eyes neither
blinking nor wide (eye aperture between its 25th and 95th percentile); robust for talking
footage, where the median frame is mid-speech. ``percentile``: a low percentile of each
coefficient (for activation-type blendshapes, ICT / ARKit, that are >= 0 and 0 at rest).
``zero``: the model's own zero (its neutral).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.errors import ConfigError
from engine.face import landmarks as lmk

__all__ = ["LandmarkBasis", "face_measures", "estimate_rest", "REST_METHODS", "NOSE_TIP"]

REST_METHODS = ("quiet_frames", "percentile", "zero")
NOSE_TIP = 1  # MediaPipe face-mesh vertex at the tip of the nose


@dataclass
class LandmarkBasis:
    """MediaPipe landmarks of a model with a fixed identity, as an affine map of the expression.

    ``base`` (478, 3) the landmarks at expression 0; ``basis`` (K, 478, 3) per coefficient;
    ``embedded`` (478,) landmarks the model embeds (the others are zeros).
    """

    base: np.ndarray
    basis: np.ndarray
    embedded: np.ndarray

    @classmethod
    def of(cls, model, identity: np.ndarray | None) -> "LandmarkBasis":
        with torch.no_grad():
            ident = None
            if model.n_id:
                ident = torch.as_tensor(np.asarray(identity, np.float32).reshape(1, -1))
            base_verts = model.vertices(ident, torch.zeros(1, model.n_exp))
            base = model.landmarks(base_verts)[0].numpy().astype(np.float64)
            if model.n_exp:
                # landmarks() is linear in the vertices (barycentric sums): apply it to each basis shape
                basis = model.landmarks(torch.as_tensor(model.exp_basis, dtype=torch.float32)).numpy()
            else:
                basis = np.zeros((0, lmk.NUM_LANDMARKS, 3))
        embedded = np.asarray(model.landmark_tri) >= 0
        return cls(base, basis.astype(np.float64), embedded)

    def points(self, expression: np.ndarray) -> np.ndarray:
        """(N, K) -> (N, 478, 3) model-space landmarks (cm)."""
        e = np.asarray(expression, np.float64)
        return self.base[None] + np.einsum("nk,kld->nld", e, self.basis)


def _dist3(points: np.ndarray, i: int, j: int) -> np.ndarray:
    return np.linalg.norm(points[..., i, :] - points[..., j, :], axis=-1)


def face_measures(points: np.ndarray) -> dict[str, np.ndarray]:
    """Measures of (..., 478, 3) model-space landmarks: ``mouth_open`` (inner-lip gap over the
    outer-canthal width; the frontal plane x, y), ``eye_left`` / ``eye_right`` (eye aspect
    ratios), and the raw sizes in cm (3D): ``iod``, ``mouth_width``, ``lid_gap_left`` /
    ``lid_gap_right`` and ``mouth_gap``."""
    p = np.asarray(points, np.float64)
    out = {"mouth_open": lmk.mouth_opening(p, "interocular"),
           "eye_left": lmk.eye_aperture(p, "left"), "eye_right": lmk.eye_aperture(p, "right"),
           "iod": _dist3(p, *lmk.INTEROCULAR), "mouth_width": _dist3(p, *lmk.MOUTH_CORNERS),
           "mouth_gap": np.mean([_dist3(p, a, b) for a, b in lmk.INNER_LIP_PAIRS], axis=0)}
    for side in ("left", "right"):
        out[f"lid_gap_{side}"] = np.mean([_dist3(p, a, b) for a, b in lmk.EYELID_PAIRS[side]], axis=0)
    return out


def estimate_rest(expression: np.ndarray, valid: np.ndarray, basis: LandmarkBasis, *, method: str = "quiet_frames",
                  rest_fraction: float = 0.2, percentile: float = 5.0) -> tuple[np.ndarray, dict]:
    """A person's rest expression (K,) from their tracked expressions (N, K) on ``valid`` frames,
    and what it was estimated from (JSON-able)."""
    if method not in REST_METHODS:
        raise ConfigError(f"drive rest method must be one of {', '.join(REST_METHODS)}, got {method!r}")
    e = np.asarray(expression, np.float64)
    ok = np.asarray(valid, bool) & np.isfinite(e).all(1)
    k = e.shape[1]
    if method == "zero" or not ok.any():
        return np.zeros(k), {"method": "zero" if ok.any() else "zero (no valid frames)", "frames": 0}
    ev = e[ok]
    if method == "percentile":
        return np.percentile(ev, percentile, axis=0), {"method": method, "percentile": percentile,
                                                      "frames": int(ok.sum())}
    m = face_measures(basis.points(ev))
    mouth = m["mouth_open"]
    eye = 0.5 * (m["eye_left"] + m["eye_right"])
    closed = mouth <= np.quantile(mouth, rest_fraction)
    calm = (eye >= np.quantile(eye, 0.25)) & (eye <= np.quantile(eye, 0.95))
    sel = closed & calm
    if sel.sum() < 3:
        sel = closed
    rest = np.median(ev[sel], axis=0)
    rm = face_measures(basis.points(rest[None]))
    return rest, {"method": method, "frames": int(sel.sum()), "of_frames": int(ok.sum()),
                  "rest_fraction": rest_fraction, "mouth_open": float(rm["mouth_open"][0]),
                  "eye_aperture": float(0.5 * (rm["eye_left"][0] + rm["eye_right"][0]))}
