"""Stage 2: scalable training with the morphable prior (renders of parameters the plate never shows).

A plate covers a small part of expression and pose space; a driving performance goes
outside it, and a network trained only to reconstruct the plate renders such frames badly
(it never saw the conditioning). Stage 2 adds *auxiliary* face-model parameters for the
actor's identity -- expressions sampled from the face model's expression space and from
other tracked sequences, and perturbed head poses -- rasterised into conditioning maps with
no ground-truth image, and trains the generator on them with losses that need none, while
reconstruction continues on plate frames in the same steps. This is the "morphable prior"
idea of scaling a personalised renderer with synthetic parameters (as in Deep Video
Portraits' / HeadGAN's use of 3DMM parameters as the interface, and the self-supervised
"cycle"/landmark and adversarial terms of Zakharov et al. 2019 and Doukas et al. 2021).

Auxiliary parameters (:class:`ParamAuxSource`):

* expression: a Gaussian mixture fitted (k-means + per-cluster full covariance, shrunk
  towards its diagonal: Ledoit & Wolf 2004) to the tracked coefficients of the plate and of
  other sequences in the same expression basis (driving videos' tracking files, or drive
  files already transferred to the actor); rows of those sequences directly; and a broad
  diagonal Gaussian with the pooled per-coefficient variances (for the built-in model its
  PCA space with the learned variances; ICT blendshapes are identity-independent, so other
  people's coefficients are this actor's expressions too); clipped to the model's range.
  Offline mode (test-time adaptation) adds the shot's own driving parameters.
* head pose: the pose of a random plate frame composed with a random yaw/pitch/roll
  (model axes, about the head's origin), and that frame's crop affine shifted so the face's
  landmark centroid stays where it was in the crop.
* context: that plate frame's crop (shifted the same way); the context hole is the union of
  the new face and the plate's own face (dilated), so the old performance cannot leak.

Rendering is batched and cached: a pool of ``pool_size`` samples is rendered once per
``pool_refresh`` steps (quantised in memory like the frame cache) and every step draws
``aux_per_step`` of them. Pool ``e`` and the draw of step ``s`` are pure functions of
(seed, e) / (seed, s), so a resumed run sees exactly the samples of an uninterrupted one.

Losses on the auxiliary renders (weights in :class:`Stage2Config`):

* ``landmark`` -- geometric consistency (Zakharov et al. 2019; HeadGAN, Doukas et al. 2021):
  a differentiable landmark head (:mod:`engine.neural.landmark_head`), co-trained on plate
  crops against the tracked model's projected landmarks, must find the *conditioning's*
  projected landmarks on the render.
* ``adversarial`` -- conditional PatchGAN (Isola et al. 2017; :mod:`engine.neural.discriminator`),
  hinge loss: real = plate crops with their conditioning, fake = auxiliary renders (and
  reconstructions), so renders of unseen parameters must look like the plate.
* ``identity`` -- texture/identity consistency: per-channel mean and standard deviation of
  VGG features (the ST-LPIPS trunk, :mod:`engine.neural.perceptual`) inside the face mask
  of the auxiliary renders must match those of the plate frames of the same step (feature
  statistics as a texture descriptor: Gatys et al. 2016; Huang & Belongie 2017 "AdaIN"), so
  a render of a new expression keeps the actor's skin and colour. Without the VGG weights
  the statistics fall back to colour and colour-gradient moments.
* ``mouth`` -- mouth consistency: the render's dark mouth-interior evidence (luminance below
  the plate's lip level) must lie inside the conditioning's (dilated) mouth mask and cover
  it where the mouth is open: a cheap, direct check that an open mouth is painted open.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import ConfigError
from engine.neural.data import FrameBatch, FrameCache, FrameCacheWriter, FrameDataset
from engine.neural.discriminator import PatchDiscriminator, d_loss, g_loss
from engine.neural.generator import GeneratorConfig, face_hole
from engine.neural.landmark_head import LandmarkHead, landmark_loss
from engine.neural.metrics import dilate_mask

__all__ = ["Stage2Config", "LANDMARK_SUBSET", "ExpressionPrior", "AuxPool", "AuxSource", "ParamAuxSource",
           "Stage2", "FeatureStats", "project_crop_landmarks", "pose_delta", "shift_images",
           "aux_source_from_tracking",
           "load_expression_sets"]

# ~90 MediaPipe Face Mesh indices (a 68-point-style layout): lips outer + inner (20 + 20),
# eyes (6 + 6), brows (5 + 5), nose (9), jaw/cheek contour (21).
LANDMARK_SUBSET: tuple[int, ...] = (
    61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185,
    78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191,
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    1, 4, 5, 195, 197, 6, 98, 327, 2,
    234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323, 454)


@dataclass
class Stage2Config:
    """Stage-2 training (off by default: a stage-1 run is unchanged).

    start_step: the step stage 2 begins (a preset "stage 1 + N steps of stage 2" sets it to
    the stage-1 length). warmup_steps: the landmark head and the discriminator train alone
    this long before their losses reach the generator (an untrained head's landmarks are noise);
    before that, at stage 2's first step, the head alone takes head_pretrain_steps steps on
    plate crops (cheap: no generator), so its landmarks follow the mouth from the start.
    aux_per_step: auxiliary renders per step, next to the reconstruction batch (the mixing
    ratio). pool_size / pool_refresh: auxiliary samples rendered per pool, steps per pool.
    Expression sampling: mixture_components; tracked_fraction: rows of tracked sequences
    taken as they are; prior_fraction: broad diagonal Gaussian (prior_scale x the pooled
    std); drive_fraction: rows of the shot's driving parameters (offline mode); the rest
    from the mixture. yaw/pitch/roll_deg: uniform pose perturbation ranges; recentre: shift
    the crop so the face stays centred. Loss weights: landmark, adversarial (gan: "hinge" |
    "lsgan"; adversarial_recon: reconstructions are fakes too), identity (identity_layers
    VGG blocks at identity_size px), mouth. Networks: head_size / head_base / head_lr;
    disc_base / disc_layers / disc_lr, disc_maps (conditioning the discriminator sees);
    head_pretrain_steps / head_pretrain_batch: the head's pre-training (see warmup_steps).
    """

    enabled: bool = False
    start_step: int = 0
    warmup_steps: int = 100
    aux_per_step: int = 2
    pool_size: int = 64
    pool_refresh: int = 200
    mixture_components: int = 4
    tracked_fraction: float = 0.3
    prior_fraction: float = 0.15
    prior_scale: float = 1.5
    drive_fraction: float = 0.0
    yaw_deg: float = 20.0
    pitch_deg: float = 10.0
    roll_deg: float = 8.0
    recentre: bool = True
    landmark: float = 1.0
    adversarial: float = 0.02
    adversarial_recon: bool = True
    gan: str = "hinge"
    identity: float = 0.05
    identity_layers: int = 3
    identity_size: int = 128
    mouth: float = 0.1
    head_size: int = 64
    head_base: int = 16
    head_lr: float = 1e-3
    head_pretrain_steps: int = 500
    head_pretrain_batch: int = 8
    disc_base: int = 32
    disc_layers: int = 3
    disc_lr: float = 2e-4
    disc_maps: tuple[str, ...] = ("normal", "mask_face", "mask_mouth")

    def validate(self) -> None:
        if not self.enabled:
            return
        if self.start_step < 0 or self.warmup_steps < 0:
            raise ConfigError("stage2.start_step and stage2.warmup_steps must be >= 0")
        if self.aux_per_step < 1 or self.pool_size < self.aux_per_step or self.pool_refresh < 1:
            raise ConfigError("stage2 needs aux_per_step >= 1, pool_size >= aux_per_step, pool_refresh >= 1")
        fr = (self.tracked_fraction, self.prior_fraction, self.drive_fraction)
        if min(fr) < 0 or sum(fr) > 1:
            raise ConfigError("stage2 tracked/prior/drive fractions must be >= 0 and sum to <= 1")
        if self.gan not in ("hinge", "lsgan"):
            raise ConfigError(f"stage2.gan must be 'hinge' or 'lsgan', got {self.gan!r}")
        if min(self.landmark, self.adversarial, self.identity, self.mouth) < 0:
            raise ConfigError("stage2 loss weights must be >= 0")
        if not 1 <= self.identity_layers <= 5:
            raise ConfigError("stage2.identity_layers must be 1..5")
        if self.head_size < 16 or self.head_size % 4:
            raise ConfigError("stage2.head_size must be a multiple of 4, >= 16")
        if self.mixture_components < 1:
            raise ConfigError("stage2.mixture_components must be >= 1")
        if self.head_pretrain_steps < 0 or self.head_pretrain_batch < 1:
            raise ConfigError("stage2.head_pretrain_steps must be >= 0 and head_pretrain_batch >= 1")


def _seed(*parts: int) -> int:
    h = hashlib.sha256(json.dumps([int(p) for p in parts]).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


# ------------------------------------------------------------------------ expression prior
class ExpressionPrior:
    """Distribution over expression coefficients fitted to tracked sequences (see module doc)."""

    def __init__(self, rows: np.ndarray, means: np.ndarray, chols: np.ndarray, weights: np.ndarray,
                 lo: np.ndarray, hi: np.ndarray) -> None:
        self.rows = np.asarray(rows, np.float32)
        self.means = np.asarray(means, np.float64)
        self.chols = np.asarray(chols, np.float64)
        self.weights = np.asarray(weights, np.float64)
        self.lo = np.asarray(lo, np.float32)
        self.hi = np.asarray(hi, np.float32)
        self.std = self.rows.std(0).astype(np.float64) if len(self.rows) > 1 else np.ones(self.dim)

    @property
    def dim(self) -> int:
        return int(self.rows.shape[1])

    @classmethod
    def fit(cls, sets: Sequence[np.ndarray], *, components: int = 4, seed: int = 0,
            exp_range: np.ndarray | None = None, shrinkage: float = 0.1) -> "ExpressionPrior":
        """Fit to the finite rows of ``sets`` (each (N_i, K)); exp_range (K, 2) clips samples."""
        mats = [np.asarray(s, np.float64) for s in sets if s is not None and len(s)]
        if not mats:
            raise ConfigError("stage 2: no tracked expression coefficients to fit the expression prior to")
        dims = {m.shape[1] for m in mats}
        if len(dims) != 1:
            raise ConfigError(f"stage 2: expression sets have different sizes {sorted(dims)} "
                              "(tracked with different face models?)")
        X = np.concatenate(mats, 0)
        X = X[np.isfinite(X).all(1)]
        if len(X) < 2:
            raise ConfigError("stage 2: fewer than 2 tracked expression rows to fit the prior to")
        K = int(min(components, max(1, len(X) // 10)))
        rng = np.random.RandomState(seed % (2 ** 32))
        # k-means++ initialisation, then Lloyd iterations (deterministic given the seed).
        centres = [X[rng.randint(len(X))]]
        for _ in range(1, K):
            d2 = np.min(((X[:, None] - np.asarray(centres)[None]) ** 2).sum(-1), 1)
            centres.append(X[rng.choice(len(X), p=d2 / d2.sum())] if d2.sum() > 0 else X[rng.randint(len(X))])
        C = np.asarray(centres)
        for _ in range(25):
            lab = ((X[:, None] - C[None]) ** 2).sum(-1).argmin(1)
            newC = np.stack([X[lab == k].mean(0) if (lab == k).any() else C[k] for k in range(K)])
            if np.allclose(newC, C):
                break
            C = newC
        lab = ((X[:, None] - C[None]) ** 2).sum(-1).argmin(1)
        E = X.shape[1]
        glob = np.cov(X.T).reshape(E, E) + 1e-6 * np.eye(E)
        means, chols, weights = [], [], []
        for k in range(K):
            Xk = X[lab == k]
            if len(Xk) < 2:
                continue
            cov = np.cov(Xk.T).reshape(E, E) if len(Xk) > E else glob * 0.25
            cov = (1 - shrinkage) * cov + shrinkage * np.diag(np.diag(cov)) + 1e-6 * np.eye(E)
            means.append(Xk.mean(0))
            chols.append(np.linalg.cholesky(cov))
            weights.append(len(Xk))
        if not means:
            means, chols, weights = [X.mean(0)], [np.linalg.cholesky(glob)], [len(X)]
        w = np.asarray(weights, np.float64)
        if exp_range is not None:
            lo, hi = np.asarray(exp_range, np.float32)[:, 0], np.asarray(exp_range, np.float32)[:, 1]
        else:
            span = X.max(0) - X.min(0)
            lo, hi = X.min(0) - 0.1 * span, X.max(0) + 0.1 * span
        return cls(X, np.stack(means), np.stack(chols), w / w.sum(), lo, hi)

    def sample(self, n: int, g: torch.Generator, *, tracked_fraction: float, prior_fraction: float,
               prior_scale: float) -> np.ndarray:
        """(n, K) coefficients: tracked rows / broad prior / mixture, chosen per sample."""
        u = torch.rand(n, generator=g, dtype=torch.float64).numpy()
        row = torch.randint(len(self.rows), (n,), generator=g).numpy()
        comp = torch.multinomial(torch.as_tensor(self.weights), n, replacement=True, generator=g).numpy()
        z = torch.randn(n, self.dim, generator=g, dtype=torch.float64).numpy()
        mix = self.means[comp] + np.einsum("nij,nj->ni", self.chols[comp], z)
        mean = self.rows.mean(0).astype(np.float64)
        broad = mean + prior_scale * self.std * z
        out = np.where((u < tracked_fraction)[:, None], self.rows[row].astype(np.float64),
                       np.where((u < tracked_fraction + prior_fraction)[:, None], broad, mix))
        return np.clip(out, self.lo, self.hi).astype(np.float32)


def load_expression_sets(paths: Sequence[Any], face_model_id: str) -> list[np.ndarray]:
    """Expression rows of drive files (already the actor's expressions) or tracking files
    tracked with the same face model (same expression basis) -- anything else is refused."""
    from pathlib import Path

    out = []
    for p in paths:
        p = Path(p)
        if p.name.endswith(".drive.npz"):
            from engine.drive.drive_file import load_drive
            d = load_drive(p)
            if d.face_model_id and d.face_model_id != face_model_id:
                raise ConfigError(f"{p}: drive made for face model {d.face_model_id}, the actor's is {face_model_id}")
            out.append(d.params.expression[d.params.usable])
        else:
            from engine.face.tracking_file import load_tracking
            tr = load_tracking(p)
            if tr.face_model_id != face_model_id:
                raise ConfigError(f"{p}: tracked with face model {tr.face_model_id}, not the actor's "
                                  f"{face_model_id}; transfer it to the actor first (a drive file)")
            params = _params_from_tracking(tr)
            out.append(params.expression[params.usable])
    return out


def _params_from_tracking(tr: Any):
    from engine.face.params import FrameParams
    return FrameParams.from_tracking(tr)


# ----------------------------------------------------------------------------- geometry
def pose_delta(angles: torch.Tensor) -> torch.Tensor:
    """(N, 3) (yaw, pitch, roll) radians -> (N, 3, 3) rotation in model axes (Y up: yaw about
    Y, pitch about X, roll about Z), applied in model space: R' = R @ delta."""
    from engine.face.camera import axis_angle_to_matrix
    z = torch.zeros_like(angles[:, 0])
    ry = axis_angle_to_matrix(torch.stack([z, angles[:, 0], z], -1))
    rx = axis_angle_to_matrix(torch.stack([angles[:, 1], z, z], -1))
    rz = axis_angle_to_matrix(torch.stack([z, z, angles[:, 2]], -1))
    return ry @ rx @ rz


def project_crop_landmarks(renderer: Any, params: Any, indices: Sequence[int] | np.ndarray,
                           subset: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected model landmarks ``subset`` of frames ``indices`` in crop pixels at the
    renderer's size (B, L, 2), and their validity (B, L): embedded, in front of the camera,
    inside the crop, on a usable frame."""
    from engine.face.conditioning import crop_intrinsics
    idx = np.asarray(indices, np.int64)
    cam = renderer.posed_vertices(params, idx)
    lm3 = renderer.model.landmarks(cam)[:, list(subset)]
    K = torch.as_tensor(params.intrinsics(), dtype=torch.float32, device=cam.device)
    Kc = crop_intrinsics(K, torch.as_tensor(renderer.crop_affine(params, idx), dtype=torch.float32,
                                            device=cam.device)).to(torch.float32)
    x = lm3 @ Kc.transpose(-1, -2)
    z = x[..., 2:3]
    uv = x[..., :2] / z.clamp_min(1e-6)
    S = float(renderer.size)
    emb = torch.as_tensor(np.asarray(renderer.model.landmark_tri)[list(subset)] >= 0, device=cam.device)
    valid = (z[..., 0] > 1e-6) & (uv >= 0).all(-1) & (uv <= S).all(-1) & emb[None]
    valid &= torch.as_tensor(np.asarray(params.usable, bool)[idx], device=cam.device)[:, None]
    return uv.float().cpu(), valid.cpu()


def shift_images(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Translate (B, C, S, S) images by ``shift`` (B, 2) pixels (content moves by +shift);
    the border repeats where the shift uncovers the outside."""
    B, _, H, W = x.shape
    theta = torch.zeros(B, 2, 3, dtype=x.dtype)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    theta[:, 0, 2] = -2 * shift[:, 0].to(x.dtype) / W
    theta[:, 1, 2] = -2 * shift[:, 1].to(x.dtype) / H
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# --------------------------------------------------------------------------- aux sources
@dataclass
class AuxPool:
    """Rendered auxiliary samples: conditioning, context, hole, expression (quantised in a
    :class:`FrameCache`), and the conditioning's projected landmarks (N, L, 2) + validity."""

    cache: FrameCache
    landmarks: torch.Tensor
    lm_valid: torch.Tensor

    def __len__(self) -> int:
        return len(self.cache)

    def get(self, ids: Sequence[int]) -> tuple[FrameBatch, torch.Tensor, torch.Tensor]:
        b = self.cache.get(ids)
        ids_t = torch.as_tensor(list(ids), dtype=torch.int64)
        # The stored image is the context (there is no ground truth for an auxiliary sample).
        b = FrameBatch(cond=b.cond, target=None, frames=b.frames, context=b.target, expr=b.expr, hole=b.hole)
        return b, self.landmarks[ids_t], self.lm_valid[ids_t]


@runtime_checkable
class AuxSource(Protocol):
    """What stage 2 needs besides the frame cache."""

    @property
    def num_landmarks(self) -> int: ...

    @property
    def fingerprint(self) -> str: ...

    def plate_landmarks(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) plate frame numbers -> landmarks (B, L, 2) crop px and validity (B, L)."""

    def build_pool(self, epoch: int, n: int, seed: int) -> AuxPool: ...


class ParamAuxSource:
    """Auxiliary face-model parameters for the actor of ``plate`` (see module doc).

    face_model: the model the plate was tracked with; plate: the plate's FrameParams (every
    cached frame must be among them); dataset / train_indices: the frame cache and its
    training frames (contexts are drawn from these only: held-out frames never leak);
    expression_sets: extra (N_i, K) expression rows in the plate's basis; drive: FrameParams
    of a shot's drive (offline mode)."""

    def __init__(self, face_model: Any, plate: Any, dataset: FrameDataset, train_indices: Sequence[int],
                 cfg: Stage2Config, gen_cfg: GeneratorConfig, *, expression_sets: Sequence[np.ndarray] = (),
                 drive: Sequence[Any] = (), subset: Sequence[int] = LANDMARK_SUBSET, seed: int = 0) -> None:
        from engine.face.conditioning import ConditioningConfig
        from engine.face.params import ConditioningRenderer

        self.model = face_model
        self.plate = plate
        self.dataset = dataset
        self.cfg = cfg
        self.gen_cfg = gen_cfg
        self.size = int(gen_cfg.image_size)
        tri = np.asarray(face_model.landmark_tri)
        self.subset = tuple(int(i) for i in subset if 0 <= int(i) < len(tri) and tri[int(i)] >= 0)
        if len(self.subset) < 4:
            raise ConfigError("stage 2: the face model embeds fewer than 4 of the landmark subset")
        maps = list(gen_cfg.required_maps()) + [m for m in cfg.disc_maps if m not in gen_cfg.required_maps()]
        if "region" in gen_cfg.cond_keys and "region" not in maps:
            maps.append("region")
        self.maps = tuple(dict.fromkeys(maps))
        self.renderer = ConditioningRenderer(face_model, ConditioningConfig(
            size=self.size, maps=self.maps, num_regions=gen_cfg.region_channels))
        fn = np.asarray(dataset.frame_numbers, np.int64)
        pos = {int(f): i for i, f in enumerate(np.asarray(plate.frame_numbers, np.int64))}
        missing = [int(f) for f in fn if int(f) not in pos]
        if missing:
            raise ConfigError(f"stage 2: cached frames {missing[:3]} have no tracked parameters")
        self.pidx = np.asarray([pos[int(f)] for f in fn], np.int64)         # cache index -> params row
        self.cache_pos = {int(f): i for i, f in enumerate(fn)}
        self.train_idx = np.asarray(sorted(int(i) for i in train_indices), np.int64)
        self.train_frames = set(int(fn[i]) for i in self.train_idx)
        # Landmark labels of every cached frame (the head's training targets).
        lms, vals = [], []
        for a in range(0, len(fn), 64):
            lm, v = project_crop_landmarks(self.renderer, plate, self.pidx[a:a + 64], self.subset)
            lms.append(lm)
            vals.append(v)
        self._lm = torch.cat(lms)
        self._lm_valid = torch.cat(vals)
        usable = np.asarray(plate.usable, bool)
        sets = [plate.expression[self.pidx[self.train_idx]][usable[self.pidx[self.train_idx]]]]
        sets += [np.asarray(s, np.float32) for s in expression_sets]
        self.drive = [d for d in drive if len(d)]
        for d in self.drive:
            if d.expression.shape[1] != plate.expression.shape[1]:
                raise ConfigError("stage 2: the drive's expressions are not in the actor's basis")
            sets.append(d.expression[np.asarray(d.usable, bool)])
        exp_range = getattr(face_model, "exp_range", None)
        if exp_range is not None and len(exp_range) != plate.expression.shape[1]:
            exp_range = None
        self.prior = ExpressionPrior.fit(sets, components=cfg.mixture_components, seed=seed, exp_range=exp_range)
        h = hashlib.sha256()
        for arr in [plate.expression, plate.rotation, *[np.asarray(s) for s in sets[1:]]]:
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update(repr((self.subset, self.maps, self.size)).encode())
        self._fingerprint = h.hexdigest()

    @property
    def num_landmarks(self) -> int:
        return len(self.subset)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def plate_landmarks(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor([self.cache_pos[int(f)] for f in frames.tolist()], dtype=torch.int64)
        return self._lm[idx], self._lm_valid[idx]

    def sample_params(self, n: int, g: torch.Generator) -> tuple[Any, np.ndarray, np.ndarray]:
        """n auxiliary FrameParams rows, the cache index of each one's context frame, and
        the plate params row its pose came from (before perturbation)."""
        from engine.face.fit import matrix_to_axis_angle
        from engine.face.camera import axis_angle_to_matrix
        from engine.face.params import FrameParams

        c, p = self.cfg, self.plate
        j = self.train_idx[torch.randint(len(self.train_idx), (n,), generator=g).numpy()]
        expr = self.prior.sample(n, g, tracked_fraction=c.tracked_fraction, prior_fraction=c.prior_fraction,
                                 prior_scale=c.prior_scale)
        rot = p.rotation[self.pidx[j]].astype(np.float32).copy()
        trans = p.translation[self.pidx[j]].astype(np.float32).copy()
        aff = p.crop_affine[self.pidx[j]].astype(np.float64).copy()
        perturb = np.ones(n, bool)
        u = torch.rand(n, generator=g).numpy()
        if self.drive and c.drive_fraction > 0:
            d_all = [(k, r) for k, d in enumerate(self.drive) for r in np.flatnonzero(np.asarray(d.usable, bool))]
            pick = torch.randint(max(1, len(d_all)), (n,), generator=g).numpy()
            for s in np.flatnonzero(u < c.drive_fraction):
                if not d_all:
                    break
                k, r = d_all[pick[s]]
                d = self.drive[k]
                expr[s] = np.nan_to_num(d.expression[r])
                f = int(d.frame_numbers[r])
                if f in self.train_frames and f in self.cache_pos:
                    # The shot's own frame: render exactly what will be rendered, over that frame.
                    j[s] = self.cache_pos[f]
                    rot[s], trans[s] = d.rotation[r], d.translation[r]
                    aff[s] = d.crop_affine[r] * (p.crop_size / float(d.crop_size))
                    perturb[s] = False
        ang = (torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1) * torch.tensor(
            np.deg2rad([c.yaw_deg, c.pitch_deg, c.roll_deg]))
        ang = ang.float() * torch.as_tensor(perturb, dtype=torch.float32)[:, None]
        R = axis_angle_to_matrix(torch.as_tensor(rot)) @ pose_delta(ang)
        rot2 = matrix_to_axis_angle(R).numpy().astype(np.float32)
        params = FrameParams(frame_numbers=np.arange(n, dtype=np.int64), identity=p.identity, expression=expr,
                             rotation=rot2, translation=trans, focal=p.focal, principal_point=p.principal_point,
                             image_size=p.image_size, crop_affine=aff, crop_size=p.crop_size,
                             usable=np.ones(n, bool))
        return params, j, rot

    def build_pool(self, epoch: int, n: int, seed: int) -> AuxPool:
        g = torch.Generator().manual_seed(_seed(seed, epoch, 2))
        params, j, rot0 = self.sample_params(n, g)
        S = self.size
        idx = np.arange(n)
        lm, valid = project_crop_landmarks(self.renderer, params, idx, self.subset)
        shift = torch.zeros(n, 2)
        if self.cfg.recentre:
            ref, rvalid = project_crop_landmarks(self.renderer, params.with_(rotation=rot0), idx, self.subset)
            both = (valid & rvalid).float()[..., None]
            cnt = both.sum(1).clamp_min(1)
            shift = ((ref - lm) * both).sum(1) / cnt                       # (n, 2) crop px at S
            aff = params.crop_affine.copy()
            aff[:, :, 2] += shift.numpy() * (params.crop_size / float(S))
            params = params.with_(crop_affine=aff)
            lm, valid = project_crop_landmarks(self.renderer, params, idx, self.subset)
        writer = FrameCacheWriter(None, list(range(n)), S, {k: self.gen_cfg.map_channels(k) if k != "region"
                                                           else self.gen_cfg.region_channels for k in self.maps},
                                  expr_dim=self.gen_cfg.expr_dim, hole=True,
                                  source={"stage2_pool": int(epoch)})
        for a in range(0, n, 16):
            sl = idx[a:a + 16]
            cond = self.renderer.render(params, sl)
            ctx = self.dataset.get(j[sl].tolist())
            img = shift_images(ctx.target, shift[sl])
            ctx_face = shift_images(ctx.cond[self.gen_cfg.face_key], shift[sl])
            hole = face_hole(torch.maximum(cond[self.gen_cfg.face_key].float(), ctx_face), self.gen_cfg.hole_dilate)
            for b, i in enumerate(sl):
                writer.put(int(i), {k: v[b] for k, v in cond.items()}, img[b], hole=hole[b],
                           expr=params.expression[i] if self.gen_cfg.expr_dim else None)
        return AuxPool(writer.close(), lm, valid)


# ------------------------------------------------------------------------ feature stats
class FeatureStats(torch.nn.Module):
    """Masked per-channel (mean, std) of image features (see the module doc, ``identity``).

    With the ST-LPIPS VGG weights: the first ``layers`` VGG16 blocks; otherwise colour and
    colour-gradient channels (a weaker but weight-free texture descriptor)."""

    def __init__(self, layers: int = 3, size: int = 128, vgg: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.layers = layers
        self.size = size
        self.vgg = vgg
        if self.vgg is None:
            from engine.neural.perceptual import STLPIPS, weights_available
            if weights_available():
                self.vgg = STLPIPS()
        if self.vgg is not None:
            for p in self.vgg.parameters():
                p.requires_grad_(False)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.vgg is not None:
            m = self.vgg
            return m.net(m.scale_input(x, True), upto=self.layers)
        gx = x[..., :, 1:] - x[..., :, :-1]
        gy = x[..., 1:, :] - x[..., :-1, :]
        return [x, F.pad(gx, (0, 1)).abs(), F.pad(gy, (0, 0, 0, 1)).abs()]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Batch-pooled (mean (C,), std (C,)) per feature level inside ``mask`` (B, 1, H, W)."""
        if max(x.shape[-2:]) > self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
            mask = F.interpolate(mask, size=(self.size, self.size), mode="area")
        out = []
        for f in self._features(x.float()):
            w = F.adaptive_avg_pool2d(mask.float(), f.shape[-2:])
            tot = w.sum().clamp_min(1e-6)
            mean = (f * w).sum((0, 2, 3)) / tot
            var = (((f - mean[None, :, None, None]) ** 2) * w).sum((0, 2, 3)) / tot
            out.append((mean, (var + 1e-6).sqrt()))
        return out


def _stats_distance(a: list, b: list) -> torch.Tensor:
    tot = a[0][0].new_zeros(())
    for (ma, sa), (mb, sb) in zip(a, b):
        scale = sb.detach().mean().clamp_min(1e-3)  # per-level normalisation: VGG levels differ in scale
        tot = tot + ((ma - mb.detach()).abs().mean() + (sa - sb.detach()).abs().mean()) / scale
    return tot / len(a)


def _luminance(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


# ---------------------------------------------------------------------------- the runtime
@dataclass
class _GenPass:
    aux: FrameBatch
    aux_out: Any
    lm: torch.Tensor
    lm_valid: torch.Tensor
    total: torch.Tensor
    terms: dict[str, torch.Tensor]


class Stage2:
    """Stage-2 state inside a :class:`~engine.neural.train.Trainer`: auxiliary pools, the
    landmark head and the discriminator with their optimisers, and the losses.

    Per step (``step >= start_step``): :meth:`generator_pass` renders ``aux_per_step``
    auxiliary samples and returns the generator's stage-2 loss (inside the trainer's
    autocast, added to the reconstruction loss, one backward); :meth:`aux_nets_backward`
    computes the landmark head's loss on the plate crops and the discriminator's loss (real
    plate crops vs detached renders); :meth:`optimizer_step` applies both updates (inside
    the trainer's "mutating" window, with the generator's). The head and discriminator are
    initialised from their own seed, so enabling stage 2 does not move the generator's
    initialisation or any global RNG stream."""

    def __init__(self, cfg: Stage2Config, gen_cfg: GeneratorConfig, source: AuxSource, device: torch.device,
                 seed: int, *, vgg: torch.nn.Module | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.gen_cfg = gen_cfg
        self.source = source
        self.device = device
        self.seed = int(seed)
        for k in cfg.disc_maps:
            gen_cfg.map_channels(k)
        cond_ch = sum(gen_cfg.map_channels(k) for k in cfg.disc_maps)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed(seed, 0, 1))
            self.head = LandmarkHead(source.num_landmarks, size=cfg.head_size, base=cfg.head_base).to(device)
            self.disc = PatchDiscriminator(cond_ch, base=cfg.disc_base, layers=cfg.disc_layers).to(device)
        self.head_opt = torch.optim.Adam(self.head.parameters(), lr=cfg.head_lr)
        # pix2pix's Adam settings for the discriminator (beta1 = 0.5).
        self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.999))
        self.stats = FeatureStats(cfg.identity_layers, cfg.identity_size, vgg).to(device) if cfg.identity > 0 else None
        self._pool: AuxPool | None = None
        self._pool_epoch = -1
        self.head_ready = False

    # -- schedule
    def active(self, step: int) -> bool:
        return step >= self.cfg.start_step

    def generator_on(self, step: int) -> bool:
        return step >= self.cfg.start_step + self.cfg.warmup_steps

    def pool(self, step: int) -> AuxPool:
        e = (step - self.cfg.start_step) // self.cfg.pool_refresh
        if e != self._pool_epoch:
            self._pool = self.source.build_pool(e, self.cfg.pool_size, self.seed)
            self._pool_epoch = e
        return self._pool

    def aux_batch(self, step: int) -> tuple[FrameBatch, torch.Tensor, torch.Tensor]:
        pool = self.pool(step)
        g = torch.Generator().manual_seed(_seed(self.seed, step, 3))
        ids = torch.randperm(len(pool), generator=g)[:self.cfg.aux_per_step].tolist()
        b, lm, v = pool.get(ids)
        return b.to(self.device), lm.to(self.device), v.to(self.device)

    def _dcond(self, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([cond[k].float() for k in self.cfg.disc_maps], 1)

    @staticmethod
    def _freeze(m: torch.nn.Module, frozen: bool) -> None:
        for p in m.parameters():
            p.requires_grad_(not frozen)

    # -- generator side
    def generator_pass(self, model: torch.nn.Module, batch: FrameBatch, out: Any, step: int,
                       prep=lambda c: c) -> _GenPass:
        """Stage-2 generator loss of this step (call inside the trainer's autocast)."""
        cfg = self.cfg
        aux, lm, lm_valid = self.aux_batch(step)
        # During the warm-up the renders only feed the discriminator: no graph needed.
        with torch.set_grad_enabled(self.generator_on(step) and torch.is_grad_enabled()):
            aux_out = model(prep(aux.cond), aux.context if self.gen_cfg.context else None, aux.expr, aux.hole)
        terms: dict[str, torch.Tensor] = {}
        total = aux_out.composite.new_zeros(())
        if self.generator_on(step):
            self._freeze(self.head, True)
            self._freeze(self.disc, True)
            # eval(): the spectral-norm power iteration runs only in the discriminator's own
            # update, so this pass leaves the discriminator's state untouched.
            self.disc.eval()
            try:
                face = aux.cond[self.gen_cfg.face_key].float()
                if cfg.landmark:
                    terms["s2_landmark"] = cfg.landmark * landmark_loss(self.head(aux_out.composite), lm, lm_valid,
                                                                        self.gen_cfg.image_size)
                if cfg.adversarial:
                    fakes = [self.disc(aux_out.composite, self._dcond(aux.cond))]
                    if cfg.adversarial_recon:
                        fakes.append(self.disc(out.composite, self._dcond(batch.cond)))
                    terms["s2_adv"] = cfg.adversarial * sum(g_loss(f, cfg.gan) for f in fakes) / len(fakes)
                if cfg.identity and self.stats is not None:
                    real = self.stats(batch.target.float(), batch.cond[self.gen_cfg.face_key].float())
                    fake = self.stats(aux_out.composite, face)
                    terms["s2_identity"] = cfg.identity * _stats_distance(fake, real)
                if cfg.mouth and self.gen_cfg.mouth_key:
                    terms["s2_mouth"] = cfg.mouth * self._mouth_loss(aux_out.composite, aux.cond, batch)
            finally:
                self._freeze(self.head, False)
                self._freeze(self.disc, False)
                self.disc.train()
            total = sum(terms.values()) if terms else total
        return _GenPass(aux=aux, aux_out=aux_out, lm=lm, lm_valid=lm_valid, total=total,
                        terms={k: v.detach() for k, v in terms.items()})

    def _mouth_loss(self, img: torch.Tensor, cond: dict[str, torch.Tensor], batch: FrameBatch) -> torch.Tensor:
        """Mouth consistency: a soft "dark interior" map of the render (luminance below the
        plate's lip level, learned from the plate crops of the step) compared with the
        conditioning's mouth mask: no cavity outside the (dilated) mask, a cavity inside the
        (eroded) mask. The threshold comes from the plate so it adapts to the actor's lighting."""
        mk = self.gen_cfg.mouth_key
        with torch.no_grad():
            tm = (batch.cond[mk] > 0.5).float()
            tf = (batch.cond[self.gen_cfg.face_key] > 0.5).float()
            lum = _luminance(batch.target.float())
            skin = (lum * tf * (1 - tm)).sum() / (tf * (1 - tm)).sum().clamp_min(1)
            inner = (lum * tm).sum() / tm.sum().clamp_min(1) if tm.sum() > 0 else 0.5 * skin
            thr = 0.5 * (skin + inner)
            m = (cond[mk].float() > 0.5).float()
            r = max(1, int(round(0.03 * m.shape[-1])))
            outside = (1 - dilate_mask(m, r)) * (cond[self.gen_cfg.face_key].float() > 0.5).float()
            inside = 1 - dilate_mask(1 - m, r)
        dark = torch.sigmoid((thr - _luminance(img.float())) / 0.03)
        a = (dark * outside).sum() / outside.sum().clamp_min(1)
        b = ((1 - dark) * inside).sum() / inside.sum().clamp_min(1) if inside.sum() > 0 else img.new_zeros(())
        return a + b

    # -- head and discriminator
    def pretrain_head(self, dataset: FrameDataset, train_indices: Sequence[int]) -> float | None:
        """Train the landmark head alone on random training crops (once, at stage 2's start).
        Batches come from a generator seeded by the run's seed: no global RNG is consumed, so
        a resumed run repeats it exactly. Returns the last loss (None if nothing to do)."""
        if self.head_ready:
            return None
        self.head_ready = True
        if not self.cfg.landmark or self.cfg.head_pretrain_steps == 0:
            return None
        g = torch.Generator().manual_seed(_seed(self.seed, 0, 4))
        idx = torch.as_tensor(list(train_indices), dtype=torch.int64)
        last = None
        for _ in range(self.cfg.head_pretrain_steps):
            pick = idx[torch.randint(len(idx), (self.cfg.head_pretrain_batch,), generator=g)].tolist()
            b = dataset.get(pick)
            lm, v = self.source.plate_landmarks(b.frames)
            loss = landmark_loss(self.head(b.target.to(self.device)), lm.to(self.device), v.to(self.device),
                                 self.gen_cfg.image_size)
            self.head_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.head_opt.step()
            last = float(loss.detach())
        return last

    def aux_nets_backward(self, batch: FrameBatch, out: Any, gp: _GenPass, step: int) -> dict[str, torch.Tensor]:
        """Gradients of the landmark head (plate crops vs tracked landmarks) and of the
        discriminator (plate crops vs detached renders). No parameter changes here."""
        cfg = self.cfg
        self.head_opt.zero_grad(set_to_none=True)
        self.disc_opt.zero_grad(set_to_none=True)
        terms: dict[str, torch.Tensor] = {}
        real = batch.target.float()
        if cfg.landmark:
            lm, v = self.source.plate_landmarks(batch.frames.cpu())
            lh = landmark_loss(self.head(real), lm.to(self.device), v.to(self.device), self.gen_cfg.image_size)
            lh.backward()
            terms["s2_head"] = lh.detach()
        if cfg.adversarial:
            d_real = self.disc(real, self._dcond(batch.cond))
            fakes = [self.disc(gp.aux_out.composite.detach().float(), self._dcond(gp.aux.cond))]
            if cfg.adversarial_recon:
                fakes.append(self.disc(out.composite.detach().float(), self._dcond(batch.cond)))
            ld = sum(d_loss(d_real, f, cfg.gan) for f in fakes) / len(fakes)
            ld.backward()
            terms["s2_disc"] = ld.detach()
        return terms

    def optimizer_step(self) -> None:
        if self.cfg.landmark:
            self.head_opt.step()
        if self.cfg.adversarial:
            self.disc_opt.step()

    # -- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"head": self.head.state_dict(), "disc": self.disc.state_dict(),
                "head_opt": self.head_opt.state_dict(), "disc_opt": self.disc_opt.state_dict(),
                "head_ready": bool(self.head_ready), "source_fingerprint": self.source.fingerprint}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if d.get("source_fingerprint") != self.source.fingerprint:
            raise ConfigError("cannot resume stage 2: its auxiliary parameters (plate tracking / expression "
                              "sources / drive) differ from the checkpoint's; start a new run")
        self.head.load_state_dict(d["head"])
        self.disc.load_state_dict(d["disc"])
        self.head_opt.load_state_dict(d["head_opt"])
        self.disc_opt.load_state_dict(d["disc_opt"])
        self.head_ready = bool(d.get("head_ready", True))
        self._pool_epoch = -1  # rebuilt (deterministically) on the next step


def aux_source_from_tracking(tracking: Any, dataset: FrameDataset, train_indices: Sequence[int], train_cfg: Any, *,
                             expressions: Sequence[Any] = (), expression_sets: Sequence[np.ndarray] = (),
                             drive: Sequence[Any] = ()) -> ParamAuxSource:
    """A :class:`ParamAuxSource` from the plate's tracking file (path or TrackingResult):
    its fitted parameters and face model; ``expressions``: tracking / drive files whose
    expressions join the prior (:func:`load_expression_sets`); ``drive``: FrameParams."""
    from engine.face.params import FrameParams
    from engine.face.tracking_file import load_tracking

    tr = tracking if hasattr(tracking, "fit") else load_tracking(tracking)
    model = tr.face_model()
    sets = load_expression_sets(expressions, tr.face_model_id) if expressions else []
    sets += [np.asarray(s, np.float32) for s in expression_sets]
    return ParamAuxSource(model, FrameParams.from_tracking(tr), dataset, train_indices, train_cfg.stage2,
                          train_cfg.generator, expression_sets=sets, drive=drive, seed=train_cfg.seed)
