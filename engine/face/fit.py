"""Fit the morphable face model to tracked 2D landmarks: identity, expressions, head pose, focal.

What is estimated (camera convention of :mod:`engine.face.camera`: OpenCV axes, pinhole with one
focal length ``f`` in pixels, pixel centres at ``+0.5``):

* **identity** ``(K_id,)`` once per actor, from many frames spread over the sequence;
* per frame **expression** ``(K_exp,)`` (kept inside ``model.exp_range``), **rotation** and
  **translation** (``x_cam = R x_model + t``);
* one **focal length** per sequence (the principal point is the image centre unless given).

The objective (a 3DMM landmark fit in the spirit of Blanz & Vetter 1999 / Face2Face, Thies et
al. 2016, solved with Gauss-Newton as Face2Face does, but on the CPU):

    E = sum_t [ sum_p w_p rho(|proj_tp - obs_tp|^2 / iod_t^2) / tau^2            data (robust)
               + lambda_exp * sum_k (e_tk / (hi_k - lo_k))^2 ]                     expression prior
      + n_frames * (lambda_id * |id / id_std|^2 + lambda_f * (log f - log f0)^2)   identity/focal prior
      + sum_t [lambda_rot |D2 r_t|^2 + lambda_trans |D2 t_t|^2 + lambda_exp_s |D2 e_t|^2]  smoothness

* Residuals are measured in units of the per-frame **inter-ocular distance** (``iod``, outer
  eye corners of the *tracked* landmarks) so that every weight is independent of image size
  and face scale; ``tau`` (``noise_iod``) is the expected landmark noise, so a data term of 1
  means "residuals at the noise level".
* ``rho`` is Geman-McClure (``s sigma^2 / (s + sigma^2)``, bounded: a landmark off by more
  than a few ``sigma`` stops pulling) or Huber, with ``sigma = robust_scale`` (in IOD units).
  It is minimised by iteratively re-weighted least squares, which for these concave-in-``s``
  losses is a majorise-minimise scheme; a graduated non-convexity schedule starts with a
  larger ``sigma`` so that a crude initial pose does not make the mouth landmarks outliers.
* ``w_p`` is ``model.landmark_weight`` times the group multipliers of :class:`FitConfig`.
  Irises and the face-oval (jawline) contour deserve low weights: mediapipe's oval points are
  2D *silhouette* points, so on a turning head they slide across the 3D surface while the
  model's embedded points stay fixed to the mesh; the iris points move with gaze. The face
  model's loader sets those weights; ``iris_weight`` / ``contour_weight`` scale them further.
* ``D2 x_t = x_{t-1} - 2 x_t + x_{t+1}``, only where frames t-1, t, t+1 are all fitted and
  adjacent (a no-face gap breaks the chain: the motion across a gap is unknown). Rotation is
  smoothed in the *head* rotation ``R_head = R @ R_frontal^T`` (``R_frontal`` = axis-angle
  (pi, 0, 0)), whose axis-angle is near 0 for usual poses; the camera rotation ``R`` itself
  sits near angle pi, where axis-angle vectors flip sign and cannot be smoothed or
  interpolated.

Strategy (``fit_sequence``):

1. **Initial pose** per frame in closed form: a weighted affine-camera fit of the model's
   landmarks (mean identity, neutral expression, expression-rigid landmarks weighted up),
   projected onto the nearest scaled rotation (Tomasi-Kanade style scaled orthography);
   depth from the scale and the focal length.
2. **Focal sweep + identity**: on a few frames, one short fit (identity's leading components,
   expressions, poses) per candidate field of view; the best candidate then seeds a joint
   Gauss-Newton fit of identity + log-focal + every subset frame's pose and expression on up
   to ``identity_frames`` frames spread over the sequence. The per-frame blocks are
   eliminated by a Schur complement (bundle-adjustment structure), so a step costs linear
   time in frames. The focal step is a "dolly zoom" (every translation scales with the
   focal length, keeping the face's image size), which decouples it from the depths.
   The focal prior's centre ``f0`` puts the subject ``focal_prior_distance_cm`` away.
3. **All frames**: identity and focal fixed; per-frame Gauss-Newton (batched, independent
   frames, per-frame Levenberg-Marquardt acceptance), then Gauss-Newton with the temporal
   term, solving the block-pentadiagonal normal equations by preconditioned conjugate
   gradients (block-Jacobi preconditioner). Box constraints on expressions: each step solves
   the bound-constrained quadratic model by projected Newton (Bertsekas 1982), batched.

Other entry points: :class:`OnlineFitter` / :func:`fit_frames_online` (frame by frame, causal,
identity and focal fixed), :func:`postprocess` (output smoothing of the fitted tracks with
:mod:`engine.face.smoothing`), :func:`project_landmarks` (the forward model).

Cost: CPU, one torch thread by default (``num_threads``), float32; about 5 ms per frame for the
per-frame stages with the ICT model (100 identity, 57 expression components, 478 landmarks)
plus a per-actor identity/focal stage of a few seconds (``bench/fit.py`` measures it).

Frames the caller marks invalid (no face, ...) or with too few finite landmarks are never
fitted: ``FitResult.fitted`` is False for them; their parameters are linearly interpolated
between the nearest fitted frames and held at the ends (``invalid_frames="interpolate"``) or
set to NaN (``"nan"``); their error figures are NaN. All of it runs in float32 torch, vectorised
over frames; no autograd is involved (the Jacobians are analytic).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import torch

from engine.errors import ConfigError, MediaError
from engine.face.camera import axis_angle_to_matrix

LANDMARK_COUNT = 478
# Fixed mediapipe face-mesh topology (mediapipe.solutions.face_mesh_connections): the iris
# points (468 right centre + ring, 473 left centre + ring) and the face-oval contour.
IRIS_INDICES: tuple[int, ...] = tuple(range(468, 478))
FACE_OVAL_INDICES: tuple[int, ...] = (
    10, 21, 54, 58, 67, 93, 103, 109, 127, 132, 136, 148, 149, 150, 152, 162, 172, 176, 234,
    251, 284, 288, 297, 323, 332, 338, 356, 361, 365, 377, 378, 379, 389, 397, 400, 454)
# Outer eye corners (subject's right, subject's left): the inter-ocular normaliser of 300-W.
EYE_OUTER_CORNERS: tuple[int, int] = (33, 263)
# Frontal pose: model (+Y up, +Z toward viewer) -> OpenCV camera (+Y down, +Z forward).
FRONTAL_AXIS_ANGLE = (math.pi, 0.0, 0.0)
_R0_DIAG = (1.0, -1.0, -1.0)  # rotation matrix of FRONTAL_AXIS_ANGLE (diagonal)

ProgressFn = Callable[[str, float], None]


class FaceModelLike(Protocol):
    """The part of :class:`engine.face.model.FaceModel` the fit uses."""

    neutral: np.ndarray
    id_basis: np.ndarray
    exp_basis: np.ndarray
    exp_range: np.ndarray
    triangles: np.ndarray
    landmark_tri: np.ndarray
    landmark_bary: np.ndarray
    landmark_weight: np.ndarray


@dataclass
class FitConfig:
    """Weights and schedule of the landmark fit. Weights are relative to a data term that is
    (weighted mean squared landmark error / noise_iod^2) per frame; see the module docstring."""

    # --- schedule -----------------------------------------------------------------------
    identity_frames: int = 200          # frames (spread evenly) for identity + focal
    identity_iterations: int = 12       # joint Gauss-Newton steps on that subset
    sweep_frames: int = 16              # frames for the focal sweep
    sweep_identity_components: int = 20  # leading identity components free during the sweep
    sweep_iterations: int = 4
    focal_fov_candidates_deg: tuple[float, ...] = (6.0, 9.0, 13.0, 18.0, 25.0, 34.0, 45.0, 60.0)
    frame_iterations: int = 6           # per-frame Gauss-Newton steps on all frames (max)
    smooth_iterations: int = 5          # Gauss-Newton steps with the temporal term (max)
    pcg_iterations: int = 30            # conjugate-gradient steps per smooth step (max)
    pcg_tolerance: float = 1e-4         # relative residual
    tolerance: float = 3e-4             # relative energy decrease per step counted as converged
    lm_damping: float = 1e-4            # initial Levenberg-Marquardt damping (x diag)
    # --- data term ----------------------------------------------------------------------
    robust_loss: str = "geman_mcclure"  # "geman_mcclure" | "huber" | "l2"
    robust_scale: float = 0.05          # sigma, in inter-ocular distances
    gnc_start: float = 4.0              # graduated non-convexity: first sigma multiplier (>=1)
    noise_iod: float = 0.02             # tau: expected landmark noise, in inter-ocular distances
    iris_weight: float = 1.0            # multiplies model.landmark_weight on the iris points
    contour_weight: float = 1.0         # ... and on the face-oval contour
    min_landmarks: int = 30             # a valid frame with fewer finite landmarks is skipped
    # --- priors and smoothness ----------------------------------------------------------
    identity_prior: float = 0.001       # lambda_id on (id / model.id_std)^2
    expression_prior: float = 0.02      # lambda_exp on (e / range width)^2
    focal_prior: float = 0.01           # lambda_f on (log f - log f0)^2
    # f0 puts the subject at this distance: f0 = median tracked IOD (px) * distance / model IOD
    # (cm). Framing-independent, unlike a field of view: a tight 256 px crop of a face has a
    # narrow effective field of view, a wide shot of the same camera a wide one. Focal length
    # and distance trade off almost freely in landmark data (perspective is weak at 1 m), so
    # this weak prior is what settles them when the data cannot.
    focal_prior_distance_cm: float = 100.0
    focal_prior_fov_deg: float = 20.0   # f0 when the model has no eye corners; OnlineFitter default
    focal_fov_bounds_deg: tuple[float, float] = (2.0, 120.0)
    rotation_smooth: float = 50.0       # lambda on second differences, per rad^2
    translation_smooth: float = 0.05    # per cm^2
    expression_smooth: float = 0.2      # per coefficient^2
    online_temporal: float = 1.0        # OnlineFitter: multiplier of the smoothness weights
    # --- misc ---------------------------------------------------------------------------
    invalid_frames: str = "interpolate"  # "interpolate" | "nan"
    device: str = "cpu"
    # torch intra-op threads during the fit (None: leave as set). One: the work is many small
    # batched ops, where extra threads mostly add synchronisation and, on a loaded machine,
    # slow the fit down several times; run parallel fits as separate processes instead.
    num_threads: int | None = 1
    chunk_frames: int = 64              # frames per Jacobian chunk (cache-sized: faster than big ones)

    def validate(self) -> None:
        if self.robust_loss not in ("geman_mcclure", "huber", "l2"):
            raise ConfigError(f"fit.robust_loss must be geman_mcclure, huber or l2, not {self.robust_loss!r}")
        if self.invalid_frames not in ("interpolate", "nan"):
            raise ConfigError(f"fit.invalid_frames must be interpolate or nan, not {self.invalid_frames!r}")
        positive = ("robust_scale", "noise_iod", "chunk_frames", "identity_frames", "sweep_frames")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"fit.{name} must be > 0, got {getattr(self, name)!r}")
        nonneg = ("identity_prior", "expression_prior", "focal_prior", "rotation_smooth",
                  "translation_smooth", "expression_smooth", "iris_weight", "contour_weight",
                  "identity_iterations", "frame_iterations", "smooth_iterations",
                  "sweep_iterations", "online_temporal", "lm_damping")
        for name in nonneg:
            if not getattr(self, name) >= 0:
                raise ConfigError(f"fit.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.gnc_start < 1:
            raise ConfigError(f"fit.gnc_start must be >= 1, got {self.gnc_start!r}")
        lo, hi = self.focal_fov_bounds_deg
        if not 0 < lo < hi < 180:
            raise ConfigError(f"fit.focal_fov_bounds_deg must satisfy 0 < lo < hi < 180, got {(lo, hi)!r}")
        if not self.focal_fov_candidates_deg or not all(lo <= c <= hi for c in self.focal_fov_candidates_deg):
            raise ConfigError("fit.focal_fov_candidates_deg must be non-empty and inside focal_fov_bounds_deg")
        if not self.focal_prior_distance_cm > 0:
            raise ConfigError(f"fit.focal_prior_distance_cm must be > 0, got {self.focal_prior_distance_cm!r}")
        if not 0 < self.focal_prior_fov_deg < 180:
            raise ConfigError(f"fit.focal_prior_fov_deg must be in (0, 180), got {self.focal_prior_fov_deg!r}")


@dataclass
class FitResult:
    """Fitted face-model parameters of a sequence (N frames, arrays are numpy float32).

    ``rotation`` is the camera-convention axis-angle (``x_cam = R x + t``); ``head_rotation``
    is the same pose relative to the frontal pose (``R = R_head @ R_frontal``), the one to
    smooth or interpolate. ``fitted`` is False for frames not fitted (invalid input), whose
    parameters are interpolated or NaN (``config.invalid_frames``) and errors NaN.
    ``landmarks_2d`` are the model's landmarks reprojected (NaN where the model has no
    embedded landmark). ``error_px`` / ``nme`` are the mean landmark distance over the fitted
    landmarks (weight > 0, finite), in pixels and in inter-ocular distances of the tracked
    landmarks (``iod``).
    """

    identity: np.ndarray            # (K_id,)
    expression: np.ndarray          # (N, K_exp)
    rotation: np.ndarray            # (N, 3)
    head_rotation: np.ndarray       # (N, 3)
    translation: np.ndarray         # (N, 3)
    focal: float
    principal_point: np.ndarray     # (2,)
    image_size: tuple[int, int]     # (W, H)
    landmarks_2d: np.ndarray        # (N, 478, 2)
    error_px: np.ndarray            # (N,)
    nme: np.ndarray                 # (N,)
    iod: np.ndarray                 # (N,)
    fitted: np.ndarray              # (N,) bool
    converged: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def rotation_matrices(self) -> np.ndarray:
        """(N, 3, 3) camera rotations."""
        return axis_angle_to_matrix(torch.from_numpy(np.ascontiguousarray(self.rotation))).numpy()

    def intrinsics(self) -> np.ndarray:
        """(3, 3) pinhole matrix K."""
        return np.array([[self.focal, 0.0, self.principal_point[0]],
                         [0.0, self.focal, self.principal_point[1]],
                         [0.0, 0.0, 1.0]], np.float32)

    def as_arrays(self) -> dict[str, np.ndarray]:
        """Flat name -> array mapping (for ``np.savez``); scalars become 0-d arrays."""
        out: dict[str, np.ndarray] = {}
        for key in ("identity", "expression", "rotation", "head_rotation", "translation",
                    "principal_point", "landmarks_2d", "error_px", "nme", "iod", "fitted"):
            out[key] = np.asarray(getattr(self, key))
        out["focal"] = np.asarray(self.focal, np.float32)
        out["image_size"] = np.asarray(self.image_size, np.int64)
        out["converged"] = np.asarray(self.converged)
        return out

    def summary(self) -> dict[str, float]:
        ok = self.fitted
        def stat(a: np.ndarray, fn: Callable[[np.ndarray], Any]) -> float:
            a = a[ok]
            return float(fn(a)) if a.size else float("nan")
        return {"frames": int(ok.size), "fitted": int(ok.sum()), "focal": float(self.focal),
                "nme_mean": stat(self.nme, np.mean), "nme_median": stat(self.nme, np.median),
                "nme_p95": stat(self.nme, lambda a: np.percentile(a, 95)),
                "error_px_mean": stat(self.error_px, np.mean), "converged": bool(self.converged)}


# --------------------------------------------------------------------------------------
# small geometry helpers


def _skew(v: torch.Tensor) -> torch.Tensor:
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(*v.shape[:-1], 3, 3)


def _right_jacobian(r: torch.Tensor) -> torch.Tensor:
    """Right Jacobian of SO(3): R(r + d) ~= R(r) Exp(J_r(r) d). (..., 3) -> (..., 3, 3)."""
    th2 = (r * r).sum(-1)[..., None, None]
    th = torch.sqrt(th2.clamp_min(1e-12))
    small = th2 < 1e-6
    a = torch.where(small, 0.5 - th2 / 24.0, (1 - torch.cos(th)) / th2.clamp_min(1e-12))
    b = torch.where(small, 1.0 / 6.0 - th2 / 120.0, (th - torch.sin(th)) / (th2 * th).clamp_min(1e-18))
    k = _skew(r)
    eye = torch.eye(3, dtype=r.dtype, device=r.device).expand_as(k)
    return eye - a * k + b * (k @ k)


def matrix_to_axis_angle(rot: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> axis-angle (..., 3), angle in [0, pi], stable at 0 and pi
    (through the quaternion, Shepperd's method: pick the best-conditioned component)."""
    m = rot
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    tr = m00 + m11 + m22
    cand = torch.stack([tr, m00, m11, m22], -1)
    choice = cand.argmax(-1)
    # four quaternion estimates (w, x, y, z), each exact when its pivot is large
    q0 = torch.stack([1 + tr, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0],
                      m[..., 1, 0] - m[..., 0, 1]], -1)
    q1 = torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m00 - m11 - m22, m[..., 0, 1] + m[..., 1, 0],
                      m[..., 0, 2] + m[..., 2, 0]], -1)
    q2 = torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m00 + m11 - m22,
                      m[..., 1, 2] + m[..., 2, 1]], -1)
    q3 = torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1],
                      1 - m00 - m11 + m22], -1)
    qs = torch.stack([q0, q1, q2, q3], -2)
    q = torch.gather(qs, -2, choice[..., None, None].expand(*choice.shape, 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    q = torch.where(q[..., :1] < 0, -q, q)  # w >= 0: angle in [0, pi]
    w, v = q[..., 0], q[..., 1:]
    sin_half = v.norm(dim=-1)
    angle = 2 * torch.atan2(sin_half, w)
    # angle / sin(angle/2) -> 2 as angle -> 0
    scale = torch.where(sin_half < 1e-7, 2.0 / w.clamp_min(1e-12), angle / sin_half.clamp_min(1e-12))
    return v * scale[..., None]


def _r0(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(_R0_DIAG, dtype=dtype, device=device)


def head_to_camera_rotation(head_rotation: torch.Tensor) -> torch.Tensor:
    """Head axis-angle (relative to frontal) -> camera axis-angle (R = R_head @ R_frontal)."""
    rot = axis_angle_to_matrix(head_rotation) * _r0(head_rotation.dtype, head_rotation.device)
    return matrix_to_axis_angle(rot)


def camera_to_head_rotation(rotation: torch.Tensor) -> torch.Tensor:
    """Camera axis-angle -> head axis-angle (R_head = R @ R_frontal^T)."""
    rot = axis_angle_to_matrix(rotation) * _r0(rotation.dtype, rotation.device)
    return matrix_to_axis_angle(rot)


def _interocular(obs: np.ndarray) -> np.ndarray:
    """Per-frame outer-eye-corner distance of (N, 478, >=2) pixel landmarks (NaN if missing).

    The same definition as ``engine.face.landmarks.interocular_distance`` (a test holds them
    equal); computed here so that fitting does not import mediapipe."""
    a, b = EYE_OUTER_CORNERS
    return np.linalg.norm(obs[:, a, :2] - obs[:, b, :2], axis=-1)


# --------------------------------------------------------------------------------------
# the landmark-restricted model


class LandmarkBasis:
    """The face model restricted to its embedded landmarks (fitting never needs the full mesh).

    Positions are pre-rotated by the frontal rotation, so ``x_cam = R_head @ y + t`` with
    ``y = mean + id @ id_basis + e @ exp_basis``. ``index`` lists the 478-landmark indices of
    the P embedded landmarks; ``weight`` their fitting weights (may be 0)."""

    def __init__(self, model: FaceModelLike, config: FitConfig, device: torch.device | str = "cpu"):
        tri = np.asarray(model.landmark_tri, np.int64).reshape(-1)
        if tri.shape[0] != LANDMARK_COUNT:
            raise ConfigError(f"face model embeds {tri.shape[0]} landmarks, expected {LANDMARK_COUNT}")
        emb = np.nonzero(tri >= 0)[0]
        if emb.size < 6:
            raise ConfigError("face model embeds fewer than 6 landmarks: cannot fit it")
        corners = np.asarray(model.triangles, np.int64)[tri[emb]]
        bary = np.asarray(model.landmark_bary, np.float64)[emb]

        def interp(arr: np.ndarray) -> np.ndarray:
            g = np.asarray(arr)[..., corners, :].astype(np.float64)
            return np.einsum("...pkc,pk->...pc", g, bary)

        flip = np.asarray(_R0_DIAG)
        mean = interp(model.neutral) * flip
        id_b = interp(model.id_basis) * flip
        exp_b = interp(model.exp_basis) * flip
        rng = np.asarray(model.exp_range, np.float64).reshape(-1, 2)
        width = rng[:, 1] - rng[:, 0]
        width = np.where(np.isfinite(width) & (width > 0), width, 1.0)
        id_std = np.asarray(getattr(model, "id_std", None) if getattr(model, "id_std", None) is not None
                            else np.ones(id_b.shape[0]), np.float64).reshape(-1)
        if id_std.shape[0] != id_b.shape[0] or not (np.isfinite(id_std) & (id_std > 0)).all():
            raise ConfigError("face model id_std must be positive, one per identity component")
        weight = np.asarray(model.landmark_weight, np.float64).reshape(-1)[emb].copy()
        weight[np.isin(emb, IRIS_INDICES)] *= config.iris_weight
        weight[np.isin(emb, FACE_OVAL_INDICES)] *= config.contour_weight
        weight = np.where(np.isfinite(weight) & (weight > 0), weight, 0.0)
        if not (weight > 0).sum() >= 6:
            raise ConfigError("fewer than 6 landmarks have a positive fitting weight")
        # Expression-rigid landmarks (forehead, nose bridge, eye corners) steer the closed-form
        # initial pose: how far each moves over the whole expression range.
        motion = np.sqrt(((exp_b * width[:, None, None]) ** 2).sum(-1).sum(0))
        cut = np.quantile(motion[weight > 0], 0.5)
        rigid = weight * np.where(motion <= cut, 1.0, 0.02)

        f32 = dict(dtype=torch.float32, device=device)
        self.index = emb
        self.n_id = id_b.shape[0]
        self.n_exp = exp_b.shape[0]
        self.mean = torch.as_tensor(mean, **f32)                       # (P, 3)
        self.id_basis = torch.as_tensor(id_b, **f32)                   # (K_id, P, 3)
        self.exp_basis = torch.as_tensor(exp_b, **f32)                 # (K_exp, P, 3)
        self.id_basis_p3k = self.id_basis.permute(1, 2, 0).contiguous()  # (P, 3, K_id)
        self.exp_basis_p3k = self.exp_basis.permute(1, 2, 0).contiguous()  # (P, 3, K_exp)
        self.exp_lo = torch.as_tensor(rng[:, 0], **f32)
        self.exp_hi = torch.as_tensor(rng[:, 1], **f32)
        self.exp_width = torch.as_tensor(width, **f32)
        self.id_prior_diag = torch.as_tensor(1.0 / id_std ** 2, **f32)  # identity prior N(0, id_std^2)
        self.weight = torch.as_tensor(weight, **f32)                   # (P,)
        self.rigid_weight = torch.as_tensor(rigid, **f32)              # (P,)
        self.device = torch.device(device)
        self._shape_cache: tuple | None = None  # (identity, shape): the identity is often fixed
        # inter-ocular distance of the mean face (cm), for the focal prior
        a, b = (np.nonzero(emb == i)[0] for i in EYE_OUTER_CORNERS)
        self.model_iod_cm = float(np.linalg.norm(mean[a[0]] - mean[b[0]])) if a.size and b.size else None

    @property
    def n_points(self) -> int:
        return int(self.mean.shape[0])

    def shape(self, identity: torch.Tensor) -> torch.Tensor:
        """Neutral-expression landmark positions (P, 3) of an identity."""
        cacheable = not identity.requires_grad
        if cacheable and self._shape_cache is not None and torch.equal(self._shape_cache[0], identity):
            return self._shape_cache[1]
        base = self.mean + (identity @ self.id_basis.reshape(self.n_id, self.n_points * 3)).reshape(self.n_points, 3)
        if cacheable:
            self._shape_cache = (identity.detach().clone(), base)
        return base

    def points(self, identity: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """(m, P, 3) landmark positions (frontal-rotated model space) for (m, K_exp) expressions."""
        base = self.shape(identity)
        flat = expression @ self.exp_basis.reshape(self.n_exp, self.n_points * 3)
        return base + flat.reshape(expression.shape[0], self.n_points, 3)


# --------------------------------------------------------------------------------------
# the solver


@dataclass
class _State:
    r: torch.Tensor      # (m, 3) head rotation axis-angle
    t: torch.Tensor      # (m, 3) translation
    e: torch.Tensor      # (m, K_exp)
    ident: torch.Tensor  # (K_id,)
    phi: torch.Tensor    # () log focal

    def clone(self) -> "_State":
        return _State(self.r.clone(), self.t.clone(), self.e.clone(), self.ident.clone(), self.phi.clone())

    @property
    def frame_params(self) -> torch.Tensor:
        return torch.cat([self.r, self.t, self.e], -1)

    def set_frame_params(self, theta: torch.Tensor) -> None:
        self.r, self.t, self.e = theta[:, :3], theta[:, 3:6], theta[:, 6:]


class _Solver:
    """Gauss-Newton machinery over m frames of observations."""

    def __init__(self, basis: LandmarkBasis, obs: torch.Tensor, finite: torch.Tensor, iod: torch.Tensor,
                 center: torch.Tensor, config: FitConfig):
        self.b = basis
        self.cfg = config
        self.obs = torch.where(finite[..., None], obs, torch.zeros_like(obs))   # (m, P, 2)
        w = basis.weight[None] * finite.to(obs.dtype)
        self.w_norm = w / w.sum(-1, keepdim=True).clamp_min(1e-12)           # (m, P), rows sum to 1
        self.fit_mask = w > 0
        self.iod = iod                                                       # (m,)
        self.center = center                                                 # (2,)
        self.m = obs.shape[0]
        self.tau2 = config.noise_iod ** 2
        dev = obs.device
        K = basis.n_exp
        self.exp_prior_diag = config.expression_prior / basis.exp_width ** 2  # (K,)
        self.D = 6 + K
        # frame-parameter bounds for the projected Newton step (only expressions are boxed)
        inf = torch.full((6,), float("inf"), device=dev)
        self.lo = torch.cat([-inf, basis.exp_lo])
        self.hi = torch.cat([inf, basis.exp_hi])
        # smoothness weights per frame parameter and the consecutive-triple mask
        self.smooth_w = torch.cat([torch.full((3,), config.rotation_smooth, device=dev),
                                   torch.full((3,), config.translation_smooth, device=dev),
                                   torch.full((K,), config.expression_smooth, device=dev)])
        self.triple = torch.zeros(self.m, dtype=torch.bool, device=dev)
        # optional per-frame anchor prior (online fitter): lambda * (theta - anchor)^2
        self.anchor: torch.Tensor | None = None
        self.anchor_w: torch.Tensor | None = None

    # ---- configuration of temporal structure --------------------------------------------
    def set_frame_numbers(self, idx: np.ndarray) -> None:
        """Frames i-1, i, i+1 form a smoothness triple only if their frame indices are adjacent."""
        tri = np.zeros(self.m, bool)
        if self.m >= 3:
            d = np.diff(idx)
            tri[1:-1] = (d[:-1] == 1) & (d[1:] == 1)
        self.triple = torch.as_tensor(tri, device=self.obs.device)

    # ---- robust loss ----------------------------------------------------------------------
    def _rho(self, s: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        kind = self.cfg.robust_loss
        if kind == "l2":
            return s, torch.ones_like(s)
        s2 = sigma * sigma
        if kind == "geman_mcclure":
            den = s + s2
            return s2 * s / den, (s2 / den) ** 2
        root = torch.sqrt(s.clamp_min(1e-20))
        inside = s <= s2
        return (torch.where(inside, s, 2 * sigma * root - s2),
                torch.where(inside, torch.ones_like(s), sigma / root))

    # ---- forward ---------------------------------------------------------------------------
    def project(self, st: _State, sl: slice | None = None) -> tuple[torch.Tensor, ...]:
        r, t, e = (st.r, st.t, st.e) if sl is None else (st.r[sl], st.t[sl], st.e[sl])
        y = self.b.points(st.ident, e)                                   # (m, P, 3)
        rot = axis_angle_to_matrix(r)                                    # (m, 3, 3)
        cam = y @ rot.transpose(1, 2) + t[:, None, :]
        z = cam[..., 2:3].clamp_min(1e-3)
        f = torch.exp(st.phi)
        proj = cam[..., :2] / z * f + self.center
        return proj, cam, y, rot

    def frame_energy(self, st: _State, sigma: float) -> torch.Tensor:
        """(m,) per-frame data + expression prior (+ anchor) energy."""
        out = []
        for sl in self._chunks():
            proj = self.project(st, sl)[0]
            out.append(self._data_energy(proj, sl, sigma)[0])
        e_data = torch.cat(out)
        return e_data + self._frame_prior(st)

    def _frame_prior(self, st: _State) -> torch.Tensor:
        prior = (st.e ** 2 * self.exp_prior_diag).sum(-1)
        if self.anchor is not None:
            prior = prior + ((st.frame_params - self.anchor) ** 2 * self.anchor_w).sum(-1)
        return prior

    def _data_energy(self, proj: torch.Tensor, sl: slice, sigma: float):
        d = proj - self.obs[sl]
        iod2 = self.iod[sl, None] ** 2
        s = (d * d).sum(-1) / iod2
        rho, drho = self._rho(s, sigma)
        wn = self.w_norm[sl]
        energy = (wn * rho).sum(-1) / self.tau2
        c = wn * drho / (self.tau2 * iod2)
        return energy, c, d

    def smooth_energy(self, theta: torch.Tensor) -> torch.Tensor:
        if self.m < 3 or not bool(self.triple.any()):
            return theta.new_zeros(())
        d2 = theta[:-2] - 2 * theta[1:-1] + theta[2:]
        return ((d2 ** 2) * self.smooth_w).sum(-1)[self.triple[1:-1]].sum()

    def _smooth_apply(self, x: torch.Tensor) -> torch.Tensor:
        """Lx where E_smooth = x^T L x (halved-gradient convention): D2^T diag(w) D2 x."""
        out = torch.zeros_like(x)
        if self.m < 3:
            return out
        d2 = (x[:-2] - 2 * x[1:-1] + x[2:]) * self.smooth_w * self.triple[1:-1, None]
        out[:-2] += d2
        out[1:-1] -= 2 * d2
        out[2:] += d2
        return out

    def _smooth_diag(self) -> torch.Tensor:
        tri = self.triple.to(torch.float32)
        diag = 4 * tri
        diag[:-1] += tri[1:]
        diag[1:] += tri[:-1]
        return diag[:, None] * self.smooth_w

    def _chunks(self) -> Iterator[slice]:
        step = max(1, int(self.cfg.chunk_frames))
        for a in range(0, self.m, step):
            yield slice(a, min(self.m, a + step))

    # ---- Jacobians and normal equations ---------------------------------------------------
    def _linearise(self, st: _State, sl: slice, sigma: float, n_shared_id: int, with_focal: bool):
        """Per-frame normal equations of the data term for frames ``sl``.

        Returns energy (m,), A (m,D,D), g (m,D) and, for shared parameters, B (m,D,Ds),
        Hs (Ds,Ds), gs (Ds,)."""
        proj, cam, y, rot = self.project(st, sl)
        energy, c, d = self._data_energy(proj, sl, sigma)
        m_, P = proj.shape[0], proj.shape[1]
        # IRLS weights are folded into the Jacobian rows: with sc = sqrt(c), A = J'^T J'.
        sc = torch.sqrt(c)                                             # (m, P)
        iz = 1.0 / cam[..., 2].clamp_min(1e-3)
        fz = torch.exp(st.phi) * iz * sc                               # (m, P)
        xy = cam[..., :2] * iz[..., None]                              # (m, P, 2) normalised coords
        # d(u,v)/d(cam) = fz [[1, 0, -x], [0, 1, -y]]; q = that @ R_head (d(u,v)/d(y))
        pm = torch.zeros(m_, P, 2, 3, dtype=proj.dtype, device=proj.device)
        pm[..., 0, 0] = fz
        pm[..., 1, 1] = fz
        pm[..., :, 2] = -xy * fz[..., None]
        q = fz[..., None, None] * (rot[:, None, :2, :] - xy[..., None] * rot[:, None, 2:3, :])
        # d(R(r) y)/dr = -R [y]x J_r(r): row-wise (q R... ) = -(q x y) J_r
        q0, q1, q2 = q.unbind(-1)
        y0, y1, y2 = (v[..., None] for v in y.unbind(-1))
        qxy = torch.stack([q1 * y2 - q2 * y1, q2 * y0 - q0 * y2, q0 * y1 - q1 * y0], -1)
        # The Jacobian is kept in two blocks (pose: 6 columns, expression: K) rather than
        # written into one (m, 2P, D) array: that copy alone cost as much as J^T J.
        jr = -(qxy.reshape(m_, P * 2, 3) @ _right_jacobian(st.r[sl]))   # (m, 2P, 3)
        jp = torch.cat([jr, pm.reshape(m_, P * 2, 3)], -1)             # (m, 2P, 6)
        je = torch.einsum("mpij,pjk->mpik", q, self.b.exp_basis_p3k).reshape(m_, P * 2, -1)
        rw = (d * sc[..., None]).reshape(m_, P * 2, 1)
        jpt, jet = jp.transpose(1, 2), je.transpose(1, 2)
        A = proj.new_empty(m_, self.D, self.D)
        A[:, :6, :6] = jpt @ jp
        A[:, :6, 6:] = jpt @ je
        A[:, 6:, :6] = A[:, :6, 6:].transpose(1, 2)
        A[:, 6:, 6:] = jet @ je
        rwt = rw.transpose(1, 2)
        g = torch.cat([rwt @ jp, rwt @ je], -1)[:, 0]

        def jt_mul(x: torch.Tensor) -> torch.Tensor:  # J^T x for x (m, 2P, c)
            return torch.cat([jpt @ x, jet @ x], 1)

        if n_shared_id == 0 and not with_focal:
            return energy, A, g, None, None, None
        # Shared columns. The identity rows of J are q_p @ Lid_p with Lid_p (3, K) the same in
        # every frame, so sum_t J_id^T J_id = sum_p Lid_p^T (sum_t q_tp^T q_tp) Lid_p: sum the
        # 3x3 blocks over frames first (much cheaper than the (2 m P, K) product).
        k = n_shared_id
        ds = k + int(with_focal)
        Hs = proj.new_zeros(ds, ds)
        gs = proj.new_zeros(ds)
        B = proj.new_zeros(m_, self.D, ds)
        rw_p = rw.reshape(m_, P, 2)
        if k:
            lid = self.b.id_basis_p3k[:, :, :k]                            # (P, 3, K)
            ji = torch.einsum("mpij,pjk->mpik", q, lid).reshape(m_, P * 2, k)
            B[..., :k] = jt_mul(ji)
            mbar = torch.einsum("mpia,mpib->pab", q, q)                   # (P, 3, 3)
            lid_flat = lid.reshape(P * 3, k)
            Hs[:k, :k] = lid_flat.T @ (mbar @ lid).reshape(P * 3, k)
            gs[:k] = lid_flat.T @ torch.einsum("mpia,mpi->pa", q, rw_p).reshape(P * 3)
        if with_focal:
            # "Dolly zoom" parametrisation: a focal change dphi also scales every frame's
            # translation by exp(dphi), which keeps the face's image size; the focal column is
            # then only the (weak) perspective change, not a large effect the per-frame depths
            # must cancel. Without it Gauss-Newton crawls along the focal/depth valley.
            t_cam = st.t[sl]
            jf = (proj - self.center) * sc[..., None] + (pm @ t_cam[:, None, :, None])[..., 0]
            jf_flat = jf.reshape(m_, P * 2, 1)
            B[..., -1:] = jt_mul(jf_flat)
            Hs[-1, -1] = (jf * jf).sum()
            gs[-1] = (jf * rw_p).sum()
            if k:
                v = torch.einsum("mpia,mpi->pa", q, jf).reshape(P * 3)
                Hs[:k, -1] = self.b.id_basis_p3k[:, :, :k].reshape(P * 3, k).T @ v
                Hs[-1, :k] = Hs[:k, -1]
        return energy, A, g, B, Hs, gs

    def _frame_system(self, st: _State, sigma: float, n_shared_id: int = 0, with_focal: bool = False):
        es, As, gs_, Bs = [], [], [], []
        Hs = gs = None
        for sl in self._chunks():
            e, A, g, B, H_s, g_s = self._linearise(st, sl, sigma, n_shared_id, with_focal)
            es.append(e)
            As.append(A)
            gs_.append(g)
            if B is not None:
                Bs.append(B)
                Hs = H_s if Hs is None else Hs + H_s
                gs = g_s if gs is None else gs + g_s
        energy = torch.cat(es) + self._frame_prior(st)
        A = torch.cat(As)
        g = torch.cat(gs_)
        # expression prior and anchor (diagonal)
        K = self.b.n_exp
        idx = torch.arange(6, 6 + K, device=A.device)
        A[:, idx, idx] += self.exp_prior_diag
        g[:, 6:] += st.e * self.exp_prior_diag
        if self.anchor is not None:
            diag = torch.arange(self.D, device=A.device)
            A[:, diag, diag] += self.anchor_w
            g += (st.frame_params - self.anchor) * self.anchor_w
        B = torch.cat(Bs) if Bs else None
        return energy, A, g, B, Hs, gs

    def _free_mask(self, theta: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Projected Newton: parameters at a bound with the descent direction pointing out are held."""
        eps = 1e-6
        at_lo = (theta <= self.lo + eps) & (g > 0)
        at_hi = (theta >= self.hi - eps) & (g < 0)
        return ~(at_lo | at_hi)

    @staticmethod
    def _mask_system(A: torch.Tensor, g: torch.Tensor, free: torch.Tensor):
        fm = free.to(A.dtype)
        A = A * fm[:, :, None] * fm[:, None, :]
        idx = torch.arange(A.shape[-1], device=A.device)
        A[:, idx, idx] += 1.0 - fm
        return A, g * fm

    @staticmethod
    def _damp(A: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        idx = torch.arange(A.shape[-1], device=A.device)
        diag = A[..., idx, idx]
        out = A.clone()
        out[..., idx, idx] = diag * (1 + mu[..., None]) + 1e-9 * diag.mean(-1, keepdim=True).clamp_min(1e-12)
        return out

    @staticmethod
    def _factor(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched Cholesky of SPD matrices after Jacobi scaling (unit diagonal), so float32
        is accurate enough; a matrix that still fails is factored in float64 with loading."""
        idx = torch.arange(A.shape[-1], device=A.device)
        scale = A[..., idx, idx].clamp_min(1e-30).rsqrt()                  # (m, D)
        As = A * scale[..., :, None] * scale[..., None, :]
        L, info = torch.linalg.cholesky_ex(As.float())
        bad = info > 0
        if bool(bad.any()):
            A64 = As[bad].double()
            A64[..., idx, idx] += 1e-6
            L = L.clone()
            L[bad] = torch.linalg.cholesky(A64).float()
        return L, scale

    @staticmethod
    def _solve_factored(fac: tuple[torch.Tensor, torch.Tensor], b: torch.Tensor) -> torch.Tensor:
        L, scale = fac
        y = torch.linalg.solve_triangular(L, (b * scale).float()[..., None], upper=False)
        x = torch.linalg.solve_triangular(L.transpose(-1, -2), y, upper=True)[..., 0]
        return x.to(b.dtype) * scale

    def _chol_solve(self, A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self._solve_factored(self._factor(A), b)

    def _spd_inverse(self, A: torch.Tensor) -> torch.Tensor:
        L, scale = self._factor(A)
        return torch.cholesky_inverse(L) * scale[..., :, None] * scale[..., None, :]

    def _clamp(self, theta: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(theta, self.hi), self.lo)

    def _box_qp(self, A: torch.Tensor, g: torch.Tensor, theta: torch.Tensor, iterations: int = 12) -> torch.Tensor:
        """Per-frame step s minimising g^T s + s^T A s / 2 subject to lo <= theta + s <= hi.

        Projected Newton for bound-constrained QPs (Bertsekas 1982), batched over frames:
        variables at a bound whose gradient points outward are held, a Newton step is taken
        in the others and projected back onto the box, with a backtracking choice of the
        step length on the quadratic model. A single clamped Newton step is not enough here:
        expression blendshapes are strongly correlated and many sit at 0, so clamping one
        coefficient invalidates the Newton step of its correlated partners."""
        lo, hi = self.lo - theta, self.hi - theta
        x = torch.zeros_like(g)
        todo = torch.arange(g.shape[0], device=g.device)
        alphas = torch.tensor([0.0, 1.0, 0.5, 0.25, 0.1], dtype=g.dtype, device=g.device)
        eps = 1e-7
        for _ in range(iterations):
            if todo.numel() == 0:
                break
            At, gt, lt, ht, xt = A[todo], g[todo], lo[todo], hi[todo], x[todo]

            grad = gt + (At @ xt[..., None])[..., 0]
            active = ((xt <= lt + eps) & (grad > 0)) | ((xt >= ht - eps) & (grad < 0))
            Af, gf = self._mask_system(At, grad, ~active)
            d = -self._chol_solve(Af, gf)
            # candidate step lengths 0, 1, 1/2, 1/4, 1/10 evaluated at once on the model
            cand = torch.maximum(torch.minimum(xt + alphas[:, None, None] * d, ht), lt)   # (5, n, D)
            qc = (gt * cand).sum(-1) + 0.5 * (cand * (At @ cand[..., None])[..., 0]).sum(-1)
            qc[1:] = torch.where(qc[1:] < qc[:1] - 1e-7 * qc[:1].abs(), qc[1:], qc[:1] + 1.0)
            pick = qc.argmin(0)
            best_x = cand.gather(0, pick[None, :, None].expand(1, *xt.shape))[0]
            moved = (best_x - xt).abs().amax(-1) > 1e-6 * (1 + xt.abs().amax(-1))
            x[todo] = best_x
            todo = todo[moved]
        return x

    # ---- solvers ---------------------------------------------------------------------------
    def solve_frames(self, st: _State, iterations: int, gnc: bool, history: list, stage: str) -> bool:
        """Independent per-frame Gauss-Newton / Levenberg-Marquardt (identity & focal fixed)."""
        mu = torch.full((self.m,), self.cfg.lm_damping, device=st.r.device)
        converged = False
        for it in range(iterations):
            sigma = self._sigma(it, gnc)
            energy, A, g, *_ = self._frame_system(st, sigma)
            theta = st.frame_params
            step = self._box_qp(self._damp(A, mu), g, theta)
            cand = st.clone()
            cand.set_frame_params(self._clamp(theta + step))
            new_energy = self.frame_energy(cand, sigma)
            better = new_energy <= energy
            st.set_frame_params(torch.where(better[:, None], cand.frame_params, theta))
            mu = torch.where(better, mu / 3, mu * 4).clamp(1e-7, 1e7)
            total_old, total_new = float(energy.sum()), float(torch.minimum(new_energy, energy).sum())
            history.append({"stage": stage, "iteration": it, "energy": total_new / max(self.m, 1)})
            if sigma == self.cfg.robust_scale and total_old - total_new <= self.cfg.tolerance * max(total_old, 1e-12):
                converged = True
                break
        return converged

    def solve_smooth(self, st: _State, iterations: int, history: list, stage: str) -> bool:
        """Gauss-Newton with the temporal term: PCG on the block-pentadiagonal normal equations.

        Bounds: the active set is taken from the per-frame box QP of the block-diagonal part
        (data, priors and the diagonal of the smoothness operator); those coefficients move
        to their bound, the coupled system is solved for the others, and the step is
        projected with backtracking on the true energy."""
        sigma = self.cfg.robust_scale
        mu = torch.tensor(self.cfg.lm_damping, device=st.r.device)
        converged = False
        idx = torch.arange(self.D, device=st.r.device)
        sdiag = self._smooth_diag()
        for it in range(iterations):
            energy, A, g, *_ = self._frame_system(st, sigma)
            theta = st.frame_params
            total = energy.sum() + self.smooth_energy(theta)
            g = g + self._smooth_apply(theta)
            accepted = False
            new_total = total
            for _retry in range(4):
                Ad = self._damp(A, mu.expand(self.m))
                P = Ad.clone()
                P[:, idx, idx] += sdiag * (1 + mu)
                s0 = self._box_qp(P, g, theta)
                moved = theta + s0
                free = (moved > self.lo + 1e-7) & (moved < self.hi - 1e-7)
                fm = free.to(A.dtype)
                s_act = s0 * (1 - fm)
                rhs = -(g + (Ad @ s_act[..., None])[..., 0] + self._smooth_apply(s_act) * (1 + mu)) * fm
                A_f, rhs = self._mask_system(Ad, rhs, free)
                P_f, _ = self._mask_system(P, rhs, free)
                step = self._pcg(A_f, fm, rhs, P_f, mu) * fm + s_act
                for alpha in (1.0, 0.5, 0.25):
                    cand = st.clone()
                    cand.set_frame_params(self._clamp(theta + alpha * step))
                    cand_total = self.frame_energy(cand, sigma).sum() + self.smooth_energy(cand.frame_params)
                    if cand_total <= total:
                        st.set_frame_params(cand.frame_params)
                        new_total = cand_total
                        accepted = True
                        break
                if accepted:
                    mu = (mu / 3).clamp_min(1e-7)
                    break
                mu = (mu * 4).clamp_max(1e7)
            t_old, t_new = float(total), float(new_total)
            history.append({"stage": stage, "iteration": it, "energy": t_new / max(self.m, 1)})
            if not accepted or t_old - t_new <= self.cfg.tolerance * max(t_old, 1e-12):
                converged = True
                break
        return converged

    def _pcg(self, A: torch.Tensor, fm: torch.Tensor, b: torch.Tensor, precond: torch.Tensor,
             mu: torch.Tensor) -> torch.Tensor:
        """Solve (A + mask(L(1+mu))) x = b by preconditioned CG; A is block-diagonal (m,D,D)."""
        # explicit block inverses: one factorisation, then a cheap batched mat-vec per step
        p_inv = self._spd_inverse(precond)

        def apply(x: torch.Tensor) -> torch.Tensor:
            return (A @ x[..., None])[..., 0] + self._smooth_apply(x * fm) * fm * (1 + mu)

        def prec(x: torch.Tensor) -> torch.Tensor:
            return (p_inv @ x[..., None])[..., 0]

        x = prec(b)
        r = b - apply(x)
        z = prec(r)
        p = z.clone()
        rz = (r * z).sum()
        b_norm = float(b.norm()) + 1e-30
        for _ in range(self.cfg.pcg_iterations):
            if float(r.norm()) <= self.cfg.pcg_tolerance * b_norm:
                break
            ap = apply(p)
            alpha = rz / (p * ap).sum().clamp_min(1e-30)
            x = x + alpha * p
            r = r - alpha * ap
            z = prec(r)
            rz_new = (r * z).sum()
            p = z + (rz_new / rz.clamp_min(1e-30)) * p
            rz = rz_new
        return x

    def solve_shared(self, st: _State, iterations: int, n_shared_id: int, with_focal: bool,
                     gnc: bool, history: list, stage: str, phi_bounds: tuple[float, float],
                     phi0: float) -> bool:
        """Joint Gauss-Newton over shared (identity, log focal) and per-frame parameters.

        The per-frame blocks are eliminated by a Schur complement: with per-frame systems
        [A_t B_t; B_t^T H_s], (H_s - sum B^T A^-1 B) ds = g_s - sum B^T A^-1 g_t."""
        if n_shared_id == 0 and not with_focal:
            return self.solve_frames(st, iterations, gnc, history, stage)
        cfg = self.cfg
        m = self.m
        mu = torch.tensor(cfg.lm_damping, device=st.r.device)
        converged = False

        def shared_prior(s: _State) -> torch.Tensor:
            val = m * cfg.identity_prior * (s.ident ** 2 * self.b.id_prior_diag).sum()
            if with_focal:
                val = val + m * cfg.focal_prior * (s.phi - phi0) ** 2
            return val

        for it in range(iterations):
            sigma = self._sigma(it, gnc)
            energy, A, g, B, Hs, gs = self._frame_system(st, sigma, n_shared_id, with_focal)
            total = energy.sum() + shared_prior(st)
            ds_n = n_shared_id + int(with_focal)
            # shared priors
            Hs = Hs.clone()
            gs = gs.clone()
            if n_shared_id:
                ii = torch.arange(n_shared_id, device=A.device)
                pd = self.b.id_prior_diag[:n_shared_id]
                Hs[ii, ii] += m * cfg.identity_prior * pd
                gs[:n_shared_id] += m * cfg.identity_prior * pd * st.ident[:n_shared_id]
            if with_focal:
                Hs[-1, -1] += m * cfg.focal_prior
                gs[-1] += m * cfg.focal_prior * (st.phi - phi0)
            theta = st.frame_params
            A_raw, g_raw, B_raw = A, g, B
            # the Schur complement uses the current active set (bound & gradient outward)
            free = self._free_mask(theta, g)
            A, g = self._mask_system(A, g, free)
            B = B * free.to(B.dtype)[..., None]
            accepted = False
            for _retry in range(4):
                Ad = self._damp(A, mu.expand(m)).double()
                Hd = self._damp(Hs[None], mu[None])[0].double()
                L = torch.linalg.cholesky_ex(Ad)[0]
                ainv_b = torch.cholesky_solve(B.double(), L)                 # (m, D, Ds)
                ainv_g = torch.cholesky_solve(g.double()[..., None], L)      # (m, D, 1)
                S = Hd - torch.einsum("mda,mdb->ab", B.double(), ainv_b)
                rhs = gs.double() - torch.einsum("mda,md->a", B.double(), ainv_g[..., 0])
                d_s = torch.linalg.solve(S + 1e-12 * torch.eye(ds_n, dtype=S.dtype, device=S.device), rhs)
                d_s = d_s.to(theta.dtype)
                # per-frame steps given the shared one, with the box constraints solved exactly
                g_f = g_raw - (B_raw @ d_s[:, None])[..., 0]
                step = self._box_qp(self._damp(A_raw, mu.expand(m)), g_f, theta)
                cand = st.clone()
                cand.set_frame_params(self._clamp(theta + step))
                if n_shared_id:
                    cand.ident = st.ident.clone()
                    cand.ident[:n_shared_id] -= d_s[:n_shared_id]
                if with_focal:
                    cand.phi = (st.phi - d_s[-1]).clamp(*phi_bounds)
                    cand.t = cand.t * torch.exp(cand.phi - st.phi)   # the dolly-zoom coupling
                new_total = self.frame_energy(cand, sigma).sum() + shared_prior(cand)
                if new_total <= total:
                    st.r, st.t, st.e, st.ident, st.phi = cand.r, cand.t, cand.e, cand.ident, cand.phi
                    mu = (mu / 3).clamp_min(1e-7)
                    accepted = True
                    break
                mu = (mu * 4).clamp_max(1e7)
            t_old, t_new = float(total), float(new_total if accepted else total)
            history.append({"stage": stage, "iteration": it, "energy": t_new / max(m, 1),
                            "focal": float(torch.exp(st.phi))})
            if sigma == cfg.robust_scale and (not accepted or t_old - t_new <= cfg.tolerance * max(t_old, 1e-12)):
                converged = True
                break
        return converged

    def _sigma(self, it: int, gnc: bool) -> float:
        if not gnc:
            return self.cfg.robust_scale
        return self.cfg.robust_scale * max(1.0, self.cfg.gnc_start / (2.0 ** it))

    # ---- closed-form initial pose -----------------------------------------------------------
    def init_pose(self, st: _State) -> None:
        """Scaled-orthographic pose per frame from the neutral landmarks (in place)."""
        y = self.b.shape(st.ident)                                             # (P, 3)
        w = self.b.rigid_weight[None] * self.fit_mask.to(y.dtype)             # (m, P)
        wsum = w.sum(-1, keepdim=True).clamp_min(1e-12)
        c = (w[..., None] * y).sum(1) / wsum                                  # (m, 3)
        xh = torch.cat([y[None] - c[:, None], torch.ones_like(w)[..., None]], -1)  # (m, P, 4)
        xw = xh * w[..., None]
        A = xw.transpose(1, 2) @ xh
        rhs = xw.transpose(1, 2) @ self.obs
        eye4 = torch.eye(4, dtype=torch.float64, device=A.device)
        sol = torch.linalg.solve(A.double() + 1e-9 * eye4, rhs.double()).to(y.dtype)   # (m, 4, 2)
        M = sol.transpose(1, 2)                                               # (m, 2, 4)
        lin, off = M[..., :3], M[..., 3]
        U, S, Vh = torch.linalg.svd(lin, full_matrices=False)
        rows = U @ Vh                                                         # (m, 2, 3)
        scale = S.mean(-1).clamp_min(1e-6)
        r3 = torch.linalg.cross(rows[:, 0], rows[:, 1], dim=-1)
        rot = torch.stack([rows[:, 0], rows[:, 1], r3], 1)
        f = torch.exp(st.phi)
        zc = f / scale
        xc = (off[:, 0] - self.center[0]) * zc / f
        yc = (off[:, 1] - self.center[1]) * zc / f
        st.t = torch.stack([xc, yc, zc], -1) - (rot @ c[..., None])[..., 0]
        st.r = matrix_to_axis_angle(rot)

    # ---- evaluation ---------------------------------------------------------------------------
    def errors(self, st: _State) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame mean landmark error (px) over the fitted landmarks, and reprojections."""
        projs, errs = [], []
        for sl in self._chunks():
            proj = self.project(st, sl)[0]
            dist = (proj - self.obs[sl]).norm(dim=-1)
            mask = self.fit_mask[sl].to(dist.dtype)
            errs.append((dist * mask).sum(-1) / mask.sum(-1).clamp_min(1))
            projs.append(proj)
        return torch.cat(errs), torch.cat(projs)


# --------------------------------------------------------------------------------------
# public API


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if not n or int(n) == old:
        yield
        return
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def focal_from_fov(fov_deg: float, image_size: tuple[int, int]) -> float:
    """Focal length (px) for a field of view across the larger image side."""
    return 0.5 * max(image_size) / math.tan(math.radians(fov_deg) / 2)


def _prepare(landmarks: np.ndarray, valid: np.ndarray, basis: LandmarkBasis, cfg: FitConfig):
    lm = np.asarray(landmarks, np.float64)
    if lm.ndim != 3 or lm.shape[1] != LANDMARK_COUNT or lm.shape[2] < 2:
        raise ConfigError(f"landmarks must be (N, {LANDMARK_COUNT}, 2|3), got {lm.shape}")
    n = lm.shape[0]
    valid = np.asarray(valid, bool).reshape(-1)
    if valid.shape[0] != n:
        raise ConfigError(f"valid has {valid.shape[0]} entries for {n} frames")
    obs = lm[:, basis.index, :2]
    finite = np.isfinite(obs).all(-1)
    used = finite & (basis.weight.cpu().numpy() > 0)[None]
    iod = _interocular(lm)
    good_iod = np.isfinite(iod) & (iod > 1e-3)
    fallback = np.median(iod[valid & good_iod]) if (valid & good_iod).any() else np.nan
    iod = np.where(good_iod, iod, fallback)
    ok = valid & (used.sum(-1) >= cfg.min_landmarks) & np.isfinite(iod) & (iod > 1e-3)
    return obs, finite, iod, ok


def _even_subset(n: int, k: int) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))


def _fill_invalid(values: np.ndarray, fitted: np.ndarray, mode: str) -> np.ndarray:
    """Linear interpolation over unfitted frames (held at the ends), or NaN."""
    out = values.astype(np.float32, copy=True)
    bad = ~fitted
    if not bad.any():
        return out
    if mode == "nan" or not fitted.any():
        out[bad] = np.nan
        return out
    x = np.nonzero(fitted)[0]
    q = np.nonzero(bad)[0]
    flat = out.reshape(out.shape[0], -1)
    for j in range(flat.shape[1]):
        flat[q, j] = np.interp(q, x, flat[x, j])
    return flat.reshape(out.shape)


def project_landmarks(model: FaceModelLike, identity: np.ndarray, expression: np.ndarray,
                      rotation: np.ndarray, translation: np.ndarray, focal: float,
                      principal_point: np.ndarray | tuple[float, float]) -> np.ndarray:
    """Model landmarks in pixels, (N, 478, 2), NaN where the model embeds none.

    The forward model of the fit (camera-convention ``rotation``); used to synthesise test
    landmarks and to draw fits."""
    basis = LandmarkBasis(model, FitConfig(), "cpu")
    ident = torch.as_tensor(np.asarray(identity), dtype=torch.float32)
    exp = torch.as_tensor(np.atleast_2d(np.asarray(expression)), dtype=torch.float32)
    head = camera_to_head_rotation(torch.as_tensor(np.atleast_2d(np.asarray(rotation)), dtype=torch.float32))
    trans = torch.as_tensor(np.atleast_2d(np.asarray(translation)), dtype=torch.float32)
    y = basis.points(ident, exp)
    cam = y @ axis_angle_to_matrix(head).transpose(1, 2) + trans[:, None]
    pp = torch.as_tensor(np.asarray(principal_point, np.float32))
    proj = cam[..., :2] / cam[..., 2:3] * float(focal) + pp
    out = np.full((exp.shape[0], LANDMARK_COUNT, 2), np.nan, np.float32)
    out[:, basis.index] = proj.numpy()
    return out


def fit_sequence(model: FaceModelLike, landmarks: np.ndarray, valid: np.ndarray,
                 image_size: tuple[int, int], config: FitConfig | None = None, *,
                 identity: np.ndarray | None = None, focal: float | None = None,
                 principal_point: tuple[float, float] | None = None,
                 progress: ProgressFn | None = None) -> FitResult:
    """Fit identity (unless given), focal (unless given), and per-frame expression and pose.

    landmarks: (N, 478, 2|3) pixel (u, v) [+ relative depth, unused] of the tracked face;
    NaN rows are allowed. valid: (N,) bool, False for frames without a (usable) face.
    image_size: (W, H) of the image the landmarks are in. ``identity`` reuses an actor's
    identity fitted before (fit identity once per actor, then reuse it for every sequence).
    Raises MediaError when no frame is usable and the identity or focal must be estimated.
    """
    cfg = config or FitConfig()
    cfg.validate()
    progress = progress or (lambda stage, frac: None)
    timings: dict[str, float] = {}
    history: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    W, H = int(image_size[0]), int(image_size[1])
    if W <= 0 or H <= 0:
        raise ConfigError(f"image_size must be positive (W, H), got {image_size!r}")
    if focal is not None and not (math.isfinite(float(focal)) and float(focal) > 0):
        raise ConfigError(f"focal must be a positive number of pixels, got {focal!r}")
    device = torch.device(cfg.device)
    with _torch_threads(cfg.num_threads), torch.inference_mode():
        basis = LandmarkBasis(model, cfg, device)
        obs_np, finite_np, iod_np, ok = _prepare(landmarks, valid, basis, cfg)
        n = obs_np.shape[0]
        pp = np.asarray(principal_point if principal_point is not None else (W / 2.0, H / 2.0), np.float32)
        center = torch.as_tensor(pp, device=device)
        fitted_idx = np.nonzero(ok)[0]
        phi_lo = math.log(focal_from_fov(cfg.focal_fov_bounds_deg[1], (W, H)))
        phi_hi = math.log(focal_from_fov(cfg.focal_fov_bounds_deg[0], (W, H)))
        phi0 = math.log(focal_from_fov(cfg.focal_prior_fov_deg, (W, H)))
        if basis.model_iod_cm and ok.any():
            f0 = float(np.median(iod_np[ok])) * cfg.focal_prior_distance_cm / basis.model_iod_cm
            phi0 = min(max(math.log(f0), phi_lo), phi_hi)
        if identity is not None:
            ident = torch.as_tensor(np.asarray(identity, np.float32).reshape(-1), device=device)
            if ident.shape[0] != basis.n_id:
                raise ConfigError(f"identity has {ident.shape[0]} coefficients, model has {basis.n_id}")
        else:
            ident = torch.zeros(basis.n_id, device=device)
        if fitted_idx.size == 0:
            if identity is None or focal is None:
                raise MediaError("no frame with a usable tracked face: cannot fit the face model")
            return _empty_result(basis, n, ident, float(focal), pp, (W, H), iod_np, timings)

        def solver_for(sel: np.ndarray) -> _Solver:
            return _Solver(basis, torch.as_tensor(obs_np[sel], dtype=torch.float32, device=device),
                           torch.as_tensor(finite_np[sel], device=device),
                           torch.as_tensor(iod_np[sel], dtype=torch.float32, device=device), center, cfg)

        def new_state(m: int, phi: float, ident_: torch.Tensor) -> _State:
            z3 = torch.zeros(m, 3, device=device)
            return _State(z3.clone(), z3.clone(), torch.zeros(m, basis.n_exp, device=device).clamp(
                basis.exp_lo, basis.exp_hi), ident_.clone(), torch.tensor(phi, device=device))

        converged = True
        # ---- stage 2: focal sweep, then identity + focal jointly on a subset ----------------
        phi = math.log(float(focal)) if focal is not None else phi0
        fit_identity = identity is None
        if fit_identity or focal is None:
            t0 = time.perf_counter()
            subset = fitted_idx[_even_subset(fitted_idx.size, cfg.identity_frames)]
            if focal is None:
                sweep = subset[_even_subset(subset.size, cfg.sweep_frames)]
                sv = solver_for(sweep)
                k_sweep = min(basis.n_id, cfg.sweep_identity_components) if fit_identity else 0
                scores, idents = [], []
                for j, fov in enumerate(cfg.focal_fov_candidates_deg):
                    cand_phi = math.log(focal_from_fov(fov, (W, H)))
                    st = new_state(sweep.size, cand_phi, ident)
                    sv.init_pose(st)
                    sv.solve_shared(st, cfg.sweep_iterations, k_sweep, False, True, [], "sweep",
                                    (phi_lo, phi_hi), phi0)
                    e = sv.frame_energy(st, cfg.robust_scale).sum() + sweep.size * (
                        cfg.identity_prior * (st.ident ** 2 * basis.id_prior_diag).sum()
                        + cfg.focal_prior * (cand_phi - phi0) ** 2)
                    scores.append(float(e) / sweep.size)
                    idents.append(st.ident.clone())
                    progress("focal_sweep", (j + 1) / len(cfg.focal_fov_candidates_deg))
                best = int(np.argmin(scores))
                phi = math.log(focal_from_fov(cfg.focal_fov_candidates_deg[best], (W, H)))
                ident = idents[best]  # seeds the identity stage (leading components)
                history.append({"stage": "focal_sweep", "fov_deg": list(cfg.focal_fov_candidates_deg),
                                "energy": scores, "best_fov_deg": cfg.focal_fov_candidates_deg[best]})
                timings["focal_sweep_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            sv = solver_for(subset)
            st = new_state(subset.size, phi, ident)
            sv.init_pose(st)
            ok_b = sv.solve_shared(st, cfg.identity_iterations, basis.n_id if fit_identity else 0,
                                   focal is None, True, history, "identity", (phi_lo, phi_hi), phi0)
            converged &= ok_b
            ident = st.ident.clone()
            phi = float(st.phi)
            progress("identity", 1.0)
            timings["identity_s"] = time.perf_counter() - t1
        # ---- stage 3: all frames, identity and focal fixed ---------------------------------
        t2 = time.perf_counter()
        sv = solver_for(fitted_idx)
        sv.set_frame_numbers(fitted_idx)
        st = new_state(fitted_idx.size, phi, ident)
        sv.init_pose(st)
        ok_c = sv.solve_frames(st, cfg.frame_iterations, True, history, "frames")
        progress("frames", 0.5)
        smooth_on = (cfg.rotation_smooth > 0 or cfg.translation_smooth > 0 or cfg.expression_smooth > 0)
        if smooth_on and cfg.smooth_iterations > 0 and bool(sv.triple.any()):
            ok_c = sv.solve_smooth(st, cfg.smooth_iterations, history, "smooth")
        converged &= ok_c
        progress("frames", 1.0)
        timings["frames_s"] = time.perf_counter() - t2
        err_px, proj = sv.errors(st)
        result = _assemble(basis, n, fitted_idx, st, err_px, proj, pp, (W, H), iod_np, cfg)
    result.converged = bool(converged)
    result.history = history
    timings["total_s"] = time.perf_counter() - t_start
    timings["per_frame_ms"] = 1000 * timings["total_s"] / max(n, 1)
    result.timings = timings
    return result


def _empty_result(basis: LandmarkBasis, n: int, ident: torch.Tensor, focal: float, pp: np.ndarray,
                  size: tuple[int, int], iod: np.ndarray, timings: dict) -> FitResult:
    nan3 = np.full((n, 3), np.nan, np.float32)
    return FitResult(identity=ident.cpu().numpy().astype(np.float32),
                     expression=np.full((n, basis.n_exp), np.nan, np.float32), rotation=nan3.copy(),
                     head_rotation=nan3.copy(), translation=nan3.copy(), focal=float(focal),
                     principal_point=pp, image_size=size,
                     landmarks_2d=np.full((n, LANDMARK_COUNT, 2), np.nan, np.float32),
                     error_px=np.full(n, np.nan, np.float32), nme=np.full(n, np.nan, np.float32),
                     iod=iod.astype(np.float32), fitted=np.zeros(n, bool), converged=False, timings=timings)


def _assemble(basis: LandmarkBasis, n: int, fitted_idx: np.ndarray, st: _State, err_px: torch.Tensor,
              proj: torch.Tensor, pp: np.ndarray, size: tuple[int, int], iod: np.ndarray,
              cfg: FitConfig) -> FitResult:
    fitted = np.zeros(n, bool)
    fitted[fitted_idx] = True

    def full(x: torch.Tensor, fill: float = np.nan) -> np.ndarray:
        a = np.full((n, *x.shape[1:]), fill, np.float32)
        a[fitted_idx] = x.cpu().numpy()
        return a

    head = _fill_invalid(full(st.r), fitted, cfg.invalid_frames)
    trans = _fill_invalid(full(st.t), fitted, cfg.invalid_frames)
    expr = _fill_invalid(full(st.e), fitted, cfg.invalid_frames)
    rot = head_to_camera_rotation(torch.from_numpy(head)).numpy()
    focal = float(torch.exp(st.phi))
    lm2d = np.full((n, LANDMARK_COUNT, 2), np.nan, np.float32)
    lm2d[fitted_idx[:, None], basis.index[None]] = proj.cpu().numpy()
    missing = ~fitted & np.isfinite(expr).all(-1)
    if missing.any():
        # reproject interpolated frames too, so overlays and crops have something to follow
        ident = st.ident.cpu().numpy()
        y = basis.points(torch.from_numpy(ident), torch.from_numpy(expr[missing]))
        cam = y @ axis_angle_to_matrix(torch.from_numpy(head[missing])).transpose(1, 2) + torch.from_numpy(
            trans[missing])[:, None]
        p = cam[..., :2] / cam[..., 2:3].clamp_min(1e-3) * focal + torch.from_numpy(pp)
        lm2d[np.nonzero(missing)[0][:, None], basis.index[None]] = p.numpy()
    err = full(err_px)
    iod32 = iod.astype(np.float32)
    nme = np.where(fitted, err / np.where(fitted, iod32, 1.0), np.nan).astype(np.float32)
    return FitResult(identity=st.ident.cpu().numpy().astype(np.float32), expression=expr, rotation=rot,
                     head_rotation=head, translation=trans, focal=focal, principal_point=pp.astype(np.float32),
                     image_size=size, landmarks_2d=lm2d, error_px=err, nme=nme, iod=iod32, fitted=fitted,
                     converged=True)


# --------------------------------------------------------------------------------------
# online (frame by frame) fitting


@dataclass
class FrameFit:
    """One frame of :class:`OnlineFitter` output (arrays float32; NaN when not fitted)."""

    expression: np.ndarray     # (K_exp,)
    rotation: np.ndarray       # (3,) camera axis-angle
    head_rotation: np.ndarray  # (3,)
    translation: np.ndarray    # (3,)
    landmarks_2d: np.ndarray   # (478, 2)
    error_px: float
    nme: float
    iod: float
    fitted: bool


class OnlineFitter:
    """Frame-by-frame fit (identity and focal fixed): for live preview or streaming.

    Each frame warm-starts from the previous one and runs ``online_iterations`` Gauss-Newton
    steps; the temporal term is the causal half of the batch objective's: a prior pulling
    the frame towards the constant-velocity prediction ``2 x_{t-1} - x_{t-2}`` with the
    smoothness weights (times ``online_temporal``). No lookahead, so no added latency.
    An unusable frame returns ``fitted=False`` with NaNs and breaks the temporal chain.
    Pass the actor's ``identity`` and ``focal`` from :func:`fit_sequence` (defaults: mean
    identity, the focal of ``config.focal_prior_fov_deg``).
    """

    def __init__(self, model: FaceModelLike, image_size: tuple[int, int], *,
                 identity: np.ndarray | None = None, focal: float | None = None,
                 config: FitConfig | None = None, principal_point: tuple[float, float] | None = None,
                 online_iterations: int = 3):
        self.cfg = config or FitConfig()
        self.cfg.validate()
        W, H = int(image_size[0]), int(image_size[1])
        self.image_size = (W, H)
        self.device = torch.device(self.cfg.device)
        self.basis = LandmarkBasis(model, self.cfg, self.device)
        self.pp = np.asarray(principal_point if principal_point is not None else (W / 2.0, H / 2.0), np.float32)
        self.center = torch.as_tensor(self.pp, device=self.device)
        ident = np.zeros(self.basis.n_id, np.float32) if identity is None else np.asarray(identity, np.float32)
        if ident.reshape(-1).shape[0] != self.basis.n_id:
            raise ConfigError(f"identity has {ident.size} coefficients, model has {self.basis.n_id}")
        self.ident = torch.as_tensor(ident.reshape(-1), device=self.device)
        self.focal = float(focal) if focal is not None else focal_from_fov(self.cfg.focal_prior_fov_deg, (W, H))
        self.phi = torch.tensor(math.log(self.focal), device=self.device)
        self.iterations = int(online_iterations)
        self._history: list[torch.Tensor] = []  # fitted parameter vectors of the last 2 frames
        self._last_iod: float | None = None

    def reset(self) -> None:
        """Forget the temporal state (call at a cut)."""
        self._history.clear()

    def step(self, landmarks: np.ndarray, valid: bool = True) -> FrameFit:
        """Fit one frame's (478, 2|3) pixel landmarks."""
        cfg = self.cfg
        with _torch_threads(cfg.num_threads), torch.inference_mode():
            obs_np, finite_np, iod_np, ok = _prepare(np.asarray(landmarks)[None], np.array([bool(valid)]),
                                                     self.basis, cfg)
            if not ok[0] and self._last_iod is not None and bool(valid):
                # eye corners missing but enough other points: reuse the last scale
                iod_np = np.array([self._last_iod])
                used = finite_np & (self.basis.weight.cpu().numpy() > 0)[None]
                ok = np.array([used.sum() >= cfg.min_landmarks])
            if not ok[0]:
                self._history.clear()
                return self._nan_frame(float(iod_np[0]))
            self._last_iod = float(iod_np[0])
            sv = _Solver(self.basis, torch.as_tensor(obs_np, dtype=torch.float32, device=self.device),
                         torch.as_tensor(finite_np, device=self.device),
                         torch.as_tensor(iod_np, dtype=torch.float32, device=self.device), self.center, cfg)
            st = _State(torch.zeros(1, 3, device=self.device), torch.zeros(1, 3, device=self.device),
                        torch.zeros(1, self.basis.n_exp, device=self.device).clamp(self.basis.exp_lo, self.basis.exp_hi),
                        self.ident, self.phi)
            warm = bool(self._history)
            if warm:
                st.set_frame_params(self._history[-1][None].clone())
                pred = (2 * self._history[-1] - self._history[-2]) if len(self._history) == 2 else self._history[-1]
                sv.anchor = sv._clamp(pred[None])
                sv.anchor_w = sv.smooth_w * cfg.online_temporal
            else:
                sv.init_pose(st)
            iters = self.iterations if warm else max(self.iterations, cfg.frame_iterations)
            sv.solve_frames(st, iters, not warm, [], "online")
            theta = st.frame_params[0].clone()
            self._history = (self._history + [theta])[-2:]
            err, proj = sv.errors(st)
            lm = np.full((LANDMARK_COUNT, 2), np.nan, np.float32)
            lm[self.basis.index] = proj[0].cpu().numpy()
            head = st.r.cpu()
            return FrameFit(expression=st.e[0].cpu().numpy().astype(np.float32),
                            rotation=head_to_camera_rotation(head)[0].numpy().astype(np.float32),
                            head_rotation=head[0].numpy().astype(np.float32),
                            translation=st.t[0].cpu().numpy().astype(np.float32), landmarks_2d=lm,
                            error_px=float(err[0]), nme=float(err[0]) / float(iod_np[0]),
                            iod=float(iod_np[0]), fitted=True)

    def _nan_frame(self, iod: float) -> FrameFit:
        nan3 = np.full(3, np.nan, np.float32)
        return FrameFit(np.full(self.basis.n_exp, np.nan, np.float32), nan3.copy(), nan3.copy(), nan3.copy(),
                        np.full((LANDMARK_COUNT, 2), np.nan, np.float32), float("nan"), float("nan"),
                        iod, False)


def fit_frames_online(model: FaceModelLike, landmarks: np.ndarray, valid: np.ndarray,
                      image_size: tuple[int, int], config: FitConfig | None = None, *,
                      identity: np.ndarray | None = None, focal: float | None = None,
                      principal_point: tuple[float, float] | None = None,
                      online_iterations: int = 3) -> FitResult:
    """Run :class:`OnlineFitter` over a sequence and collect a :class:`FitResult`
    (unfitted frames are filled as ``config.invalid_frames`` says)."""
    cfg = config or FitConfig()
    t0 = time.perf_counter()
    fitter = OnlineFitter(model, image_size, identity=identity, focal=focal, config=cfg,
                          principal_point=principal_point, online_iterations=online_iterations)
    lm = np.asarray(landmarks)
    valid = np.asarray(valid, bool).reshape(-1)
    if lm.ndim != 3 or valid.shape[0] != lm.shape[0]:
        raise ConfigError(f"landmarks (N, 478, 2|3) and valid (N,) disagree: {lm.shape} vs {valid.shape}")
    frames = [fitter.step(lm[i], bool(valid[i])) for i in range(lm.shape[0])]
    n = len(frames)
    fitted = np.array([f.fitted for f in frames], bool)

    def stack(name: str) -> np.ndarray:
        return np.stack([getattr(f, name) for f in frames]) if frames else np.zeros((0,), np.float32)

    head = _fill_invalid(stack("head_rotation"), fitted, cfg.invalid_frames)
    expr = _fill_invalid(stack("expression"), fitted, cfg.invalid_frames)
    trans = _fill_invalid(stack("translation"), fitted, cfg.invalid_frames)
    rot = head_to_camera_rotation(torch.from_numpy(head)).numpy() if n else head
    total = time.perf_counter() - t0
    return FitResult(identity=fitter.ident.cpu().numpy().astype(np.float32), expression=expr, rotation=rot,
                     head_rotation=head, translation=trans, focal=fitter.focal, principal_point=fitter.pp,
                     image_size=fitter.image_size, landmarks_2d=stack("landmarks_2d"),
                     error_px=stack("error_px").astype(np.float32), nme=stack("nme").astype(np.float32),
                     iod=stack("iod").astype(np.float32), fitted=fitted, converged=True,
                     timings={"total_s": total, "per_frame_ms": 1000 * total / max(n, 1)})


# --------------------------------------------------------------------------------------
# post-processing: output smoothing of the fitted parameter tracks


def postprocess(result: FitResult, model: FaceModelLike, smoothing: Any, fps: float,
                landmarks: np.ndarray | None = None) -> FitResult:
    """Temporal filtering of the fitted tracks with :mod:`engine.face.smoothing`.

    ``smoothing`` is one ``SmoothingConfig`` for every track or a mapping with keys
    ``expression``, ``rotation`` (applied to ``head_rotation``), ``translation``; a missing
    key or ``None`` leaves that track as it is. Filters restart after unfitted frames (they
    run on ``result.fitted`` runs only). Expressions are clamped back into the model's range;
    camera rotations and reprojected landmarks are recomputed, and with the tracked
    ``landmarks`` (N, 478, 2|3) the error figures too. Returns a new result.
    """
    from dataclasses import replace

    from engine.face.smoothing import SmoothingConfig, smooth

    if smoothing is None or isinstance(smoothing, SmoothingConfig):
        per = {"expression": smoothing, "rotation": smoothing, "translation": smoothing}
    else:
        unknown = set(smoothing) - {"expression", "rotation", "translation"}
        if unknown:
            raise ConfigError(f"postprocess: unknown smoothing tracks {sorted(unknown)}")
        per = {k: smoothing.get(k) for k in ("expression", "rotation", "translation")}
    valid = np.asarray(result.fitted, bool)

    def run(x: np.ndarray, cfg: Any) -> np.ndarray:
        if cfg is None:
            return x
        return smooth(x, cfg, fps, valid).astype(np.float32)

    basis = LandmarkBasis(model, FitConfig(), "cpu")
    expr = run(result.expression, per["expression"])
    expr = np.clip(expr, basis.exp_lo.numpy(), basis.exp_hi.numpy())
    head = run(result.head_rotation, per["rotation"])
    trans = run(result.translation, per["translation"])
    rot = head_to_camera_rotation(torch.from_numpy(np.ascontiguousarray(head))).numpy()
    lm2d = project_landmarks(model, result.identity, expr, rot, trans, result.focal, result.principal_point)
    out = replace(result, expression=expr, head_rotation=head, translation=trans, rotation=rot, landmarks_2d=lm2d)
    if landmarks is not None:
        obs = np.asarray(landmarks, np.float64)[..., :2]
        mask = np.zeros(LANDMARK_COUNT, bool)
        mask[basis.index[basis.weight.numpy() > 0]] = True
        dist = np.linalg.norm(lm2d[:, mask] - obs[:, mask], axis=-1)
        good = np.isfinite(dist)
        count = good.sum(-1)
        err = np.where(good, dist, 0.0).sum(-1) / np.maximum(count, 1)
        err = np.where(valid & (count > 0), err, np.nan).astype(np.float32)
        out = replace(out, error_px=err, nme=(err / result.iod).astype(np.float32))
    return out
