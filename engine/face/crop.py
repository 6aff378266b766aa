"""Stable square face crops: a smoothed similarity transform per frame, and the warps.

A crop is a 2x3 similarity ``A`` mapping plate pixels to crop pixels, both under
engine/face/camera.py's convention (continuous coordinates, pixel (row i, col j) centred at
(j + 0.5, i + 0.5); an image W wide spans u in [0, W]). The crop square of side ``s`` plate
pixels centred at ``c`` with roll ``theta`` maps onto [0, S]^2 of an S x S crop::

    crop = M @ plate + t,   M = (S / s) R(-theta),   t = (S/2, S/2) - M @ c

so the square's corners land exactly on the crop image's outer pixel edges. OpenCV's warps
use index coordinates (pixel centre at integers), so the warps convert with
``A_index = T(-0.5) A T(+0.5)``, i.e. ``t_index = t + M @ (0.5, 0.5) - 0.5``.

Framing (which square): the FFHQ alignment recipe (Karras et al. 2019, from the eyes and the
mouth, robust to yaw and pitch): ``extent = max(2 |eye_to_eye|, 1.8 |eye_to_mouth|)`` with
eye centres from the eye corners and the mouth centre from the mouth corners (none of these
move much when talking, unlike the chin), centre ``c = eye_mid + center_offset *
eye_to_mouth`` and side ``s = scale * extent``; ``scale = 2`` is FFHQ's size (the whole face
and some hair). FFHQ's ``center_offset`` is 0.1; our default 0.3 moves the crop down so the
mesh (hairline to chin) sits near the middle with room for the jaw to open. Centre, side and (optionally) roll are smoothed over time in units of
the track's median extent, so the smoothing settings do not depend on the plate resolution.
Frames without a usable face hold the nearest usable frame's crop (flagged ``valid=False``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import cv2
import numpy as np

from engine.errors import ConfigError, MediaError
from engine.face import landmarks as lm
from engine.face.smoothing import SmoothingConfig, smooth


def _default_crop_smoothing() -> SmoothingConfig:
    # Units are face extents (module doc). At rest the crop follows with a 0.5 Hz cutoff
    # (landmark jitter of ~0.3 px / 120 px extent disappears); at a brisk head move of
    # 1 extent/s the cutoff opens to ~2.5 Hz, so the face drifts < 0.1 extent off-centre.
    return SmoothingConfig(kind="one_euro", min_cutoff=0.5, beta=2.0, d_cutoff=1.0)


@dataclass
class CropConfig:
    size: int = 256              # crop resolution S (square)
    scale: float = 2.0           # side = scale * extent (2.0: FFHQ framing)
    center_offset: float = 0.3   # crop centre below the eye midpoint, in eye-to-mouth units
    rotate: bool = False         # follow head roll (FFHQ) or keep the crop upright (stabler)
    border: str = "pad"          # 'pad': keep framing, pad outside the plate; 'shift': stay inside
    smoothing: SmoothingConfig = field(default_factory=_default_crop_smoothing)

    def validate(self) -> None:
        if self.size < 8:
            raise ConfigError(f"crop.size must be >= 8 pixels, got {self.size}")
        if not self.scale > 0:
            raise ConfigError(f"crop.scale must be > 0, got {self.scale}")
        if self.border not in ("pad", "shift"):
            raise ConfigError(f"crop.border must be 'pad' or 'shift', got {self.border!r}")
        self.smoothing.validate()


# ---------------------------------------------------------------------------------------
# Affine helpers (all (..., 2, 3) float64)
# ---------------------------------------------------------------------------------------
def crop_affine(center, side, angle, size: int) -> np.ndarray:
    """Plate -> crop similarity for squares centred at ``center`` (..., 2) with ``side``
    (...) plate pixels and roll ``angle`` (...) radians: the direction of the face's
    horizontal axis measured from +u towards +v (clockwise on screen, v points down)."""
    center = np.asarray(center, np.float64)
    side = np.asarray(side, np.float64)
    angle = np.asarray(angle, np.float64)
    k = size / side
    cos, sin = np.cos(angle) * k, np.sin(angle) * k
    # R(-theta): the face's horizontal axis (cos theta, sin theta) maps onto the crop's +u.
    m = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], -2)
    t = size / 2.0 - np.einsum("...ij,...j->...i", m, center)
    return np.concatenate([m, t[..., None]], -1)


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """Inverse of (..., 2, 3) affines (crop -> plate for a crop affine)."""
    a = np.asarray(affine, np.float64)
    minv = np.linalg.inv(a[..., :2, :2])
    t = -np.einsum("...ij,...j->...i", minv, a[..., :2, 2])
    return np.concatenate([minv, t[..., None]], -1)


def apply_affine(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Map (..., K, 2+) points (extra columns such as z are dropped) by (..., 2, 3)."""
    p = np.asarray(points, np.float64)[..., :2]
    a = np.asarray(affine, np.float64)
    return np.einsum("...ij,...kj->...ki", a[..., :2, :2], p) + a[..., None, :2, 2]


def plate_to_crop(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Plate pixels -> crop pixels. points (..., K, 2), affine (..., 2, 3)."""
    return apply_affine(points, affine)


def crop_to_plate(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Crop pixels -> plate pixels (``affine`` is the plate -> crop map)."""
    return apply_affine(points, invert_affine(affine))


def _to_index_affine(affine: np.ndarray) -> np.ndarray:
    # pixel-centre (+0.5) convention -> OpenCV index convention on both sides
    a = np.array(affine, np.float64, copy=True)
    a[:, 2] = a[:, 2] + a[:, :2] @ np.array([0.5, 0.5]) - 0.5
    return a


# ---------------------------------------------------------------------------------------
# Crop track
# ---------------------------------------------------------------------------------------
@dataclass
class CropTrack:
    """Per-frame crops. ``affine`` maps plate -> crop pixels; ``valid`` is False on frames
    whose crop was held from a neighbour (no usable face) or is the fallback centre crop."""

    affine: np.ndarray        # (N, 2, 3) float64
    center: np.ndarray        # (N, 2) plate pixels
    side: np.ndarray          # (N,) plate pixels
    angle: np.ndarray         # (N,) radians
    valid: np.ndarray         # (N,) bool
    size: int                 # crop resolution S
    plate_size: tuple[int, int]  # (W, H)

    def __len__(self) -> int:
        return int(self.affine.shape[0])

    @property
    def inverse(self) -> np.ndarray:
        """(N, 2, 3) crop -> plate affines."""
        return invert_affine(self.affine)

    @property
    def boxes(self) -> np.ndarray:
        """(N, 4) (u0, v0, u1, v1) of the (unrotated) crop square in plate pixels."""
        h = self.side[:, None] / 2.0
        return np.concatenate([self.center - h, self.center + h], axis=1)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"affine": self.affine, "center": self.center, "side": self.side, "angle": self.angle,
                "valid": self.valid, "size": np.asarray(self.size), "plate_size": np.asarray(self.plate_size)}

    @classmethod
    def from_arrays(cls, a) -> "CropTrack":
        return cls(np.asarray(a["affine"], np.float64), np.asarray(a["center"], np.float64),
                   np.asarray(a["side"], np.float64), np.asarray(a["angle"], np.float64),
                   np.asarray(a["valid"], bool), int(a["size"]), tuple(int(v) for v in a["plate_size"]))


def face_frame(points: np.ndarray, center_offset: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FFHQ-style framing from (..., 478, 2+) landmarks: (center (..., 2), extent (...),
    roll angle (...)). NaN where the points are NaN."""
    p = np.asarray(points, np.float64)[..., :2]
    eye_r = p[..., [lm.RIGHT_EYE_OUTER, lm.RIGHT_EYE_INNER], :].mean(-2)
    eye_l = p[..., [lm.LEFT_EYE_OUTER, lm.LEFT_EYE_INNER], :].mean(-2)
    mouth = p[..., list(lm.MOUTH_CORNERS), :].mean(-2)
    eye_mid = (eye_r + eye_l) / 2
    e2e = eye_l - eye_r                   # subject's right -> left eye: image-right when frontal
    e2m = mouth - eye_mid
    extent = np.maximum(2.0 * np.linalg.norm(e2e, axis=-1), 1.8 * np.linalg.norm(e2m, axis=-1))
    # FFHQ's horizontal axis: eye-to-eye direction blended with the mouth's perpendicular
    xdir = e2e + np.stack([e2m[..., 1], -e2m[..., 0]], -1)
    angle = np.arctan2(xdir[..., 1], xdir[..., 0])
    return eye_mid + center_offset * e2m, extent, angle


def _hold(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill invalid frames with the previous valid value (the next one before the first)."""
    idx = np.where(valid, np.arange(valid.size), -1)
    idx = np.maximum.accumulate(idx)
    first = int(np.argmax(valid))
    idx[idx < 0] = first
    return values[idx]


def compute_crops(landmark_track, plate_size: tuple[int, int], config: CropConfig | None,
                  fps: float | Fraction, valid: np.ndarray | None = None) -> CropTrack:
    """Smoothed per-frame crops from a :class:`~engine.face.landmarks.LandmarkTrack` (or an
    (N, 478, 2+) array of points with an optional ``valid`` mask). ``plate_size`` is (W, H)
    of the frames the landmarks are in; ``config=None`` takes the defaults."""
    config = config or CropConfig()
    config.validate()
    if isinstance(landmark_track, lm.LandmarkTrack):
        points = landmark_track.points
        usable = landmark_track.usable
    else:
        points = np.asarray(landmark_track)
        usable = np.ones(points.shape[0], bool)
    if valid is not None:
        usable = usable & np.asarray(valid, bool)
    if points.ndim != 3 or points.shape[1] < lm.NUM_MESH_VERTICES:
        raise ConfigError(f"compute_crops needs (N, 478, 2+) landmarks, got shape {points.shape}")
    width, height = (int(v) for v in plate_size)
    n = points.shape[0]
    center, extent, angle = face_frame(points, config.center_offset)
    if not config.rotate:
        angle = np.zeros(n)
    ok = usable & np.isfinite(center).all(-1) & np.isfinite(extent) & (extent > 0)

    if not ok.any():
        # No face anywhere: a centred crop of the largest square in the plate, flagged.
        side = np.full(n, float(min(width, height)))
        center = np.tile([width / 2.0, height / 2.0], (n, 1))
        angle = np.zeros(n)
    else:
        ref = float(np.median(extent[ok]))
        signals = np.concatenate([center / ref, (config.scale * extent / ref)[:, None], angle[:, None]], 1)
        signals = smooth(signals, config.smoothing, fps, valid=ok)
        signals = _hold(signals, ok)
        center, side, angle = signals[:, :2] * ref, signals[:, 2] * ref, signals[:, 3]

    if config.border == "shift":
        center, side = _shift_inside(center, side, angle, width, height)
    affine = crop_affine(center, side, angle, config.size)
    return CropTrack(affine, center, side, angle, ok, int(config.size), (width, height))


def _shift_inside(center, side, angle, width, height):
    """Move (and if needed shrink) each crop so its footprint lies inside the plate."""
    c = np.abs(np.cos(angle)) + np.abs(np.sin(angle))   # footprint half-width per half-side
    max_side = min(width, height) / c
    side = np.minimum(side, max_side)
    half = side / 2.0 * c
    cu = np.clip(center[:, 0], half, width - half)
    cv = np.clip(center[:, 1], half, height - half)
    return np.stack([cu, cv], 1), side


# ---------------------------------------------------------------------------------------
# Warps
# ---------------------------------------------------------------------------------------
_BORDERS = {"replicate": cv2.BORDER_REPLICATE, "constant": cv2.BORDER_CONSTANT, "reflect": cv2.BORDER_REFLECT_101}


def _warp(src: np.ndarray, affine: np.ndarray, dst_wh: tuple[int, int], border: str, value: float,
          antialias: bool) -> np.ndarray:
    """Warp ``src`` by the src -> dst pixel-centre affine into a dst_wh image."""
    if border not in _BORDERS:
        raise ConfigError(f"warp border must be one of {', '.join(_BORDERS)}, got {border!r}")
    if src.ndim not in (2, 3):
        raise MediaError(f"cannot warp an image of shape {src.shape}")
    a = np.asarray(affine, np.float64)
    inv = invert_affine(a)                    # dst -> src (continuous)
    inv_idx = _to_index_affine(inv)           # dst index -> src index
    orig_dtype = src.dtype
    work = src.astype(np.float32) if src.dtype in (np.float16, np.bool_) else src
    # Downsampling (more than one src pixel per dst pixel) aliases with bilinear taps: blur
    # the source first with sigma = (k - 1) / 2 as skimage.transform.rescale does.
    k = float(np.sqrt(abs(np.linalg.det(inv[:, :2]))))
    if antialias and k > 1.0 + 1e-6:
        sigma = (k - 1.0) / 2.0
        dw, dh = dst_wh
        corners = np.array([[0, 0], [dw, 0], [0, dh], [dw, dh]], np.float64)
        fp = corners @ inv[:, :2].T + inv[:, 2]
        margin = int(np.ceil(4 * sigma)) + 2  # cv2's Gaussian kernel radius is ~4 sigma
        h, w = src.shape[:2]
        x0 = int(np.clip(np.floor(fp[:, 0].min()) - margin, 0, w))
        x1 = int(np.clip(np.ceil(fp[:, 0].max()) + margin, 0, w))
        y0 = int(np.clip(np.floor(fp[:, 1].min()) - margin, 0, h))
        y1 = int(np.clip(np.ceil(fp[:, 1].max()) + margin, 0, h))
        if x1 > x0 and y1 > y0:
            # Warp from the blurred ROI alone: the margin keeps every bilinear tap inside it,
            # and where the ROI is clipped it ends at the plate's own edge, so the border rule
            # still applies exactly where the plate ends.
            work = cv2.GaussianBlur(np.ascontiguousarray(work[y0:y1, x0:x1]), (0, 0), sigma,
                                    borderType=cv2.BORDER_REPLICATE)
            inv_idx = inv_idx.copy()
            inv_idx[:, 2] -= (x0, y0)
    channels = 1 if work.ndim == 2 else work.shape[2]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    bval = (float(value),) * 4

    def one(img):
        return cv2.warpAffine(np.ascontiguousarray(img), inv_idx, tuple(int(v) for v in dst_wh), flags=flags,
                              borderMode=_BORDERS[border], borderValue=bval)
    if channels <= 4:
        out = one(work)
    else:  # OpenCV warps at most 4 channels at a time
        out = np.concatenate([one(work[:, :, i:i + 4]).reshape(dst_wh[1], dst_wh[0], -1)
                              for i in range(0, channels, 4)], axis=2)
    out = out.reshape((int(dst_wh[1]), int(dst_wh[0])) + src.shape[2:])  # cv2 drops a 1-channel axis
    return out.astype(orig_dtype, copy=False) if out.dtype != orig_dtype else out


def warp_to_crop(frame: np.ndarray, affine: np.ndarray, size: int, border: str = "replicate",
                 value: float = 0.0, antialias: bool = True) -> np.ndarray:
    """Resample a plate frame (H, W[, C]) into the S x S crop given by ``affine`` (bilinear,
    anti-aliased when the crop downsamples). Outside the plate: ``border`` rule."""
    return _warp(frame, affine, (size, size), border, value, antialias)


def inverse_warp(crop_img: np.ndarray, affine: np.ndarray, plate_size: tuple[int, int],
                 border: str = "replicate", antialias: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Resample a crop back to plate resolution. Returns (image (H, W[, C]), mask (H, W)
    bool), the mask True where the plate pixel centre maps inside the crop's interpolation
    support (between the centres of its outer pixels), i.e. where the image is real data."""
    width, height = (int(v) for v in plate_size)
    size = crop_img.shape[0]
    if crop_img.shape[1] != size:
        raise MediaError(f"crop image must be square, got {crop_img.shape[:2]}")
    image = _warp(crop_img, invert_affine(affine), (width, height), border, 0.0, antialias)
    return image, crop_mask(affine, size, plate_size)


def crop_mask(affine: np.ndarray, size: int, plate_size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: plate pixels whose centre maps to crop coordinates in [0.5, S - 0.5]."""
    width, height = (int(v) for v in plate_size)
    a = np.asarray(affine, np.float64)
    mask = np.zeros((height, width), bool)
    # evaluate only over the crop's footprint box
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64)
    fp = apply_affine(corners, invert_affine(a))
    x0 = int(np.clip(np.floor(fp[:, 0].min()), 0, width))
    x1 = int(np.clip(np.ceil(fp[:, 0].max()) + 1, 0, width))
    y0 = int(np.clip(np.floor(fp[:, 1].min()), 0, height))
    y1 = int(np.clip(np.ceil(fp[:, 1].max()) + 1, 0, height))
    if x1 <= x0 or y1 <= y0:
        return mask
    uu, vv = np.meshgrid(np.arange(x0, x1) + 0.5, np.arange(y0, y1) + 0.5)
    cu = a[0, 0] * uu + a[0, 1] * vv + a[0, 2]
    cv = a[1, 0] * uu + a[1, 1] * vv + a[1, 2]
    lo, hi = 0.5 - 1e-9, size - 0.5 + 1e-9
    mask[y0:y1, x0:x1] = (cu >= lo) & (cu <= hi) & (cv >= lo) & (cv <= hi)
    return mask


def paste_back(plate: np.ndarray, crop_img: np.ndarray, affine: np.ndarray,
               matte: np.ndarray | None = None) -> np.ndarray:
    """Composite a crop over its plate: ``plate*(1-a) + warped*a`` with ``a`` the crop's
    validity mask times the (optional, crop-space, [0, 1]) matte warped to the plate."""
    height, width = plate.shape[:2]
    warped, mask = inverse_warp(crop_img, affine, (width, height))
    alpha = mask.astype(np.float32)
    if matte is not None:
        m, _ = inverse_warp(np.asarray(matte, np.float32), affine, (width, height), border="constant")
        alpha *= np.clip(m.reshape(height, width), 0.0, 1.0)
    if plate.ndim == 3:
        alpha = alpha[:, :, None]
        warped = warped.reshape(height, width, -1)
    out = plate.astype(np.float32) * (1.0 - alpha) + warped.astype(np.float32) * alpha
    if np.issubdtype(plate.dtype, np.integer):
        info = np.iinfo(plate.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(plate.dtype)
