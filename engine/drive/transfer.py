"""Video-driven reenactment: a driving performance transferred onto the actor of the plate.

Input: the plate's tracking and the driving video's tracking (:mod:`engine.face.track`, the
same face-model *kind*), the shot's frames and drive settings. Output: a :class:`DriveResult`
whose :class:`~engine.face.params.FrameParams` are the actor (plate identity, plate camera)
performing the driver's expression, with per-frame flags.

**Expression, identity-independent.** Each person's expression is taken relative to their own
rest face (:func:`engine.drive.geometry.estimate_rest`): ``e_actor = rest_actor + gain * M
(e_driver - rest_driver)``, a linear map ``M`` chosen by ``method``:

* ``coefficients``: ``M = I``. Right when both were tracked in one expression basis whose
  coefficients mean the same motion for every identity (ICT / ARKit blendshapes are built
  that way: the deltas are identity-independent by construction), so a jawOpen of 0.8 on
  the driver is a jawOpen of 0.8 on the actor.
* ``geometry``: deformation transfer through the shared mesh topology (in the spirit of
  Sumner & Popovic, "Deformation Transfer for Triangle Meshes", SIGGRAPH 2004, simplified to
  per-vertex displacements, which suits two faces of one topology in one canonical frame).
  The driver's displacement field from rest, ``B_d (e_d - rest_d)`` (cm, model space), is
  rescaled per facial feature to the actor's proportions (globally by the outer-canthal
  width ratio; near each eye by the ratio of the rest lid gaps, so that a blink closes an eye
  of any size; near the mouth by the mouth-width ratio) and projected onto the actor's basis
  by ridge-regularised least squares over the face-region vertices. This is what the
  built-in model needs: its expression basis is learned per media (PCA plus a few named
  directions), so coefficients of two people are not comparable, but displacements are.
  ``auto`` picks ``coefficients`` when the two models share one expression basis
  (identical ``exp_names`` and basis arrays), else ``geometry``.

``region: mouth`` keeps the plate's own upper face: the target displacement field is the
driver's below the nose (a smooth mask from the nose tip down to the mouth corners, lips and
mouth interior always in) and the plate's own elsewhere, projected the same way.

Blinks and gaze are part of the expression (eyeBlink*, eyeLook* blendshapes of ICT; eyelid
displacements of the built-in model, which has no eyeballs, hence no gaze).

**Head pose** (``pose``): ``plate`` keeps the plate's pose and the plate's crops.
``driving`` gives the actor the driver's head rotation (camera axis-angle) around the actor's
mean position; the driver's translation is carried over in units of face size (image-plane
offsets from its mean position divided by its face's angular size, depth as a relative scale
change), so a head moving by half a face-width moves the actor's head by half of the actor's
face-width. ``relative``: the actor's first-frame pose composed with the driver's motion since
its own first frame (``R = R_d(t) R_d(0)^T R_a(0)``, translation as above relative to the
first frames). For ``driving`` / ``relative`` the crops are recomputed around the projected
driven landmarks (:func:`engine.face.crop.compute_crops` with the plate's crop settings), so
the face stays framed where it now is.

**Time** (:mod:`engine.drive.timing`): exact Fraction positions, ``nearest`` or ``linear``
sampling (rotations by slerp); outside the clip the first / last frame is held and flagged.

**Frames without a face.** Driver frames with no usable face are filled before sampling:
gaps up to ``max_gap_s`` are interpolated from the neighbouring face frames (held at the
clip's ends), flagged ``driver_interpolated``; longer gaps fall back to the plate's own
parameters for those frames, flagged ``driver_fallback_plate``. Plate frames without a face
stay unusable (the renderer passes the plate through), flagged ``plate_no_face``.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from engine.errors import ConfigError, MediaError
from engine.face.model import FACE_REGIONS, Region
from engine.face.params import FrameParams

from .geometry import REST_METHODS, LandmarkBasis, estimate_rest, face_measures, NOSE_TIP
from .timing import SAMPLING, sample_plan

log = logging.getLogger(__name__)

__all__ = ["VideoDriveConfig", "DriveResult", "ExpressionMap", "FLAG_NAMES", "POSE_MODES", "REGIONS", "METHODS",
           "transfer_video", "expression_map", "fill_gaps", "flag_bits", "frame_status"]

METHODS = ("auto", "coefficients", "geometry")
POSE_MODES = ("plate", "driving", "relative")
REGIONS = ("face", "mouth")

#: Per-frame flags of a drive (bit i = 1 << i); a frame with no flag is "ok".
FLAG_NAMES: tuple[str, ...] = ("plate_no_face", "driver_fallback_plate", "driver_interpolated", "after_end",
                               "before_start", "clamped")
_BIT = {name: 1 << i for i, name in enumerate(FLAG_NAMES)}
CLAMP_FLAG = 0.05   # share of a coefficient's range a clamp must change to flag the frame


def flag_bits(*names: str) -> int:
    return int(sum(_BIT[n] for n in names))


def frame_status(flags: np.ndarray) -> list[str]:
    """The most important flag of each frame (``ok`` if none): FLAG_NAMES is in priority order."""
    out = []
    for f in np.asarray(flags, np.int64):
        out.append(next((n for n in FLAG_NAMES if f & _BIT[n]), "ok"))
    return out


@dataclass
class VideoDriveConfig:
    """Settings of the video-driven transfer (the shot gives pose, region and offset)."""

    method: str = "auto"            # auto | coefficients | geometry (module doc)
    rest: str = "quiet_frames"      # quiet_frames | percentile | zero (engine.drive.geometry)
    rest_fraction: float = 0.2      # quiet_frames: share of frames with the most closed lips
    rest_percentile: float = 5.0    # percentile: the coefficient percentile taken as rest
    gain: float = 1.0               # expression strength (1: the driver's own amplitude)
    feature_scaling: bool = True    # geometry: rescale eye / mouth displacements to the actor's proportions
    regularisation: float = 1e-3    # geometry: ridge weight, relative to the basis' mean energy
    feature_weight: float = 9.0     # geometry: extra fit weight on eyelids and lips (x(1 + this) at the centre)
    upper_weight: float = 0.0       # geometry: extra fit weight on the upper face (above the nose tip)
    pair_share: float = 1.0         # geometry: weight of the feature landmark pairs vs all mesh edges
    absolute_weight: float = 0.05   # geometry: weight of absolute vertex displacements vs edges
    sampling: str = "linear"        # nearest | linear (engine.drive.timing)
    max_gap_s: float = 0.5          # driver no-face gaps up to this long are interpolated
    range_margin: float = 0.5       # clamp to the actor model's range widened by this share (None: no clamp)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"drive.method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.rest not in REST_METHODS:
            raise ConfigError(f"drive.rest must be one of {', '.join(REST_METHODS)}, got {self.rest!r}")
        if self.sampling not in SAMPLING:
            raise ConfigError(f"drive.sampling must be one of {', '.join(SAMPLING)}, got {self.sampling!r}")
        if not 0 < self.rest_fraction <= 1:
            raise ConfigError(f"drive.rest_fraction must be in (0, 1], got {self.rest_fraction}")
        if not 0 <= self.rest_percentile <= 100:
            raise ConfigError(f"drive.rest_percentile must be in [0, 100], got {self.rest_percentile}")
        if not self.gain >= 0:
            raise ConfigError(f"drive.gain must be >= 0, got {self.gain}")
        if not (self.pair_share >= 0 and self.absolute_weight > 0):
            raise ConfigError("drive.pair_share must be >= 0 and drive.absolute_weight > 0")
        if not self.upper_weight >= 0:
            raise ConfigError(f"drive.upper_weight must be >= 0, got {self.upper_weight}")
        if not self.feature_weight >= 0:
            raise ConfigError(f"drive.feature_weight must be >= 0, got {self.feature_weight}")
        if not self.regularisation >= 0:
            raise ConfigError(f"drive.regularisation must be >= 0, got {self.regularisation}")
        if not self.max_gap_s >= 0:
            raise ConfigError(f"drive.max_gap_s must be >= 0, got {self.max_gap_s}")
        if self.range_margin is not None and not self.range_margin >= 0:
            raise ConfigError(f"drive.range_margin must be >= 0 or null, got {self.range_margin}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DriveResult:
    """Per-frame parameters of a drive for the shot's frames, with flags and provenance."""

    params: FrameParams
    flags: np.ndarray               # (N,) uint16 bits of FLAG_NAMES
    mode: str                       # video | audio | none
    positions: np.ndarray | None = None   # (N, 2) int64 numerator, denominator of the driving position
    info: dict[str, Any] = field(default_factory=dict)   # method, rest, pose, statistics (JSON-able)

    def __len__(self) -> int:
        return len(self.params)

    @property
    def status(self) -> list[str]:
        return frame_status(self.flags)

    def flag_counts(self) -> dict[str, int]:
        f = np.asarray(self.flags, np.int64)
        return {n: int(((f & _BIT[n]) != 0).sum()) for n in FLAG_NAMES}

    @property
    def flagged(self) -> np.ndarray:
        return np.asarray(self.flags) != 0


# ------------------------------------------------------------------------------------------
# expression map
# ------------------------------------------------------------------------------------------
@dataclass
class ExpressionMap:
    """``e_actor = rest_actor + M_driver (e_driver - rest_driver) + M_plate (e_plate - rest_actor)``."""

    method: str
    rest_actor: np.ndarray       # (Ka,)
    rest_driver: np.ndarray      # (Kd,)
    m_driver: np.ndarray         # (Ka, Kd)
    m_plate: np.ndarray | None   # (Ka, Ka) or None (region face)
    lo: np.ndarray | None        # (Ka,) clamp bounds (None: no clamp)
    hi: np.ndarray | None
    info: dict[str, Any] = field(default_factory=dict)
    # geometry: the normal matrix of the projection (Ka, Ka); bounds are then met by the
    # bounded least-squares solution, not by clipping (module doc)
    hessian: np.ndarray | None = None

    def apply(self, e_driver: np.ndarray, e_plate: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(N, Kd) [, (N, Ka)] -> actor expressions (N, Ka) and (N,) clamped mask."""
        d = np.asarray(e_driver, np.float64) - self.rest_driver
        out = self.rest_actor + d @ self.m_driver.T
        if self.m_plate is not None:
            if e_plate is None:
                raise ValueError("region mouth needs the plate's expressions")
            out = out + (np.asarray(e_plate, np.float64) - self.rest_actor) @ self.m_plate.T
        clamped = np.zeros(len(out), bool)
        if self.lo is not None:
            c = np.clip(out, self.lo, self.hi)
            hit = (np.abs(c - out) > 1e-9).any(1)
            if self.hessian is not None and hit.any():
                c[hit] = self._bounded(out[hit])
            # Flag only a material limit (> CLAMP_FLAG of a coefficient's range). An activation
            # (ICT / ARKit, >= 0) pushed below 0 by the rest difference just means "no more
            # than at rest": clipped silently.
            tol = CLAMP_FLAG * (self.hi - self.lo)
            over = (c - out) < -tol
            under = ((c - out) > tol) & (self.lo < 0)
            clamped = (over | under).any(1)
            out = c
        return out.astype(np.float32), clamped

    def _bounded(self, x: np.ndarray) -> np.ndarray:
        """Rows of the unconstrained solution -> the in-range minimiser of the same least
        squares: min (y - x)^T H (y - x) s.t. lo <= y <= hi, i.e. ||L^T (y - x)||^2 with
        H = L L^T. Clipping alone would break the balance between correlated components
        of a learned basis (one clipped, its partner not), which shows up as motion where
        the driver had none."""
        from scipy.optimize import lsq_linear

        lt = np.linalg.cholesky(self.hessian).T
        out = np.empty_like(x)
        for i, row in enumerate(x):
            out[i] = lsq_linear(lt, lt @ row, bounds=(self.lo, self.hi), method="bvls").x
        return out


def same_expression_basis(a, b) -> bool:
    return (tuple(a.exp_names) == tuple(b.exp_names) and a.exp_basis.shape == b.exp_basis.shape
            and np.array_equal(a.exp_basis, b.exp_basis))


def _face_vertex_weight(model) -> np.ndarray:
    mask = model.region_mask(FACE_REGIONS).astype(np.float64)
    return mask if mask.any() else np.ones(model.n_vertices)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def mouth_region_weight(model, rest_verts: np.ndarray, rest_landmarks: np.ndarray) -> np.ndarray:
    """(V,) in [0, 1]: 1 from the mouth corners down, 0 from the nose tip up (smooth), lips and
    mouth interior always 1: the part of the face a dub (``region: mouth``) replaces."""
    y = rest_verts[:, 1]                                     # model +Y is up
    y_nose = rest_landmarks[NOSE_TIP, 1]
    y_mouth = rest_landmarks[[61, 291], 1].mean()
    w = _smoothstep((y_nose - y) / max(y_nose - y_mouth, 1e-6))
    reg = np.asarray(model.vertex_region)
    w[np.isin(reg, [int(Region.LIPS), int(Region.MOUTH_INTERIOR)])] = 1.0
    return w


def _feature_scale(actor_lm: np.ndarray, driver_lm: np.ndarray, enabled: bool):
    """A function points (P, 3) -> per-point displacement scale driver -> actor, and the
    ratios used: globally the outer-canthal width ratio; near each eye the ratio of the rest
    lid gaps (a blink closes an eye of any size); near the mouth the mouth-width ratio
    (Gaussian neighbourhoods on the actor's rest shape; ratios clamped to [0.5, 2] x global)."""
    from engine.face import landmarks as lmk

    ma, md = face_measures(actor_lm[None]), face_measures(driver_lm[None])
    s = float(ma["iod"][0] / max(md["iod"][0], 1e-9))
    info: dict[str, Any] = {"face_scale": s}
    groups = []
    if enabled:
        for side, ring in (("left", lmk.LEFT_EYE), ("right", lmk.RIGHT_EYE)):
            ratio = float(np.clip(ma[f"lid_gap_{side}"][0] / max(md[f"lid_gap_{side}"][0], 1e-9), 0.5 * s, 2.0 * s))
            centre = actor_lm[list(ring)].mean(0)
            width = float(np.linalg.norm(actor_lm[lmk.EYE_CORNERS[side][0]] - actor_lm[lmk.EYE_CORNERS[side][1]]))
            groups.append((ratio, centre, 0.6 * width))
            info[f"eye_{side}_scale"] = ratio
        ratio = float(np.clip(ma["mouth_width"][0] / max(md["mouth_width"][0], 1e-9), 0.5 * s, 2.0 * s))
        groups.append((ratio, actor_lm[list(lmk.MOUTH_CORNERS)].mean(0), 0.6 * float(ma["mouth_width"][0])))
        info["mouth_scale"] = ratio

    def scale_at(points: np.ndarray) -> np.ndarray:
        out = np.full(len(points), s)
        if not groups:
            return out
        weights = np.stack([np.exp(-0.5 * (np.linalg.norm(points - c, axis=1) / sig) ** 2) for _, c, sig in groups], 1)
        total = weights.sum(1, keepdims=True)
        weights = np.where(total > 1, weights / np.maximum(total, 1e-12), weights)
        for g, (ratio, _, _) in enumerate(groups):
            out += weights[:, g] * (ratio - s)
        return out

    return scale_at, info


def _feature_emphasis(rest_lm: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """(V,) in [0, 1]: Gaussian bumps over each eye (sigma 0.35 eye width) and the lips
    (sigma 0.3 mouth width), on the actor's rest shape."""
    from engine.face import landmarks as lmk

    bumps = []
    for side, ring in (("left", lmk.LEFT_EYE), ("right", lmk.RIGHT_EYE)):
        c = rest_lm[list(ring)].mean(0)
        width = float(np.linalg.norm(rest_lm[lmk.EYE_CORNERS[side][0]] - rest_lm[lmk.EYE_CORNERS[side][1]]))
        bumps.append(np.exp(-0.5 * (np.linalg.norm(verts - c, axis=1) / (0.35 * width)) ** 2))
    c = rest_lm[list(lmk.MOUTH_CORNERS)].mean(0)
    width = float(np.linalg.norm(rest_lm[lmk.MOUTH_CORNERS[0]] - rest_lm[lmk.MOUTH_CORNERS[1]]))
    bumps.append(np.exp(-0.5 * (np.linalg.norm(verts - c, axis=1) / (0.3 * width)) ** 2))
    return np.clip(np.sum(bumps, 0), 0.0, 1.0)


def _expression_prior(expr: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
    """(K, K) inverse covariance of the actor's own tracked expressions (shrunk towards its
    diagonal): the ridge term of the projection in the actor's own units, a Gaussian MAP
    prior. A combination of components the actor never performed (e.g. ten standard
    deviations of a learned component to mimic another person's jaw shape) costs more than
    a plausible one, which is what keeps a learned basis from buying mouth fidelity with
    motion elsewhere (eyes)."""
    e = np.asarray(expr, np.float64)[np.asarray(valid, bool)]
    e = e[np.isfinite(e).all(1)]
    if len(e) < max(3, k // 2):
        return np.eye(k)
    cov = np.cov(e, rowvar=False).reshape(k, k)
    d = np.diag(np.diag(cov))
    cov = 0.8 * cov + 0.2 * d + 1e-6 * np.trace(cov) / k * np.eye(k)
    return np.linalg.inv(cov)


def _clamp_bounds(model, margin: float | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    if margin is None:
        return None, None
    r = np.asarray(model.exp_range, np.float64)
    lo, hi = r[:, 0], r[:, 1]
    width = hi - lo
    # Activation-type coefficients (range starting at 0: ICT / ARKit) are never negative.
    lo_out = np.where(lo >= 0, lo, lo - margin * width)
    return lo_out, hi + margin * width


def expression_map(actor_model, actor_identity: np.ndarray, actor_expr: np.ndarray, actor_valid: np.ndarray,
                   driver_model, driver_identity: np.ndarray, driver_expr: np.ndarray, driver_valid: np.ndarray,
                   *, region: str = "face", config: VideoDriveConfig | None = None) -> ExpressionMap:
    """The linear expression map from the driver's coefficients to the actor's (module doc).
    ``actor_expr`` / ``driver_expr`` are the whole tracked sequences (for the rest estimates)."""
    import torch

    cfg = config or VideoDriveConfig()
    cfg.validate()
    if region not in REGIONS:
        raise ConfigError(f"drive.region must be one of {', '.join(REGIONS)}, got {region!r}")
    lb_a = LandmarkBasis.of(actor_model, actor_identity)
    lb_d = LandmarkBasis.of(driver_model, driver_identity)
    rest_a, info_a = estimate_rest(actor_expr, actor_valid, lb_a, method=cfg.rest, rest_fraction=cfg.rest_fraction,
                                   percentile=cfg.rest_percentile)
    rest_d, info_d = estimate_rest(driver_expr, driver_valid, lb_d, method=cfg.rest, rest_fraction=cfg.rest_fraction,
                                   percentile=cfg.rest_percentile)
    same = same_expression_basis(actor_model, driver_model)
    method = cfg.method if cfg.method != "auto" else ("coefficients" if same else "geometry")
    if method == "coefficients" and not same:
        raise ConfigError("drive.method coefficients needs the driver and the actor tracked in one expression "
                          f"basis ({actor_model.name} vs {driver_model.name}); use geometry or auto")
    info: dict[str, Any] = {"method": method, "rest_actor": info_a, "rest_driver": info_d, "region": region,
                            "gain": cfg.gain}
    ka = actor_model.n_exp
    lo, hi = _clamp_bounds(actor_model, cfg.range_margin)
    if method == "coefficients" and region == "face":
        return ExpressionMap(method, rest_a, rest_d, cfg.gain * np.eye(ka), None, lo, hi, info)

    if actor_model.n_vertices != driver_model.n_vertices or not np.array_equal(actor_model.triangles,
                                                                               driver_model.triangles):
        raise ConfigError(f"geometry transfer needs one mesh topology; {actor_model.name} has "
                          f"{actor_model.n_vertices} vertices, {driver_model.name} {driver_model.n_vertices}")
    with torch.no_grad():
        ident = (torch.as_tensor(np.asarray(actor_identity, np.float32).reshape(1, -1))
                 if actor_model.n_id else None)
        rest_verts = actor_model.vertices(ident, torch.as_tensor(rest_a[None], dtype=torch.float32))[0].numpy()
    rest_lm_a = lb_a.points(rest_a[None])[0]
    rest_lm_d = lb_d.points(rest_d[None])[0]
    ba = np.asarray(actor_model.exp_basis, np.float64)          # (Ka, V, 3)
    bd = np.asarray(driver_model.exp_basis, np.float64)         # (Kd, V, 3)
    if method == "coefficients":
        scale_v, scale_l, sinfo = np.ones(len(rest_verts)), np.ones(len(rest_lm_a)), {"face_scale": 1.0}
    else:
        scale_at, sinfo = _feature_scale(rest_lm_a, rest_lm_d, cfg.feature_scaling)
        scale_v, scale_l = scale_at(rest_verts), scale_at(rest_lm_a)
    info["scales"] = sinfo
    rows = _DifferentialRows(actor_model, rest_verts, rest_lm_a, cfg)
    ra = rows(ba, lb_a.basis)                                   # (Ka, R, 3)
    gram = np.einsum("krd,jrd->kj", ra, ra)
    prior = _expression_prior(actor_expr, actor_valid, ka)
    lam = cfg.regularisation * float(np.trace(gram)) / max(float(np.trace(prior)), 1e-12)
    hess = gram + lam * prior
    inv = np.linalg.inv(hess)
    if region == "face":
        m_d = inv @ np.einsum("krd,jrd->kj", ra, rows(bd * scale_v[None, :, None], lb_d.basis * scale_l[None, :, None]))
        m_p = None
    else:
        wm_v = mouth_region_weight(actor_model, rest_verts, rest_lm_a)
        wm_l = _smoothstep((rest_lm_a[NOSE_TIP, 1] - rest_lm_a[:, 1])
                           / max(rest_lm_a[NOSE_TIP, 1] - rest_lm_a[[61, 291], 1].mean(), 1e-6))
        m_d = inv @ np.einsum("krd,jrd->kj", ra, rows(bd * (scale_v * wm_v)[None, :, None],
                                                       lb_d.basis * (scale_l * wm_l)[None, :, None]))
        m_p = inv @ np.einsum("krd,jrd->kj", ra, rows(ba * (1.0 - wm_v)[None, :, None],
                                                       lb_a.basis * (1.0 - wm_l)[None, :, None]))
        info["mouth_vertices"] = int((wm_v > 0.5).sum())
    return ExpressionMap(method, rest_a, rest_d, cfg.gain * m_d, m_p, lo, hi, info, hessian=hess)


#: Landmark pairs whose *relative* motion is what a viewer reads: lid gaps (upper-lower), eye
#: widths, inner and outer lip gaps, mouth width, brow-to-lid distances.
FEATURE_PAIRS: tuple[tuple[int, int], ...] = (
    (160, 144), (159, 145), (158, 153), (33, 133),            # right eye
    (387, 373), (386, 374), (385, 380), (362, 263),           # left eye
    (82, 87), (13, 14), (312, 317), (0, 17), (37, 84), (267, 314), (61, 291),   # lips
    (105, 159), (334, 386), (70, 33), (300, 263))            # brows over the eyes


class _DifferentialRows:
    """The data term of the geometry projection as rows of relative vectors (deformation
    transfer matches local deformation, not absolute positions: Sumner & Popovic 2004).

    Rows: every mesh edge inside the face region (the difference of its two vertices'
    displacements, weighted by the vertices' fit weights: eyelids and lips x(1 +
    feature_weight), the upper face x(1 + upper_weight)); :data:`FEATURE_PAIRS` of landmarks
    (lid and lip gaps, widths, brows), which together weigh as much as all the edges; and a
    light absolute term (``absolute_weight`` of each vertex's weight) that pins what edges
    cannot see. A uniform shift of an eye region then costs little, a change of the lid gap
    a lot, which is what identity-independent transfer should preserve.
    """

    def __init__(self, model, rest_verts: np.ndarray, rest_lm: np.ndarray, cfg: "VideoDriveConfig") -> None:
        w = _face_vertex_weight(model) * (1.0 + cfg.feature_weight * _feature_emphasis(rest_lm, rest_verts))
        w = w * (1.0 + cfg.upper_weight * (1.0 - mouth_region_weight(model, rest_verts, rest_lm)))
        tris = np.asarray(model.triangles, np.int64)
        e = np.sort(np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]]), 1)
        e = np.unique(e, axis=0)
        e = e[(w[e[:, 0]] > 0) & (w[e[:, 1]] > 0)]
        self.edges = e
        self.w_edge = np.sqrt(0.5 * (w[e[:, 0]] + w[e[:, 1]]))
        emb = np.asarray(model.landmark_tri) >= 0
        pairs = np.array([p for p in FEATURE_PAIRS if emb[p[0]] and emb[p[1]]], np.int64).reshape(-1, 2)
        self.pairs = pairs
        total = float((self.w_edge ** 2).sum())
        self.w_pair = np.sqrt(cfg.pair_share * total / max(len(pairs), 1)) if len(pairs) else 0.0
        self.w_abs = np.sqrt(cfg.absolute_weight * w)

    def __call__(self, vfield: np.ndarray, lfield: np.ndarray) -> np.ndarray:
        """(K, V, 3) vertex and (K, 478, 3) landmark displacement fields -> (K, R, 3) rows."""
        e, p = self.edges, self.pairs
        parts = [(vfield[:, e[:, 0]] - vfield[:, e[:, 1]]) * self.w_edge[None, :, None],
                 (lfield[:, p[:, 0]] - lfield[:, p[:, 1]]) * self.w_pair,
                 vfield * self.w_abs[None, :, None]]
        return np.concatenate(parts, 1)


# ------------------------------------------------------------------------------------------
# driver gaps
# ------------------------------------------------------------------------------------------
def fill_gaps(valid: np.ndarray, max_gap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """How to fill invalid frames of a track from its valid neighbours.

    Returns (left, right, weight, kind): each frame's value is ``(1 - w) x[left] + w x[right]``;
    ``kind`` 0 = measured, 1 = interpolated (a gap of <= max_gap frames, or held at the ends),
    2 = not fillable (a longer gap: use another source)."""
    valid = np.asarray(valid, bool)
    n = valid.size
    idx = np.arange(n)
    if not valid.any():
        return idx, idx, np.zeros(n), np.full(n, 2, np.int8)
    prev = np.maximum.accumulate(np.where(valid, idx, -1))
    nxt = np.minimum.accumulate(np.where(valid, idx, n)[::-1])[::-1]
    kind = np.zeros(n, np.int8)
    left, right, w = idx.copy(), idx.copy(), np.zeros(n)
    for i in np.flatnonzero(~valid):
        p, q = prev[i], nxt[i]
        if p >= 0 and q < n:
            gap = q - p - 1
            left[i], right[i] = p, q
            w[i] = (i - p) / (q - p)
        elif p >= 0:
            gap = i - p          # after the last face: hold it
            left[i] = right[i] = p
        else:
            gap = q - i
            left[i] = right[i] = q
        kind[i] = 1 if gap <= max_gap else 2
        if kind[i] == 2:
            left[i], right[i], w[i] = i, i, 0.0
    return left, right, w, kind


def _slerp_pairs(rot0: np.ndarray, rot1: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per-row slerp between axis-angles rot0 and rot1 at weights w."""
    r0, r1 = Rotation.from_rotvec(rot0), Rotation.from_rotvec(rot1)
    delta = (r0.inv() * r1).as_rotvec()
    return (r0 * Rotation.from_rotvec(delta * np.asarray(w)[:, None])).as_rotvec()


# ------------------------------------------------------------------------------------------
# pose
# ------------------------------------------------------------------------------------------
def _image_offsets(t: np.ndarray) -> np.ndarray:
    return t[:, :2] / t[:, 2:3]


def driven_pose(mode: str, plate_rot: np.ndarray, plate_trans: np.ndarray, plate_ok: np.ndarray,
                drv_rot: np.ndarray, drv_trans: np.ndarray, drv_ok: np.ndarray,
                actor_size_cm: float, driver_size_cm: float) -> tuple[np.ndarray, np.ndarray]:
    """(rotation, translation) of the target frames for pose ``driving`` / ``relative`` (module doc).

    plate_* : the plate's own pose of the target frames; drv_* : the driver's sampled pose."""
    if not plate_ok.any():
        raise MediaError("the plate has no tracked face in the shot's frames: cannot place a driven head")
    if not drv_ok.any():
        raise MediaError("the driving video has no usable face in the shot's frames")
    pr, pt = plate_rot.astype(np.float64), plate_trans.astype(np.float64)
    dr, dt = drv_rot.astype(np.float64), drv_trans.astype(np.float64)
    if mode == "driving":
        ref_pt = pt[plate_ok].mean(0)
        ref_dt = dt[drv_ok].mean(0)
        rot = dr.copy()
        ref_rot_a = ref_rot_d = None
    elif mode == "relative":
        ia, idr = int(np.flatnonzero(plate_ok)[0]), int(np.flatnonzero(drv_ok)[0])
        ref_pt, ref_dt = pt[ia], dt[idr]
        ref_rot_a, ref_rot_d = Rotation.from_rotvec(pr[ia]), Rotation.from_rotvec(dr[idr])
        rot = (Rotation.from_rotvec(dr) * ref_rot_d.inv() * ref_rot_a).as_rotvec()
    else:
        raise ConfigError(f"drive.pose must be one of {', '.join(POSE_MODES)}, got {mode!r}")
    # translation in face units: image-plane offsets / angular face size, depth as a scale ratio
    d_off = (_image_offsets(dt) - ref_dt[:2] / ref_dt[2]) * (ref_dt[2] / driver_size_cm)
    off = ref_pt[:2] / ref_pt[2] + d_off * (actor_size_cm / ref_pt[2])
    z = ref_pt[2] * (dt[:, 2] / ref_dt[2])
    trans = np.concatenate([off * z[:, None], z[:, None]], 1)
    return rot.astype(np.float32), trans.astype(np.float32)


def _crop_config(plate) -> Any:
    from engine.face.crop import CropConfig
    from engine.face.smoothing import SmoothingConfig

    d = dict(plate.header.get("config", {}).get("crop", {}) or {})
    sm = d.pop("smoothing", None)
    known = CropConfig.__dataclass_fields__
    cfg = CropConfig(**{k: v for k, v in d.items() if k in known and k != "smoothing"})
    if isinstance(sm, dict):
        cfg.smoothing = SmoothingConfig(**{k: v for k, v in sm.items() if k in SmoothingConfig.__dataclass_fields__})
    cfg.size = int(plate.crops.size)
    return cfg


def projected_landmarks(params: FrameParams, basis: LandmarkBasis) -> np.ndarray:
    """(N, 478, 2) plate-pixel landmarks of the params (engine camera convention)."""
    pts = basis.points(np.nan_to_num(params.expression))                     # (N, 478, 3) model
    rot = Rotation.from_rotvec(np.nan_to_num(params.rotation.astype(np.float64))).as_matrix()
    cam = np.einsum("nij,nlj->nli", rot, pts) + params.translation.astype(np.float64)[:, None]
    uv = cam[..., :2] / np.maximum(cam[..., 2:3], 1e-6) * params.focal + params.principal_point.astype(np.float64)
    return uv


# ------------------------------------------------------------------------------------------
# the transfer
# ------------------------------------------------------------------------------------------
def transfer_video(plate, driver, frames: Sequence[int] | np.ndarray, *, plate_start_frame: int,
                   plate_fps: Fraction, offset: int = 0, pose: str = "plate", region: str = "face",
                   config: VideoDriveConfig | None = None, plate_model=None, driver_model=None) -> DriveResult:
    """Drive the plate's actor with the driving video's performance on plate frames ``frames``.

    plate, driver: :class:`~engine.face.tracking_file.TrackingResult` (the driver's frame
    numbers are its 0-based indices, as :func:`engine.stages.track.shot_track_stages` tracks
    it). plate_model / driver_model: the face models (default: each tracking's own).
    """
    cfg = config or VideoDriveConfig()
    cfg.validate()
    if pose not in POSE_MODES:
        raise ConfigError(f"drive.pose must be one of {', '.join(POSE_MODES)}, got {pose!r}")
    if region not in REGIONS:
        raise ConfigError(f"drive.region must be one of {', '.join(REGIONS)}, got {region!r}")
    frames = np.asarray(frames, np.int64)
    if frames.size == 0:
        raise ConfigError("no frames to drive")
    missing = np.setdiff1d(frames, plate.frame_numbers)
    if missing.size:
        raise ConfigError(f"plate tracking ({int(plate.frame_numbers[0])}-{int(plate.frame_numbers[-1])}) lacks "
                          f"frame {int(missing[0])} of the shot: re-track the plate")
    pm = plate_model or plate.face_model()
    dm = driver_model or driver.face_model()
    plate_all = FrameParams.from_tracking(plate)
    idx = np.searchsorted(plate.frame_numbers, frames)
    base = plate_all.select(idx)
    plate_ok = np.asarray(base.usable, bool) & np.isfinite(base.expression).all(1) & \
        np.isfinite(base.rotation).all(1)

    d_fit = driver.fit
    d_expr = np.asarray(d_fit.expression, np.float64)
    d_valid = (np.asarray(driver.usable, bool) & np.asarray(d_fit.fitted, bool) & np.isfinite(d_expr).all(1)
               & np.isfinite(d_fit.rotation).all(1) & np.isfinite(d_fit.translation).all(1))
    if not d_valid.any():
        raise MediaError(f"driving video {driver.header['media']['path']}: no usable face in any of its "
                         f"{len(driver)} frames")
    emap = expression_map(pm, plate.fit.identity, plate.fit.expression, plate_all.usable,
                          dm, d_fit.identity, d_expr, d_valid, region=region, config=cfg)

    # fill the driver's no-face frames, then sample by time
    dfps = driver.fps
    max_gap = int(round(cfg.max_gap_s * float(dfps)))
    left, right, w_fill, kind = fill_gaps(d_valid, max_gap)
    safe = np.where(d_valid[:, None], d_expr, 0.0)
    d_e = (1 - w_fill)[:, None] * safe[left] + w_fill[:, None] * safe[right]
    d_r = _slerp_pairs(np.nan_to_num(d_fit.rotation[left].astype(np.float64)),
                       np.nan_to_num(d_fit.rotation[right].astype(np.float64)), w_fill)
    d_t = (1 - w_fill)[:, None] * np.nan_to_num(d_fit.translation[left]) + w_fill[:, None] * \
        np.nan_to_num(d_fit.translation[right])
    plan = sample_plan(frames, len(driver), plate_start_frame=plate_start_frame, offset=offset,
                       plate_fps=plate_fps, driver_fps=dfps, sampling=cfg.sampling)
    touched = lambda k: ((kind[plan.i0] == k) & (plan.weight < 1)) | ((kind[plan.i1] == k) & (plan.weight > 0))  # noqa: E731
    fallback = touched(2)
    interp = touched(1) & ~fallback
    e_drv = plan.blend(d_e)
    r_drv = _slerp_pairs(d_r[plan.i0], d_r[plan.i1], plan.weight)
    t_drv = plan.blend(d_t)

    expr, clamped = emap.apply(e_drv, np.nan_to_num(base.expression.astype(np.float64)) if region == "mouth" else None)
    expr = np.where(fallback[:, None], base.expression, expr).astype(np.float32)

    flags = np.zeros(len(frames), np.int64)
    flags |= np.where(~plate_ok, _BIT["plate_no_face"], 0)
    flags |= np.where(fallback, _BIT["driver_fallback_plate"], 0)
    flags |= np.where(interp, _BIT["driver_interpolated"], 0)
    flags |= np.where(plan.after_end, _BIT["after_end"], 0)
    flags |= np.where(plan.before_start, _BIT["before_start"], 0)
    flags |= np.where(clamped & ~fallback, _BIT["clamped"], 0)

    rotation, translation, crop_affine = base.rotation, base.translation, base.crop_affine
    lb_a = LandmarkBasis.of(pm, plate.fit.identity)
    if pose != "plate":
        size_a = float(face_measures(lb_a.points(emap.rest_actor[None]))["iod"][0])
        lb_d = LandmarkBasis.of(dm, d_fit.identity)
        size_d = float(face_measures(lb_d.points(emap.rest_driver[None]))["iod"][0])
        drv_ok = ~fallback
        rot_new, trans_new = driven_pose(pose, base.rotation, base.translation, plate_ok, r_drv, t_drv, drv_ok,
                                         size_a, size_d)
        # frames falling back to the plate keep the plate's pose as well
        rotation = np.where(fallback[:, None], base.rotation, rot_new).astype(np.float32)
        translation = np.where(fallback[:, None], base.translation, trans_new).astype(np.float32)
        from engine.face.crop import compute_crops

        tmp = base.with_(expression=expr, rotation=rotation, translation=translation)
        uv = projected_landmarks(tmp, lb_a)
        crops = compute_crops(uv, base.image_size, _crop_config(plate), plate_fps, valid=plate_ok)
        crop_affine = crops.affine
    params = base.with_(expression=expr, rotation=np.asarray(rotation, np.float32),
                        translation=np.asarray(translation, np.float32), crop_affine=crop_affine,
                        usable=plate_ok)
    positions = np.array([[p.numerator, p.denominator] for p in plan.positions], np.int64)
    info = {"method": emap.method, "pose": pose, "region": region, "offset": int(offset),
            "sampling": cfg.sampling, "plate_fps": str(Fraction(plate_fps)), "driver_fps": str(dfps),
            "driver_frames": int(len(driver)), "driver_no_face_frames": int((~d_valid).sum()),
            "max_gap_frames": max_gap, "map": _jsonable(emap.info),
            "rest_actor": [float(v) for v in emap.rest_actor], "rest_driver": [float(v) for v in emap.rest_driver]}
    result = DriveResult(params=params, flags=flags.astype(np.uint16), mode="video", positions=positions, info=info)
    counts = result.flag_counts()
    info["flag_counts"] = counts
    info["flagged_fraction"] = float(result.flagged.mean())
    if counts["after_end"]:
        log.warning("driving video is shorter than the shot: its last frame is held on %d frames", counts["after_end"])
    return result


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj
