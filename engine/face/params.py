"""Per-frame face-model parameters to render, and the conditioning maps they produce.

:class:`FrameParams` is the one currency between the stages that *decide* what the face does
(tracking of the plate, video- or audio-driven drive files) and the stages that *render* it
(training data, online inference, the final render): frame numbers of the target shot, the
actor's identity, per-frame expression coefficients, rigid pose (camera convention of
:mod:`engine.face.camera`: ``x_cam = R x + t``), the pinhole camera and the crop affine of
each frame (plate pixels -> crop pixels, engine pixel-centre convention). A tracking file
gives the plate's own parameters (:meth:`FrameParams.from_tracking`); a drive file gives the
same fields with the expression (and maybe pose) replaced.

:class:`ConditioningRenderer` turns parameters into the screen-space maps of
:mod:`engine.face.conditioning` for the frames' crops, batched (deferred neural rendering's
"rasterised geometry buffers", Thies et al. 2019).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from engine.errors import ConfigError
from engine.face.camera import axis_angle_to_matrix
from engine.face.conditioning import (ConditioningConfig, crop_intrinsics, normalise_canonical,
                                      render_conditioning)
from engine.face.model import FACE_REGIONS

__all__ = ["FrameParams", "ConditioningRenderer", "face_view", "face_oval_skin"]

_PER_FRAME = ("frame_numbers", "expression", "rotation", "translation", "crop_affine", "usable")


@dataclass(frozen=True)
class FrameParams:
    """Face-model parameters of N frames (numpy; 0-based index i <-> ``frame_numbers[i]``).

    ``usable`` is False where there is no face to render (no face in the plate, or a driving
    frame with no face that was not filled in): those frames pass the plate through.
    ``crop_size`` is the resolution the affines map into.
    """

    frame_numbers: np.ndarray   # (N,) int64
    identity: np.ndarray        # (K_id,) float32
    expression: np.ndarray      # (N, K_exp) float32
    rotation: np.ndarray        # (N, 3) camera axis-angle
    translation: np.ndarray     # (N, 3)
    focal: float
    principal_point: np.ndarray  # (2,)
    image_size: tuple[int, int]  # plate (W, H)
    crop_affine: np.ndarray     # (N, 2, 3) plate -> crop pixels
    crop_size: int
    usable: np.ndarray          # (N,) bool

    def __post_init__(self) -> None:
        n = len(self.frame_numbers)
        for key in _PER_FRAME[1:]:
            if len(getattr(self, key)) != n:
                raise ConfigError(f"frame params: {key} has {len(getattr(self, key))} rows for {n} frames")

    def __len__(self) -> int:
        return int(len(self.frame_numbers))

    @classmethod
    def from_tracking(cls, tracking: Any) -> "FrameParams":
        """The tracked parameters of every frame of a :class:`~engine.face.tracking_file.TrackingResult`."""
        fit, crops = tracking.fit, tracking.crops
        usable = np.asarray(tracking.usable, bool) & np.asarray(fit.fitted, bool)
        return cls(frame_numbers=np.asarray(tracking.frame_numbers, np.int64),
                   identity=np.asarray(fit.identity, np.float32),
                   expression=np.asarray(fit.expression, np.float32),
                   rotation=np.asarray(fit.rotation, np.float32),
                   translation=np.asarray(fit.translation, np.float32),
                   focal=float(fit.focal), principal_point=np.asarray(fit.principal_point, np.float32),
                   image_size=tuple(int(v) for v in fit.image_size),
                   crop_affine=np.asarray(crops.affine, np.float64), crop_size=int(crops.size),
                   usable=usable)

    def intrinsics(self) -> np.ndarray:
        return np.array([[self.focal, 0.0, self.principal_point[0]],
                         [0.0, self.focal, self.principal_point[1]],
                         [0.0, 0.0, 1.0]], np.float32)

    def index_of(self, frame_number: int) -> int:
        idx = np.flatnonzero(self.frame_numbers == int(frame_number))
        if idx.size == 0:
            raise ConfigError(f"frame {frame_number} has no face parameters "
                              f"({int(self.frame_numbers[0])}-{int(self.frame_numbers[-1])})")
        return int(idx[0])

    def select(self, indices: Sequence[int] | np.ndarray) -> "FrameParams":
        """Frames ``indices`` (0-based), in that order."""
        idx = np.asarray(indices, np.int64)
        return replace(self, **{k: np.asarray(getattr(self, k))[idx] for k in _PER_FRAME})

    def with_(self, **changes: Any) -> "FrameParams":
        """A copy with fields replaced (e.g. a drive's expression)."""
        return replace(self, **changes)

    # -- persistence (inside drive files / caches: flat arrays with a prefix) ---------------
    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        out = {prefix + k: np.asarray(getattr(self, k)) for k in _PER_FRAME + ("identity", "principal_point")}
        out[prefix + "focal"] = np.asarray(self.focal, np.float64)
        out[prefix + "image_size"] = np.asarray(self.image_size, np.int64)
        out[prefix + "crop_size"] = np.asarray(self.crop_size, np.int64)
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str = "") -> "FrameParams":
        try:
            a = {k: np.asarray(arrays[prefix + k]) for k in _PER_FRAME + ("identity", "principal_point", "focal",
                                                                           "image_size", "crop_size")}
        except KeyError as exc:
            raise ConfigError(f"frame params: array {exc.args[0]!r} missing") from None
        return cls(frame_numbers=a["frame_numbers"].astype(np.int64), identity=a["identity"].astype(np.float32),
                   expression=a["expression"].astype(np.float32), rotation=a["rotation"].astype(np.float32),
                   translation=a["translation"].astype(np.float32), focal=float(a["focal"]),
                   principal_point=a["principal_point"].astype(np.float32),
                   image_size=tuple(int(v) for v in a["image_size"]),
                   crop_affine=a["crop_affine"].astype(np.float64), crop_size=int(a["crop_size"]),
                   usable=a["usable"].astype(bool))


def face_oval_skin(model: Any) -> np.ndarray:
    """(V,) bool: SKIN vertices inside the MediaPipe face oval (seen frontally, at neutral).

    A production model's "face" material usually runs past what a face tracker calls the
    face (ICT's M_Face includes the ears' surroundings and the upper neck); the face oval's
    embedded landmarks give every model the same, tracker-defined face boundary, so the
    rendered face mask -- and the region the neural renderer repaints -- ends at the jaw
    line and the hairline like the plate's tracked face does."""
    from skimage.measure import points_in_poly

    from engine.face.landmarks import FACE_OVAL
    from engine.face.model import Region

    skin = np.asarray(model.vertex_region) == int(Region.SKIN)
    emb = np.asarray(model.landmark_tri)[list(FACE_OVAL)] >= 0
    if emb.sum() < 8:
        return skin  # no usable oval embedding: keep the model's own face region
    neutral = torch.as_tensor(model.neutral, dtype=torch.float64)
    lm = model.landmarks(neutral[None])[0].numpy()
    oval = lm[list(FACE_OVAL)][emb]
    # Frontal projection on the model's x/y plane (every supported model faces along z).
    inside = points_in_poly(np.asarray(model.neutral, np.float64)[:, :2], oval[:, :2])
    return skin & inside


def face_view(model: Any, regions: tuple[int, ...] = FACE_REGIONS) -> Any:
    """The part of ``model`` the neural renderer paints: ``regions`` (default skin, lips,
    mouth interior, eyes), with skin limited to the face oval (:func:`face_oval_skin`).
    The model itself when that is every vertex (the built-in model)."""
    from dataclasses import replace as _replace

    from engine.face.model import Region

    region = np.asarray(model.vertex_region).copy()
    if int(Region.SKIN) in regions:
        outside = (region == int(Region.SKIN)) & ~face_oval_skin(model)
        region[outside] = int(Region.HEAD)
    if np.isin(region, np.asarray(regions, np.uint8)).all():
        return model
    return _replace(model, vertex_region=region).subset(regions)


class ConditioningRenderer:
    """Conditioning maps of :class:`FrameParams` frames for one face model.

    The model's static per-vertex attributes (canonical coordinates, UVs, regions, triangles)
    are prepared once; :meth:`render` poses the mesh per frame and rasterises it into the
    frame's crop at ``config.size`` (the crop affine is rescaled when the params' crop size
    differs, so a 512 px tracking crop can feed a 128 px draft model).

    ``regions``: the model regions rendered (default the face: skin, lips, mouth interior,
    eyes). Scalp, ears and neck are left out on purpose: the neural renderer paints only the
    face mask (dilated) and takes hair, ears and neck from the plate, and the helper shells
    of a production model (ICT's eye-occlusion and tear-film layers, eyelashes) would cover
    the eyes in a z-buffer. None renders every vertex.
    """

    def __init__(self, model: Any, config: ConditioningConfig | None = None, device: str | torch.device = "cpu",
                 regions: tuple[int, ...] | None = FACE_REGIONS):
        self.source_model = model
        if regions is not None:
            model = face_view(model, regions)
        self.model = model
        self.config = config or ConditioningConfig()
        self.config.validate()
        self.device = torch.device(device)
        self.canonical = normalise_canonical(torch.as_tensor(model.neutral, dtype=torch.float32)).to(self.device)
        self.uv = torch.as_tensor(model.uv, dtype=torch.float32, device=self.device)
        self.region = torch.as_tensor(model.vertex_region.astype(np.int64), device=self.device)
        self.faces = torch.as_tensor(model.triangles, dtype=torch.int64, device=self.device)

    @property
    def size(self) -> int:
        return self.config.size

    def crop_affine(self, params: FrameParams, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """(B, 2, 3) plate -> crop affines at this renderer's resolution."""
        a = np.asarray(params.crop_affine, np.float64)[np.asarray(indices, np.int64)].copy()
        a *= self.size / float(params.crop_size)  # both rows scale: crop pixels are S/S' larger
        return a

    def posed_vertices(self, params: FrameParams, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """(B, V, 3) camera-space vertices of frames ``indices``."""
        idx = np.asarray(indices, np.int64)
        exp = torch.as_tensor(np.nan_to_num(params.expression[idx]), dtype=torch.float32, device=self.device)
        ident = None
        if getattr(self.model, "n_id", 0):
            ident = torch.as_tensor(params.identity, dtype=torch.float32, device=self.device)[None].expand(len(idx), -1)
        verts = self.model.vertices(ident, exp).to(self.device, torch.float32)
        rot = axis_angle_to_matrix(torch.as_tensor(np.nan_to_num(params.rotation[idx]), dtype=torch.float32,
                                                   device=self.device))
        # A frame without parameters is pushed far behind the camera's near plane: it renders empty.
        trans = torch.as_tensor(np.nan_to_num(params.translation[idx], nan=-1e4), dtype=torch.float32,
                                device=self.device)
        return verts @ rot.transpose(1, 2) + trans[:, None]

    @torch.no_grad()
    def render(self, params: FrameParams, indices: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """Maps (name -> (B, C, S, S)) of frames ``indices``; unusable frames render empty."""
        idx = np.asarray(indices, np.int64)
        cam = self.posed_vertices(params, idx)
        usable = torch.as_tensor(params.usable[idx], device=self.device)
        if not bool(usable.all()):
            cam = torch.where(usable[:, None, None], cam, torch.tensor([0.0, 0.0, -1e4], device=self.device))
        K = torch.as_tensor(params.intrinsics(), device=self.device)
        Kc = crop_intrinsics(K, torch.as_tensor(self.crop_affine(params, idx), dtype=torch.float32,
                                                device=self.device))
        return render_conditioning(cam, self.faces, Kc, canonical_verts=self.canonical, uv=self.uv,
                                   vertex_region=self.region, config=self.config)
