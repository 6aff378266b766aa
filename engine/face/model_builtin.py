"""The built-in face model: MediaPipe's 468-vertex topology, learned from tracked landmarks.

Needs no third-party model files, so it is the product's default. Two ways to get one:

* ``build_builtin_model(tracks)``: an *actor* model from that actor's own landmark tracks
  (MediaPipe Face Mesh, (N,478,3) pixels). Frames are aligned by generalised Procrustes
  (Umeyama similarity per frame on points that move little), the identity is the robust
  (per-coordinate median) shape, pixels become centimetres through a nominal adult
  outer-canthal width, and the expression basis is learned from the aligned residuals: a
  few *semantic* directions (``jawOpen``, ``eyeBlinkLeft/Right``, ``mouthSmile``,
  ``mouthStretch``, ``browRaise``) obtained by regressing the residuals on geometric
  measures (inner-lip gap, each eye's lid gap, mouth-corner height, mouth width, brow
  height) and restricting each to the face area its measure looks at, then PCA of what they
  leave unexplained (``pca_k``, unit-variance coefficients), until the basis explains
  >= 95 % of the residual variance (capped at ``n_exp``). Named coefficients are scaled so
  that 1 is a strong expression (95th percentile of the measure's change); they are
  relative to the median shape, so e.g. ``jawOpen`` < 0 closes a mouth that rests open.
* ``load_builtin_model()`` with no path: the *generic* model shipped with the engine as
  ``engine/face/data/builtin_generic_mp468.npz``. It was produced by
  ``python -m engine.face.model_builtin --generate ICT_NPZ`` (``generate_generic_model``): the
  ICT-FaceKit mean face (MIT licence) is rendered with random head poses and random ARKit
  expression mixes by ``engine.face.raster``, MediaPipe Face Mesh (shipped in the mediapipe
  wheel) tracks the renders, and ``build_builtin_model`` learns the model from those tracks.
  So the generic model is MediaPipe's own perception of the ICT mean face; no footage of
  real people goes into it. The acceptable fallback if the file is ever missing is
  ``build_builtin_model`` on the first tracked sequence (the identity of that actor).

Conventions: model space of ``engine.face.model`` (+X subject's left, +Y up, +Z toward the
viewer, cm). MediaPipe's (u, v, z_px) become (u, -v, -z_px) (a rotation by pi about X,
matching the camera convention), then the similarity alignment. ``uv`` is a fixed
cylindrical projection of the *generic* neutral, so every built-in model shares one texture
layout. The mouth and eye openings are holes of the tessellation (MediaPipe has no teeth or
eyeballs): ``MOUTH_INTERIOR`` and ``EYES`` are empty for this model. The 10 iris
landmarks are embedded at the closest point of the eyelid ring with weight 0.
"""
from __future__ import annotations

import argparse
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.errors import ConfigError, MediaError
from engine.face import landmarks as mp
from engine.face.correspondence import embed_points, umeyama
from engine.face.model import (FACE_MODEL_CODE_VERSION, N_MP_LANDMARKS, FaceModel, Region, load_face_model_npz,
                               validate_face_model)

N_MESH = mp.NUM_MESH_VERTICES  # 468
GENERIC_PATH = Path(__file__).resolve().parent / "data" / "builtin_generic_mp468.npz"

#: Nominal adult outer-canthal (exocanthion-exocanthion) width, cm: Farkas' anthropometric
#: norms give ~8.7 (women) to ~9.1 (men); ICT's mean face measures 8.9 between its Multi-PIE
#: outer eye-corner vertices. It sets the model's scale (landmarks only give it up to scale).
NOMINAL_OUTER_CANTHAL_CM = 8.9
#: Nose-tip position of built-in models: x on the midline, y = 0, and ~11 cm in front of the
#: origin, which puts the origin near the centre of an adult head (head depth ~19-20 cm).
NOSE_TIP_Z_CM = 11.0
_TO_MODEL = np.array([1.0, -1.0, -1.0])


# ------------------------------------------------------------------------------------------
# topology


def orient_to_model(tris: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Wind MediaPipe's triangles (counter-clockwise on screen, v down) so that normals
    point out of the face (+Z) for a model-space shape (which flips Y and Z)."""
    tv = shape[tris]
    if np.cross(tv[:, 1] - tv[:, 0], tv[:, 2] - tv[:, 0]).sum(0)[2] < 0:
        return tris[:, ::-1].copy()
    return tris


@functools.lru_cache(maxsize=1)
def lip_band() -> tuple[np.ndarray, np.ndarray]:
    """(triangle rows, vertex indices) of the lips: the triangles between MediaPipe's outer
    and inner lip contours, found by flood fill from the mouth hole that never crosses the
    outer contour."""
    tris = np.asarray(mp.mediapipe_triangles(fill_holes=False), np.int64)
    outer = list(mp.LIPS_OUTER)
    inner = set(mp.LIPS_INNER)
    outer_edges = {tuple(sorted((outer[i], outer[(i + 1) % len(outer)]))) for i in range(len(outer))}
    by_edge: dict[tuple[int, int], list[int]] = {}
    for i, t in enumerate(tris):
        for a, b in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0])):
            by_edge.setdefault(tuple(sorted((int(a), int(b)))), []).append(i)
    seeds = [i for i, t in enumerate(tris) if sum(int(x) in inner for x in t) >= 2]
    band = set(seeds)
    stack = list(seeds)
    while stack:
        i = stack.pop()
        t = tris[i]
        for a, b in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0])):
            e = tuple(sorted((int(a), int(b))))
            if e in outer_edges:
                continue
            for j in by_edge[e]:
                if j not in band:
                    band.add(j)
                    stack.append(j)
    rows = np.array(sorted(band), np.int64)
    if len(rows) > len(tris) // 4:  # the outer contour did not enclose the fill
        raise RuntimeError("lip band flood fill escaped the outer lip contour")
    return rows, np.unique(tris[rows])


def builtin_regions() -> np.ndarray:
    region = np.full(N_MESH, int(Region.SKIN), np.uint8)
    region[lip_band()[1]] = int(Region.LIPS)
    return region


def nose_tip_index(shape: np.ndarray) -> int:
    """The most protruding (+Z) vertex of MediaPipe's nose set, on a model-space shape."""
    nose = np.array(sorted({int(i) for e in mp._conn.FACEMESH_NOSE for i in e}), np.int64)
    return int(nose[np.argmax(shape[nose, 2])])


def cylindrical_uv(shape: np.ndarray, margin: float = 0.02) -> np.ndarray:
    """Fixed cylindrical unwrap of a face shape: u from the angle about the vertical axis
    through a point ~ one face-width behind the face, v from height; normalised to
    [margin, 1-margin] keeping the aspect ratio (arc length vs height)."""
    s = np.asarray(shape, np.float64)
    width = s[:, 0].max() - s[:, 0].min()
    axis_z = s[:, 2].max() - width  # cylinder axis behind the face
    radius = width / 2.0 * 1.1
    theta = np.arctan2(s[:, 0], s[:, 2] - axis_z)
    u = theta * radius
    v = s[:, 1]
    span = max(u.max() - u.min(), v.max() - v.min())
    uu = (u - (u.max() + u.min()) / 2) / span + 0.5
    vv = (v - (v.max() + v.min()) / 2) / span + 0.5
    uv = np.stack([uu, vv], 1)
    return (margin + (1 - 2 * margin) * uv).astype(np.float32)


# ------------------------------------------------------------------------------------------
# geometric measures for naming expression directions (model space, cm)


def _ring_area(shape: np.ndarray, ring: Sequence[int]) -> np.ndarray:
    p = shape[..., list(ring), :2]
    x, y = p[..., 0], p[..., 1]
    return 0.5 * np.abs((x * np.roll(y, -1, -1) - np.roll(x, -1, -1) * y).sum(-1))


def _pair_gap(shape: np.ndarray, pairs) -> np.ndarray:
    return np.mean([np.linalg.norm(shape[..., a, :] - shape[..., b, :], axis=-1) for a, b in pairs], axis=0)


def _brow_indices(conn) -> np.ndarray:
    return np.array(sorted({int(i) for e in conn for i in e}), np.int64)


#: Priority order of the named directions (the first ones are the most reliable measures);
#: a tuple is a left/right pair regressed jointly.
SEMANTIC_ORDER = (("jawOpen",), ("eyeBlinkLeft", "eyeBlinkRight"), ("mouthSmile",), ("mouthStretch",), ("browRaise",))


def _support_points(key: str) -> list[int]:
    lips = list(mp.LIPS_OUTER) + list(mp.LIPS_INNER)
    return {
        "jawOpen": lips,
        "eyeBlinkLeft": list(mp.LEFT_EYE),
        "eyeBlinkRight": list(mp.RIGHT_EYE),
        "mouthSmile": lips,
        "mouthStretch": lips,
        "browRaise": _brow_indices(mp._conn.FACEMESH_LEFT_EYEBROW | mp._conn.FACEMESH_RIGHT_EYEBROW).tolist(),
    }[key]


#: Support radii (full weight up to r0, fading to 0 at r1, cm from the measure's points).
#: Jaw opening moves the whole lower face (the chin is ~5 cm below the lips); eyelids stay
#: within ~3 cm of the eye contour, which keeps the two eyes' supports disjoint.
_SUPPORT_RADII = {"jawOpen": (5.0, 7.0), "eyeBlinkLeft": (1.5, 3.0), "eyeBlinkRight": (1.5, 3.0),
                  "mouthSmile": (3.0, 5.0), "mouthStretch": (3.0, 5.0), "browRaise": (2.5, 4.0)}


def semantic_support(key: str, neutral: np.ndarray) -> np.ndarray:
    """(468,) weights in [0,1]: where the named direction ``key`` may move vertices."""
    pts = np.asarray(neutral, np.float64)[_support_points(key)]
    dist = np.linalg.norm(np.asarray(neutral, np.float64)[:, None] - pts[None], axis=-1).min(1)
    r0, r1 = _SUPPORT_RADII[key]
    return np.clip((r1 - dist) / (r1 - r0), 0.0, 1.0)


def semantic_measures(shapes: np.ndarray) -> dict[str, np.ndarray]:
    """Per-shape measures (..., 468, 3) model-space cm -> {name: (...)} whose variation
    defines the named expression directions. Signs follow ARKit (positive = more of it)."""
    s = np.asarray(shapes, np.float64)
    lb = _brow_indices(mp._conn.FACEMESH_LEFT_EYEBROW)
    rb = _brow_indices(mp._conn.FACEMESH_RIGHT_EYEBROW)
    corners = list(mp.MOUTH_CORNERS)
    lip_mid = [a for pair in mp.INNER_LIP_PAIRS for a in pair]
    return {
        "jawOpen": _pair_gap(s, mp.INNER_LIP_PAIRS),
        "eyeBlinkLeft": -_pair_gap(s, mp.EYELID_PAIRS["left"]),
        "eyeBlinkRight": -_pair_gap(s, mp.EYELID_PAIRS["right"]),
        # corners up relative to the inner-lip centre: a smile raises them, jaw opening does not
        "mouthSmile": s[..., corners, 1].mean(-1) - s[..., lip_mid, 1].mean(-1),
        "mouthStretch": np.linalg.norm(s[..., corners[0], :] - s[..., corners[1], :], axis=-1),
        # brows relative to the eyes' corners (fixed points of the skull)
        "browRaise": s[..., np.concatenate([lb, rb]), 1].mean(-1)
        - s[..., [mp.RIGHT_EYE_OUTER, mp.RIGHT_EYE_INNER, mp.LEFT_EYE_OUTER, mp.LEFT_EYE_INNER], 1].mean(-1),
    }


# ------------------------------------------------------------------------------------------
# alignment of tracked frames


def _frames_to_model(tracks: Sequence[np.ndarray]) -> np.ndarray:
    frames = []
    for k, t in enumerate(tracks):
        a = np.asarray(t, np.float64)
        if a.ndim != 3 or a.shape[1] != N_MP_LANDMARKS or a.shape[2] != 3:
            raise MediaError(f"landmark track {k} has shape {a.shape}, expected (N, 478, 3) pixels")
        frames.append(a[np.isfinite(a).all(axis=(1, 2))])
    allf = np.concatenate(frames) if frames else np.zeros((0, N_MP_LANDMARKS, 3))
    return allf * _TO_MODEL


def _canonical_frame(shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation/translation taking a (roughly frontal) model-space shape to the canonical
    built-in frame: x through the eye centres, y up from chin to forehead, nose tip at
    (0, 0, NOSE_TIP_Z_CM)."""
    le = shape[list(mp.LEFT_EYE)].mean(0)
    re = shape[list(mp.RIGHT_EYE)].mean(0)
    x = le - re
    x /= np.linalg.norm(x)
    oval = list(mp.FACE_OVAL)
    top = shape[oval[0]]
    chin = shape[oval[len(oval) // 2]]
    y = top - chin
    y -= (y @ x) * x
    y /= np.linalg.norm(y)
    z = np.cross(x, y)
    rot = np.stack([x, y, z])
    rotated = shape @ rot.T
    tip = rotated[nose_tip_index(rotated)]
    trans = np.array([0.0, 0.0, NOSE_TIP_Z_CM]) - tip
    trans[0] = -rotated[:, 0].mean()  # midline: the shape is near-symmetric
    return rot, trans


def align_frames(frames: np.ndarray, reference: np.ndarray | None = None, iters: int = 4,
                 stable_fraction: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Generalised Procrustes of (N,478,3) model-axis frames.

    Each frame is mapped by a similarity onto the current mean (Umeyama on stable points:
    MediaPipe's rigid set at first, then the ``stable_fraction`` of mesh vertices with the
    smallest residual variance). Returns (aligned frames (N,478,3) in the units of the
    mean, mean shape (478,3)). With ``reference`` (478,3) the mean is tied to it by a
    similarity on the stable points; otherwise it is canonicalised and scaled to cm.
    """
    n = len(frames)
    rigid = np.array(mp.RIGID, np.int64)
    stable = rigid
    mean = np.median(frames, axis=0)
    aligned = frames.copy()
    for it in range(iters):
        for f in range(n):
            sim = umeyama(frames[f, stable], mean[stable])
            aligned[f] = sim[0] * frames[f] @ sim[1].T + sim[2]
        new_mean = np.median(aligned, axis=0)
        # pin the gauge: the mean keeps its scale/pose (align it back onto the previous mean)
        sim = umeyama(new_mean[stable], mean[stable])
        mean = sim[0] * new_mean @ sim[1].T + sim[2]
        if it < iters - 1 and n >= 3:
            var = ((aligned[:, :N_MESH] - np.median(aligned[:, :N_MESH], axis=0)) ** 2).sum(-1).mean(0)
            k = max(len(rigid), int(stable_fraction * N_MESH))
            stable = np.union1d(np.argsort(var)[:k], rigid)
    # to centimetres and the canonical frame
    if reference is not None:
        ref = np.asarray(reference, np.float64)
        scale_now = np.linalg.norm(mean[mp.LEFT_EYE_OUTER] - mean[mp.RIGHT_EYE_OUTER])
        s = NOMINAL_OUTER_CANTHAL_CM / scale_now
        # rotation/translation only: the scale is the nominal one, not the reference's
        _, rot, _ = umeyama(mean[stable] * s, ref[stable], with_scale=False)
        moved = s * mean @ rot.T
        trans = (ref[stable] - moved[stable]).mean(0)
        total = (s, rot, trans)
    else:
        s = NOMINAL_OUTER_CANTHAL_CM / np.linalg.norm(mean[mp.LEFT_EYE_OUTER] - mean[mp.RIGHT_EYE_OUTER])
        rot, trans = _canonical_frame(s * mean)
        total = (s, rot, trans)
    s, rot, trans = total
    mean_cm = s * mean @ rot.T + trans
    aligned_cm = s * aligned @ rot.T + trans
    return aligned_cm, mean_cm


# ------------------------------------------------------------------------------------------
# building a model from tracks


@dataclass
class BuiltinBuildConfig:
    """Knobs of :func:`build_builtin_model`."""

    n_exp: int = 24                 # at most this many expression components
    min_exp: int = 4                # at least this many (when the data has them)
    explained: float = 0.95         # stop adding PCA components at this explained variance
    semantic: bool = True           # derive named directions before the PCA
    min_semantic_share: float = 0.005  # a named direction must explain >= this share of variance
    max_frames: int = 20000         # subsample longer track sets (evenly) for speed


def _robust_range(coeffs: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(coeffs, [0.5, 99.5], axis=0)
    pad = 0.1 * (hi - lo) + 1e-6
    return np.stack([lo - pad, hi + pad], 1).astype(np.float32)


def learn_expression_basis(residuals: np.ndarray, shapes: np.ndarray, neutral: np.ndarray,
                           cfg: BuiltinBuildConfig) -> tuple[np.ndarray, list[str], np.ndarray, dict]:
    """Residuals (N,468,3) -> (basis (K,468,3), names, ranges (K,2), stats)."""
    n = len(residuals)
    r = residuals.reshape(n, -1)
    r = r - r.mean(0)  # components model variation around the mean residual
    total = float((r ** 2).sum())
    if n < 2 or total <= 0:
        return np.zeros((0, N_MESH, 3), np.float32), [], np.zeros((0, 2), np.float32), {"explained": 0.0}
    basis, names, ranges = [], [], []
    resid = r
    if cfg.semantic:
        # Named directions by sequential regression in a fixed priority order (Gram-Schmidt
        # over the measures): each measure is orthogonalised against those already used, the
        # residuals are regressed on it (a left/right pair jointly, for partial effects), the
        # direction is restricted to the measure's facial support, and the named part is
        # deflated. A measure that only varies with noise explains a negligible share of the
        # variance and is skipped.
        meas = semantic_measures(shapes)
        m0 = semantic_measures(neutral)
        used: list[np.ndarray] = []
        for group in SEMANTIC_ORDER:
            raws = [meas[k] - m0[k] for k in group]
            cols = []
            for raw in raws:
                mc = raw - raw.mean()
                for u_prev in used:
                    mc = mc - (mc @ u_prev) * u_prev
                cols.append(mc)
            m = np.stack(cols, 1)
            if np.linalg.norm(m) < 1e-6 * np.sqrt(n):
                continue
            # joint regression inside a left/right pair, partial effect per measure
            w, *_ = np.linalg.lstsq(m, resid, rcond=None)
            for j, key in enumerate(group):
                # A named direction only explains motion near the feature its measure looks
                # at (on real tracks blinks co-occur with speech, and the regression would
                # otherwise hand mouth motion to eyeBlink*); the rest is left to the PCA.
                d = (w[j].reshape(N_MESH, 3) * semantic_support(key, neutral)[:, None]).ravel()
                share = float(((m[:, j:j + 1] @ d[None]) ** 2).sum()) / total
                if share < cfg.min_semantic_share:
                    continue
                # scale: coefficient 1 = a strong expression (95th percentile of |measure change|)
                scale = float(np.percentile(np.abs(raws[j]), 95)) or 1.0
                basis.append(d * scale)
                names.append(key)
                ranges.append(_robust_range((raws[j] / scale)[:, None])[0])  # relative to the neutral
                u_new = m[:, j].copy()
                for u_prev in used:  # keep `used` orthonormal (a pair's columns are correlated)
                    u_new -= (u_new @ u_prev) * u_prev
                norm = float(np.linalg.norm(u_new))
                if norm > 1e-9:
                    used.append(u_new / norm)
            if basis:
                bmat = np.stack(basis)
                coef, *_ = np.linalg.lstsq(bmat.T, r.T, rcond=None)
                resid = r - coef.T @ bmat
    # PCA of what the named directions leave
    u, sig, vt = np.linalg.svd(resid, full_matrices=False)
    std = sig / np.sqrt(max(n - 1, 1))
    k_pca = 0
    explained = 1.0 - float((resid ** 2).sum()) / total
    while len(basis) < cfg.n_exp and k_pca < len(sig) and sig[k_pca] > 1e-9 * sig[0] and \
            (explained < cfg.explained or len(basis) < cfg.min_exp):
        comp = vt[k_pca] * std[k_pca]  # coefficient ~ N(0, 1)
        basis.append(comp)
        names.append(f"pca_{k_pca}")
        ranges.append(np.array([-3.0, 3.0], np.float32))
        explained += float(sig[k_pca] ** 2) / total
        k_pca += 1
    b = np.stack(basis).astype(np.float32).reshape(-1, N_MESH, 3)
    # explained variance of the final (non-orthogonal) basis, by least squares
    coef, *_ = np.linalg.lstsq(b.reshape(len(b), -1).T.astype(np.float64), r.T, rcond=None)
    final = 1.0 - float(((r - coef.T @ b.reshape(len(b), -1)) ** 2).sum()) / total
    return b, names, np.stack(ranges).astype(np.float32), {"explained": final, "n_semantic": len(basis) - k_pca,
                                                            "n_pca": k_pca, "n_frames": n}


def build_builtin_model(landmark_tracks: Sequence[np.ndarray], *, reference: FaceModel | np.ndarray | None = "generic",
                        config: BuiltinBuildConfig | None = None, name: str = "builtin-mp468",
                        source: str = "builtin") -> FaceModel:
    """Learn a built-in (MediaPipe-topology) model from landmark tracks.

    landmark_tracks: list of (N,478,3) arrays in pixels (u, v, z_px; NaN rows = no face).
    reference: frame the result is expressed in: ``"generic"`` (default) ties it to the shipped
    generic model's frame (rotation/translation on stable points; the scale is always the
    nominal outer-canthal width); None canonicalises from the face itself.
    """
    cfg = config or BuiltinBuildConfig()
    frames = _frames_to_model(landmark_tracks)
    if len(frames) < 1:
        raise MediaError("cannot build a face model: the landmark tracks contain no face")
    if len(frames) > cfg.max_frames:
        frames = frames[np.linspace(0, len(frames) - 1, cfg.max_frames).round().astype(int)]
    ref_shape = None
    if isinstance(reference, str) and reference == "generic":
        if GENERIC_PATH.is_file():
            g = load_builtin_model(None)
            ref_shape = np.concatenate([g.neutral, builtin_iris(g)], 0).astype(np.float64)
    elif isinstance(reference, FaceModel):
        ref_shape = np.concatenate([reference.neutral, builtin_iris(reference)], 0).astype(np.float64)
    elif reference is not None:
        ref_shape = np.asarray(reference, np.float64)
    aligned, mean = align_frames(frames, reference=ref_shape)
    neutral = mean[:N_MESH]
    iris = mean[N_MESH:]
    residuals = aligned[:, :N_MESH] - neutral
    basis, names, ranges, stats = learn_expression_basis(residuals, aligned[:, :N_MESH], neutral, cfg)
    return assemble_builtin(neutral, iris, basis, names, ranges, name=name, source=source,
                            meta={"build": stats, "n_tracks": len(landmark_tracks)})


def assemble_builtin(neutral: np.ndarray, iris: np.ndarray, basis: np.ndarray, names: list[str], ranges: np.ndarray,
                     *, name: str, source: str, meta: dict, uv: np.ndarray | None = None) -> FaceModel:
    neutral = np.asarray(neutral, np.float32)
    tris = orient_to_model(np.asarray(mp.mediapipe_triangles(fill_holes=False), np.int64), neutral)
    if uv is None:
        uv = _generic_uv() if GENERIC_PATH.is_file() else cylindrical_uv(neutral)
    # landmark embedding: vertex i of the mesh is landmark i (barycentric one-hot in a
    # triangle that contains it); irises at the closest point of the mesh, weight 0.
    ltri = np.zeros(N_MP_LANDMARKS, np.int64)
    lbary = np.zeros((N_MP_LANDMARKS, 3), np.float32)
    first_tri = np.full(N_MESH, -1, np.int64)
    first_corner = np.zeros(N_MESH, np.int64)
    for c in (2, 1, 0):  # lowest triangle index wins, deterministic
        for t in range(len(tris) - 1, -1, -1):
            first_tri[tris[t, c]] = t
            first_corner[tris[t, c]] = c
    if (first_tri < 0).any():
        raise RuntimeError("a mediapipe mesh vertex belongs to no triangle")
    ltri[:N_MESH] = first_tri
    lbary[np.arange(N_MESH), first_corner] = 1.0
    t_iris, b_iris, _ = embed_points(np.asarray(iris, np.float64), neutral.astype(np.float64), tris)
    ltri[N_MESH:] = t_iris
    lbary[N_MESH:] = b_iris
    weight = np.ones(N_MP_LANDMARKS, np.float32)
    weight[N_MESH:] = 0.0
    meta = dict(meta, loader="builtin", code_version=FACE_MODEL_CODE_VERSION,
                iris_mean=np.asarray(iris, np.float64).round(5).tolist())
    model = FaceModel(
        name=name, neutral=neutral, id_basis=np.zeros((0, N_MESH, 3), np.float32),
        exp_basis=np.asarray(basis, np.float32), id_names=(), exp_names=tuple(names),
        exp_range=np.asarray(ranges, np.float32).reshape(-1, 2), id_std=np.zeros(0, np.float32),
        triangles=np.ascontiguousarray(tris), uv=np.asarray(uv, np.float32), vertex_region=builtin_regions(),
        landmark_tri=ltri, landmark_bary=lbary, landmark_weight=weight, source=source, meta=meta,
    )
    validate_face_model(model)
    return model


def _generic_uv() -> np.ndarray:
    with np.load(GENERIC_PATH, allow_pickle=False) as z:
        return z["uv"].astype(np.float32)


def builtin_iris(model: FaceModel) -> np.ndarray:
    """Mean iris landmark positions (10,3) of a built-in model (stored in its meta)."""
    iris = model.meta.get("iris_mean")
    if iris is None:
        raise ConfigError(f"face model {model.name!r} is not a built-in model (no iris_mean)")
    return np.asarray(iris, np.float64)


@functools.lru_cache(maxsize=4)
def _load_npz_cached(path: str, mtime_ns: int, generic: bool) -> FaceModel:
    from dataclasses import replace

    model = load_face_model_npz(path)
    return replace(model, source="builtin") if generic else model


def load_builtin_model(path=None, **kw) -> FaceModel:
    """The shipped generic model (path None) or a saved built-in/actor model (.npz)."""
    if kw:
        raise ConfigError(f"builtin face model takes no options ({', '.join(sorted(kw))})")
    p = Path(path) if path is not None else GENERIC_PATH
    if not p.is_file():
        if path is None:
            raise MediaError(f"the generic built-in face model is missing from the installation ({p}); "
                             "reinstall Portrait Engine")
        raise MediaError(f"built-in face model not found: {p}")
    model = _load_npz_cached(str(p.resolve()), p.stat().st_mtime_ns, path is None)
    if path is None:
        return model
    if "iris_mean" not in model.meta or model.n_vertices != N_MESH:
        raise MediaError(f"{p} is not a built-in (MediaPipe-topology) face model")
    return model


# ------------------------------------------------------------------------------------------
# generating the shipped generic model (developer tool, needs the ICT model and mediapipe)

_RENDER_COLOURS = {  # display-referred albedo of ICT's regions for the synthetic renders
    int(Region.SKIN): (0.78, 0.58, 0.48), int(Region.HEAD): (0.76, 0.57, 0.47),
    int(Region.MOUTH_INTERIOR): (0.55, 0.25, 0.25), int(Region.EYES): (0.92, 0.92, 0.90),
}


def render_shaded(model: FaceModel, verts: np.ndarray, rotvec: np.ndarray, dist_cm: float = 60.0,
                  focal_px: float = 700.0, size: int = 256, albedo: np.ndarray | None = None,
                  hidden_vertices: np.ndarray | None = None) -> np.ndarray:
    """Lambert-shaded RGB uint8 render of a model (z-buffered by engine.face.raster), for
    driving MediaPipe on synthetic faces. ``albedo`` (V,3) overrides the region colours."""
    import torch

    from engine.face.camera import axis_angle_to_matrix, intrinsics
    from engine.face.raster import rasterize

    keep_tri = np.isin(model.vertex_region[model.triangles], list(_RENDER_COLOURS)).all(1)
    if hidden_vertices is not None:
        keep_tri &= ~np.isin(model.triangles, hidden_vertices).any(1)
    tris = model.triangles[keep_tri]
    centre = np.array([0.0, 1.0, 5.0])
    rot = axis_angle_to_matrix(torch.tensor(rotvec, dtype=torch.float64)).numpy()
    cam = (verts - centre) @ rot.T + np.array([0.0, 0.0, dist_cm])
    k = intrinsics(torch.tensor(focal_px), size / 2, size / 2)
    frag = rasterize(torch.tensor(cam[None], dtype=torch.float32), torch.tensor(tris), k, size, size,
                     cull_backfaces=True)
    fid = frag.face_idx[0].numpy()
    from engine.face.correspondence import vertex_normals

    vn = vertex_normals(cam, tris)
    bary = frag.bary[0].numpy()
    mask = fid >= 0
    tri_px = tris[fid[mask]]
    nrm = (vn[tri_px] * bary[mask][:, :, None]).sum(1)
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True) + 1e-12
    light = np.array([0.3, -0.4, -1.0])
    light /= np.linalg.norm(light)
    shade = np.clip(nrm @ light, 0.0, 1.0) * 0.75 + 0.25
    if albedo is None:
        table = np.array([_RENDER_COLOURS.get(r, (0.5, 0.5, 0.5)) for r in range(6)])
        albedo = table[model.vertex_region]
    px_albedo = (albedo[tri_px] * bary[mask][:, :, None]).sum(1)
    img = np.full((size, size, 3), 0.25)
    img[mask] = px_albedo * shade[:, None]
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def generate_generic_model(ict_path: str | Path, out_path: str | Path = GENERIC_PATH, n_frames: int = 400,
                           seed: int = 0) -> FaceModel:
    """Regenerate the shipped generic built-in model from renders of ICT's mean face."""
    from engine.face.model_ict import load_ict_model

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    ict = load_ict_model(ict_path, embed_landmarks=False)
    exp_idx = [i for i, n in enumerate(ict.exp_names) if not n.startswith("pupil")]
    coeffs = np.zeros((n_frames, ict.n_exp))
    poses = np.zeros((n_frames, 3))
    for f in range(n_frames):
        if rng.random() > 0.35:  # 35 % neutral frames anchor the median shape at rest
            k = rng.integers(1, 5)
            for j in rng.choice(exp_idx, size=k, replace=False):
                coeffs[f, j] = rng.uniform(0.2, 1.0)
                mirror = ict.exp_names[j].replace("Left", "Right") if ict.exp_names[j].endswith("Left") else None
                if mirror and mirror in ict.exp_names and rng.random() < 0.6:
                    coeffs[f, ict.exp_names.index(mirror)] = coeffs[f, j]
        yaw, pitch, roll = np.deg2rad([rng.uniform(-25, 25), rng.uniform(-12, 12), rng.uniform(-6, 6)])
        poses[f] = [pitch, yaw, roll]
    import torch

    from engine.face.camera import axis_angle_to_matrix

    from engine.face.model_ict import parse_obj

    # albedo: region colours, irises dark, teeth lighter than gums (from ICT's materials)
    obj = parse_obj(Path(ict.meta["obj"]))
    table = np.array([_RENDER_COLOURS.get(r, (0.5, 0.5, 0.5)) for r in range(6)])
    albedo = table[ict.vertex_region].copy()
    teeth = np.unique([i for f, m in zip(obj["faces"], obj["mats"]) if m == "M_Teeth" for i in f])
    albedo[teeth] = (0.90, 0.88, 0.80)
    cornea = _eye_albedo(ict.neutral.astype(np.float64), obj, albedo)
    verts_all = ict.vertices(torch.zeros(1, ict.n_id), torch.tensor(coeffs, dtype=torch.float32)).numpy()
    cfg = mp.LandmarkConfig(static=True, max_faces=1)
    points = []
    with mp.LandmarkTracker(cfg) as tracker:
        for f in range(n_frames):
            # model -> camera: pose about model axes, then the frontal flip (pi about X)
            r_pose = axis_angle_to_matrix(torch.tensor(poses[f], dtype=torch.float64)).numpy()
            flip = np.diag([1.0, -1.0, -1.0])
            rotvec = _matrix_to_rotvec(flip @ r_pose)
            img = render_shaded(ict, verts_all[f].astype(np.float64), rotvec, albedo=albedo,
                                hidden_vertices=cornea)
            res = tracker.process(img)
            points.append(res.points if res.usable else np.full((N_MP_LANDMARKS, 3), np.nan, np.float32))
    points = np.stack(points)
    detected = int(np.isfinite(points).all(axis=(1, 2)).sum())
    model = build_builtin_model([points], reference=None, name="builtin-mp468", source="builtin")
    uv = cylindrical_uv(model.neutral)
    model = assemble_builtin(model.neutral, np.asarray(model.meta["iris_mean"]), model.exp_basis,
                             list(model.exp_names), model.exp_range, name="builtin-mp468", source="builtin",
                             uv=uv, meta=dict(model.meta, generated_from="ICT-FaceKit light mean face (MIT licence, "
                                                                         "USC Institute for Creative Technologies)",
                                              generator=f"engine.face.model_builtin.generate_generic_model(seed={seed}, "
                                                        f"n_frames={n_frames})",
                                              frames_detected=detected, ict_model_id=ict.model_id(),
                                              seconds=round(time.perf_counter() - t0, 1)))
    model.save(out_path)
    Path(out_path).chmod(0o644)  # shipped data file: world-readable
    _load_npz_cached.cache_clear()
    return model


def _eye_albedo(neutral: np.ndarray, obj: dict, albedo: np.ndarray) -> np.ndarray:
    """ICT's eyes are two nested spheres: M_Sclera* (outer shell, transparent over the
    cornea) and M_Iris* (carries the iris texture). An opaque render drops the sclera shell
    and paints the inner sphere: iris (dark, 30 deg half-angle about +Z, the neutral gaze)
    and pupil (black, 12 deg). Returns the sclera vertex indices to hide."""
    hidden = []
    for sclera, iris in (("M_ScleraLeft", "M_IrisLeft"), ("M_ScleraRight", "M_IrisRight")):
        sv = np.unique([i for f, m in zip(obj["faces"], obj["mats"]) if m == sclera for i in f])
        iv = np.unique([i for f, m in zip(obj["faces"], obj["mats"]) if m == iris for i in f])
        if len(iv) == 0:
            continue
        rel = neutral[iv] - neutral[iv].mean(0)
        cos = rel[:, 2] / np.maximum(np.linalg.norm(rel, axis=1), 1e-9)
        albedo[iv] = (0.92, 0.92, 0.90)
        albedo[iv[cos > np.cos(np.deg2rad(30))]] = (0.30, 0.20, 0.12)
        albedo[iv[cos > np.cos(np.deg2rad(12))]] = (0.03, 0.03, 0.03)
        hidden.append(sv)
    return np.concatenate(hidden) if hidden else np.zeros(0, np.int64)


def _matrix_to_rotvec(r: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(r).as_rotvec()


def _main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Regenerate the shipped generic built-in face model from ICT renders.")
    ap.add_argument("--generate", metavar="ICT_NPZ", required=True, help="path to ict_face_model_light_basis.npz")
    ap.add_argument("--out", default=str(GENERIC_PATH))
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    m = generate_generic_model(a.generate, a.out, a.frames, a.seed)
    print(f"wrote {a.out}: {m.model_id()} K_exp={m.n_exp} names={m.exp_names} build={m.meta.get('build')} "
          f"detected={m.meta.get('frames_detected')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
