"""Paste-back at plate resolution: the crop render, its mattes and AOVs back into the plate.

The neural renderer works in a square crop (a plate -> crop similarity per frame,
:mod:`engine.face.crop`). Compositing happens at plate resolution, in two spaces:

* **crop space** (S x S, cheap): the matte is built where the face model's mask is crisp.
  ``mask_face`` is the rasterised model silhouette, which runs through hair line, ears and
  jaw line -- exactly where a network's paint disagrees with the plate. The matte is a
  smoothstep of the *distance inside* the silhouette: 0 up to ``inset`` (so the seam sits
  inside skin, never on the silhouette), rising to 1 over ``feather``. A person
  segmentation (MediaPipe selfie segmentation, run on the display-referred crop) multiplies
  it, so wherever the fitted mesh spills over background (a jaw fitted a little wide, a head
  turned against the sky) the plate stays. Temporal filtering (:mod:`engine.render.temporal`)
  happens here too: the crop is stabilised on the face, so crop coordinates are
  motion-compensated face coordinates.
* **plate space**: only inside the bounding box of the crop's footprint; everything outside
  it is never touched. The composite is ``plate * (1 - m) + render * m`` where ``m > 0`` and
  the plate's own values where ``m == 0`` (chosen by mask, not computed: bit-identical).

AOVs (depth, normals, UVs) are resampled with normalised interpolation -- ``warp(x * mask) /
warp(mask)``, cut where the warped mask is below 0.5 -- so silhouette pixels never blend a
depth with the 0 of the background.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from engine.errors import ConfigError
from engine.face.crop import apply_affine, inverse_warp, invert_affine

__all__ = ["MatteConfig", "SelfieSegmenter", "fill_holes", "face_matte", "mouth_matte", "lower_face_weight", "footprint_box",
           "box_affine", "PlateBox", "paste_image", "paste_matte", "paste_aov", "paste_layers", "PastedLayers", "crop_region_box",
           "composite_over"]

log = logging.getLogger(__name__)


@dataclass
class MatteConfig:
    """The compositing matte, in fractions of the crop size S (resolution independent).

    inset: where the matte reaches 0, measured inside the face-model silhouette.
    feather: width of the 0 -> 1 ramp (smoothstep) beyond ``inset``.
    segmentation: "selfie" (MediaPipe selfie segmentation keeps background out) or "none".
    seg_low / seg_high: person probability mapped to matte factor 0 / 1 (linear between).
    seg_core: depth inside the matte's ramp (fraction of S) beyond which segmentation is
    ignored: it trims the matte's edge where the mesh spills onto background, and can never
    remove the interior of the face (a segmentation miss costs an edge, not the face).
    mouth_feather: Gaussian sigma softening the mouth matte (``matte.mouth``).
    region: "face" composites the whole face; "mouth" (a dub that replaces only lips and jaw)
    limits the matte to a lower-face ellipse around the lips (semi-axes ``lower_face`` x the
    face's width / height, ramping to 0 over ``lower_face_feather`` x its height), so the
    plate's own eyes and brows stay.
    """

    inset: float = 0.02
    feather: float = 0.05
    segmentation: str = "selfie"
    seg_low: float = 0.15
    seg_high: float = 0.6
    seg_core: float = 0.06
    mouth_feather: float = 0.006
    region: str = "face"
    lower_face: tuple[float, float] = (0.42, 0.2)
    lower_face_feather: float = 0.08

    def validate(self) -> None:
        if not (0 <= self.inset < 0.5 and 0 < self.feather < 0.5):
            raise ConfigError(f"matte inset must be in [0, 0.5) and feather in (0, 0.5), "
                              f"got {self.inset}, {self.feather}")
        if self.segmentation not in ("selfie", "none"):
            raise ConfigError(f"matte segmentation must be 'selfie' or 'none', got {self.segmentation!r}")
        if self.region not in ("face", "mouth"):
            raise ConfigError(f"matte region must be 'face' or 'mouth', got {self.region!r}")
        if not 0 <= self.seg_low < self.seg_high <= 1:
            raise ConfigError("matte seg_low must be < seg_high, both in [0, 1]")


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return (x * x * (3.0 - 2.0 * x)).astype(np.float32)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """(S, S) bool: ``mask`` with every enclosed hole filled. Face meshes have openings at the
    eyes and the mouth (no eyeball or mouth-interior geometry in many models): those belong
    to the face the network paints, so the matte must not cut them out."""
    inside = (np.asarray(mask) > 0.5).astype(np.uint8)
    padded = np.pad(inside, 1)
    # Flood the background from the (padded) border; whatever it does not reach is face.
    flood = padded.copy()
    ff_mask = np.zeros((flood.shape[0] + 2, flood.shape[1] + 2), np.uint8)
    cv2.floodFill(flood, ff_mask, (0, 0), 2)
    return (flood != 2)[1:-1, 1:-1]


def face_matte(mask_face: np.ndarray, config: MatteConfig, person: np.ndarray | None = None,
               lips: np.ndarray | None = None) -> np.ndarray:
    """(S, S) float32 matte in [0, 1] from the (S, S) face-model mask (and an optional
    (S, S) person probability; ``lips``: the face model's lips region, used by
    ``region="mouth"``). Exactly 0 within ``inset * S`` of the silhouette."""
    size = mask_face.shape[0]
    inside = fill_holes(mask_face).astype(np.uint8)
    if not inside.any():
        return np.zeros(mask_face.shape, np.float32)
    # Distance (in crop pixels) of each inside pixel to the nearest outside pixel. A mask that
    # touches the crop's border would count the border as inside: pad with outside so the
    # distance is measured to the crop edge too (the crop ends there; nothing to blend with).
    padded = np.pad(inside, 1)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    feather = max(config.feather * size, 1e-6)
    matte = _smoothstep((dist - config.inset * size) / feather)
    if person is not None:
        p = np.asarray(person, np.float32)
        gate = np.clip((p - config.seg_low) / (config.seg_high - config.seg_low), 0.0, 1.0)
        core = _smoothstep((dist - (config.inset + config.feather + config.seg_core) * size) / feather)
        matte = matte * np.maximum(gate, core)
    if config.region == "mouth":
        matte = matte * lower_face_weight(mask_face, lips, config)
    return matte.astype(np.float32)


def lower_face_weight(mask_face: np.ndarray, lips: np.ndarray | None, config: MatteConfig) -> np.ndarray:
    """(S, S) weight in [0, 1]: 1 in an ellipse around the lips covering lips, cheeks' lower
    half and jaw, 0 above the nose line. The ellipse is sized by the face mask's extent and
    centred on the lips (their centroid; without lips pixels -- a closed mouth in a model
    without a lips region -- 78 % of the way down the face)."""
    face = np.asarray(mask_face) > 0.5
    ys, xs = np.nonzero(face)
    if ys.size == 0:
        return np.zeros(face.shape, np.float32)
    fw, fh = float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)
    if lips is not None and (np.asarray(lips) > 0.5).any():
        ly, lx = np.nonzero(np.asarray(lips) > 0.5)
        cx, cy = float(lx.mean()), float(ly.mean())
    else:
        cx, cy = float(xs.mean()), float(ys.min() + 0.78 * fh)
    rx, ry = config.lower_face[0] * fw, config.lower_face[1] * fh
    px = np.arange(face.shape[1], dtype=np.float32) + 0.5
    py = np.arange(face.shape[0], dtype=np.float32) + 0.5
    # Extend the ellipse's lower half downwards without limit: the chin and jaw belong to the
    # mouth region however far the jaw drops.
    dy = (py[:, None] - cy) / ry
    dy = np.where(dy > 0, 0.0, dy)
    r = np.sqrt(((px[None, :] - cx) / rx) ** 2 + dy ** 2)
    ramp = config.lower_face_feather * fh / max(ry, 1e-6)
    return _smoothstep((1.0 - r) / max(ramp, 1e-6) + 1.0)


def mouth_matte(mask_mouth: np.ndarray, config: MatteConfig, mask_face: np.ndarray | None = None,
                lips: np.ndarray | None = None) -> np.ndarray:
    """(S, S) soft mouth matte: the face model's mouth interior, plus -- for a mesh with an
    open mouth and no interior geometry -- the hole of the face mask that the lips enclose;
    lightly feathered."""
    m = np.asarray(mask_mouth, np.float32)
    if mask_face is not None and lips is not None and (np.asarray(lips) > 0.5).any():
        holes = fill_holes(mask_face) & ~(np.asarray(mask_face) > 0.5)
        near_lips = cv2.dilate((np.asarray(lips) > 0.5).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        n, labels = cv2.connectedComponents(holes.astype(np.uint8))
        hit = set(np.unique(labels[near_lips & holes]).tolist()) - {0}
        if hit:
            m = np.maximum(m, np.isin(labels, list(hit)).astype(np.float32))
    sigma = config.mouth_feather * m.shape[0]
    if sigma > 0.3 and m.any():
        m = cv2.GaussianBlur(m, (0, 0), sigma)
    return np.clip(m, 0.0, 1.0).astype(np.float32)


class SelfieSegmenter:
    """MediaPipe 0.10.21 selfie segmentation (``mediapipe.solutions.selfie_segmentation``;
    the model ships inside the wheel). Person probability per pixel of an RGB image; the
    graph is built lazily, once per process. ``model_selection`` 0: the general model
    (256 x 256 input), right for a face crop."""

    def __init__(self, model_selection: int = 0) -> None:
        self.model_selection = model_selection
        self._seg: Any = None

    def __call__(self, rgb_display: np.ndarray) -> np.ndarray:
        if self._seg is None:
            from mediapipe.python.solutions.selfie_segmentation import SelfieSegmentation
            self._seg = SelfieSegmentation(model_selection=self.model_selection)
        img = np.clip(np.rint(np.asarray(rgb_display, np.float32) * 255.0), 0, 255).astype(np.uint8)
        res = self._seg.process(np.ascontiguousarray(img))
        mask = res.segmentation_mask
        if mask is None:  # pragma: no cover - mediapipe returns a mask for every image
            return np.ones(img.shape[:2], np.float32)
        return np.asarray(mask, np.float32)

    def close(self) -> None:
        if self._seg is not None:
            self._seg.close()
            self._seg = None

    def __getstate__(self) -> dict[str, Any]:
        return {"model_selection": self.model_selection, "_seg": None}


# ---------------------------------------------------------------------------------------
# plate-space boxes
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlateBox:
    """A pixel box of the plate, [x0, x1) x [y0, y1)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def empty(self) -> bool:
        return self.x1 <= self.x0 or self.y1 <= self.y0

    @property
    def size(self) -> tuple[int, int]:
        return (self.x1 - self.x0, self.y1 - self.y0)

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def union(self, other: "PlateBox") -> "PlateBox":
        if self.empty:
            return other
        if other.empty:
            return self
        return PlateBox(min(self.x0, other.x0), min(self.y0, other.y0), max(self.x1, other.x1),
                        max(self.y1, other.y1))


def footprint_box(affine: np.ndarray, size: int, plate_size: tuple[int, int], margin: int = 2) -> PlateBox:
    """Plate pixels that can receive data from the S x S crop of ``affine`` (plate -> crop)."""
    width, height = (int(v) for v in plate_size)
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64)
    fp = apply_affine(corners, invert_affine(np.asarray(affine, np.float64)))
    x0 = int(np.clip(np.floor(fp[:, 0].min()) - margin, 0, width))
    x1 = int(np.clip(np.ceil(fp[:, 0].max()) + margin, 0, width))
    y0 = int(np.clip(np.floor(fp[:, 1].min()) - margin, 0, height))
    y1 = int(np.clip(np.ceil(fp[:, 1].max()) + margin, 0, height))
    return PlateBox(x0, y0, max(x0, x1), max(y0, y1))


def box_affine(affine: np.ndarray, box: PlateBox) -> np.ndarray:
    """The plate -> crop affine re-expressed for box-local plate pixels (origin at the box's
    top-left pixel edge): ``A(p + o) = M p + (t + M o)``."""
    a = np.array(affine, np.float64, copy=True)
    a[:, 2] = a[:, 2] + a[:, :2] @ np.array([box.x0, box.y0], np.float64)
    return a


def paste_image(crop_img: np.ndarray, affine: np.ndarray, box: PlateBox) -> tuple[np.ndarray, np.ndarray]:
    """Crop image (S, S[, C]) -> (box image (h, w[, C]) float32, validity (h, w) bool)."""
    w, h = box.size
    img, valid = inverse_warp(np.asarray(crop_img, np.float32), box_affine(affine, box), (w, h))
    return img.astype(np.float32, copy=False), valid


def paste_matte(crop_matte: np.ndarray, affine: np.ndarray, box: PlateBox) -> np.ndarray:
    """A crop-space matte in plate space (box-local); 0 outside the crop's support."""
    w, h = box.size
    m, valid = inverse_warp(np.asarray(crop_matte, np.float32), box_affine(affine, box), (w, h),
                            border="constant")
    m = np.clip(m, 0.0, 1.0) * valid
    # Interpolation leaves ~1e-8 dust where the crop matte is 0: a matte is a promise about
    # which plate pixels change, and a 1e-4 blend is invisible even in half-float colour.
    m[m < 1e-4] = 0.0
    return m.astype(np.float32)


def paste_aov(crop_aov: np.ndarray, mask: np.ndarray, affine: np.ndarray, box: PlateBox) -> np.ndarray:
    """An AOV (S, S, C) defined where ``mask`` (S, S) > 0.5, resampled by normalised
    interpolation; 0 where the warped mask is below 0.5 or outside the crop."""
    w, h = box.size
    m = (np.asarray(mask) > 0.5).astype(np.float32)
    aov = np.asarray(crop_aov, np.float32)
    if aov.ndim == 2:
        aov = aov[:, :, None]
    stacked = np.concatenate([aov * m[:, :, None], m[:, :, None]], axis=2)
    warped, valid = inverse_warp(stacked, box_affine(affine, box), (w, h), border="constant")
    warped = warped.reshape(h, w, -1)
    wm = warped[:, :, -1]
    keep = (wm > 0.5) & valid
    out = np.zeros((h, w, aov.shape[2]), np.float32)
    out[keep] = warped[keep, :-1] / wm[keep, None]
    return out


@dataclass
class PastedLayers:
    """Crop-space layers resampled into plate boxes (box-local arrays): the render over the
    crop's whole footprint ``box``, the mattes and AOVs over ``face_box`` (the part of the
    footprint where any of them is non-zero; empty when none is)."""

    box: PlateBox
    valid: np.ndarray                  # (h, w) bool over box: inside the crop's interpolation support
    render: np.ndarray                 # (h, w, 3) over box
    face_box: PlateBox
    mattes: list[np.ndarray]           # each (fh, fw) over face_box, 0 outside the support
    aov: np.ndarray | None             # (fh, fw, C) over face_box, 0 off the AOV mask

    def render_in(self, sub: PlateBox) -> np.ndarray:
        """The render cut to ``sub`` (a box inside ``box``)."""
        return self.render[sub.y0 - self.box.y0:sub.y1 - self.box.y0, sub.x0 - self.box.x0:sub.x1 - self.box.x0]


def crop_region_box(masks: list[np.ndarray], affine: np.ndarray, within: PlateBox, margin: int = 2) -> PlateBox:
    """The plate box (inside ``within``) receiving the crop pixels where any mask is non-zero."""
    region = np.zeros(np.asarray(masks[0]).shape[:2], bool)
    for m in masks:
        region |= np.asarray(m) > 0
    if not region.any() or within.empty:
        return PlateBox(within.x0, within.y0, within.x0, within.y0)
    ys, xs = np.nonzero(region)
    # crop pixel edges of the region, one pixel wider for the bilinear taps' reach
    x0, x1 = xs.min() - 1.0, xs.max() + 2.0
    y0, y1 = ys.min() - 1.0, ys.max() + 2.0
    corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], np.float64)
    fp = apply_affine(corners, invert_affine(np.asarray(affine, np.float64)))
    bx0 = int(np.clip(np.floor(fp[:, 0].min()) - margin, within.x0, within.x1))
    bx1 = int(np.clip(np.ceil(fp[:, 0].max()) + margin, within.x0, within.x1))
    by0 = int(np.clip(np.floor(fp[:, 1].min()) - margin, within.y0, within.y1))
    by1 = int(np.clip(np.ceil(fp[:, 1].max()) + margin, within.y0, within.y1))
    return PlateBox(bx0, by0, max(bx0, bx1), max(by0, by1))


def paste_layers(render: np.ndarray, mattes: list[np.ndarray], affine: np.ndarray, box: PlateBox,
                 aov: np.ndarray | None = None, aov_mask: np.ndarray | None = None) -> PastedLayers:
    """Everything a frame pastes, in two resampling passes: equivalent to :func:`paste_image`
    over ``box``, :func:`paste_matte` per matte and :func:`paste_aov` -- but those only over
    the face's part of the footprint (typically half of it), with the stacked channels warped
    together and the crop's validity mask computed once per box. (Inside the support every
    bilinear tap is a crop pixel, so the border rule only matters where ``valid`` is False,
    and those pixels are zeroed.)"""
    w, h = box.size
    rgb, valid = inverse_warp(np.asarray(render, np.float32), box_affine(affine, box), (w, h), border="constant")
    rgb = rgb.reshape(h, w, 3) * valid[:, :, None]
    regions = [np.asarray(m) for m in mattes] + ([np.asarray(aov_mask) > 0.5] if aov is not None else [])
    face_box = crop_region_box(regions, affine, box)
    fw, fh = face_box.size
    parts = [np.asarray(m, np.float32)[:, :, None] for m in mattes]
    n_aov = 0
    if aov is not None:
        m = (np.asarray(aov_mask) > 0.5).astype(np.float32)[:, :, None]
        a = np.asarray(aov, np.float32)
        a = a[:, :, None] if a.ndim == 2 else a
        parts += [a * m, m]
        n_aov = a.shape[2]
    n_ch = sum(p.shape[2] for p in parts)
    if face_box.empty:
        warped, fvalid = np.zeros((fh, fw, n_ch), np.float32), np.zeros((fh, fw), bool)
    else:
        stacked = np.ascontiguousarray(np.concatenate(parts, 2))
        warped, fvalid = inverse_warp(stacked, box_affine(affine, face_box), (fw, fh), border="constant")
        warped = warped.reshape(fh, fw, -1)
    out_mattes = []
    for k in range(len(mattes)):
        mk = np.clip(warped[:, :, k], 0.0, 1.0) * fvalid
        mk[mk < 1e-4] = 0.0        # see paste_matte
        out_mattes.append(mk.astype(np.float32))
    out_aov = None
    if n_aov:
        base = len(mattes)
        wm = warped[:, :, base + n_aov]
        keep = (wm > 0.5) & fvalid
        out_aov = np.zeros((fh, fw, n_aov), np.float32)
        out_aov[keep] = warped[keep, base:base + n_aov] / wm[keep, None]
    return PastedLayers(box, valid, rgb.astype(np.float32), face_box, out_mattes, out_aov)


def composite_over(plate: np.ndarray, render: np.ndarray, matte: np.ndarray, box: PlateBox) -> np.ndarray:
    """``plate`` (H, W, 3) with ``render`` (box h, w, 3) over it by ``matte`` (box h, w):
    a new array whose pixels with matte 0 are the plate's, bit for bit."""
    out = np.array(plate, dtype=np.float32, copy=True)
    if box.empty:
        return out
    ys, xs = box.slices
    sub = out[ys, xs]
    m = matte[:, :, None]
    blended = sub * (1.0 - m) + render * m
    out[ys, xs] = np.where(m > 0.0, blended, sub)
    return out
