"""A synthetic crop renderer and face track, for tests and benchmarks of the compositing path.

:class:`SyntheticCropRenderer` has the interface of the neural crop renderer
(:class:`engine.render.model.CropRendererLike`) and renders, for each frame, the plate's own
crop with an analytic "face" painted over it: an ellipsoid whose colour is a known tint of
the plate (so a test can tell rendered pixels from plate pixels), with exact conditioning
maps (mask_face, mask_mouth, depth, normal, uv). Optional per-frame noise in the mask
boundary and the colour imitates a network's flicker, so the temporal smoothing can be
measured against a known amount of it. No weights, no training: it isolates the render
stage's own work (decode, matte, paste-back, colour, EXR) from the network's.

:func:`synthetic_params` makes matching :class:`~engine.face.params.FrameParams`: a crop
square per frame that drifts slowly across the plate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from engine.face.crop import crop_affine, warp_to_crop

__all__ = ["SyntheticCropRender", "SyntheticCropRenderer", "synthetic_params"]


@dataclass
class SyntheticCropRender:
    rgb: np.ndarray        # (B, 3, S, S)
    alpha: np.ndarray      # (B, 1, S, S)
    composite: np.ndarray  # (B, 3, S, S)
    maps: dict[str, np.ndarray]
    affine: np.ndarray     # (B, 2, 3)
    context: np.ndarray    # (B, 3, S, S) the plate crops


class SyntheticCropRenderer:
    """``render(params, indices, plate_frames)`` like the neural crop renderer.

    tint: RGB gain applied to the plate inside the face (display-referred).
    mask_jitter: per-frame random change of the face radius (fraction of S): edge flicker.
    colour_jitter: per-frame random brightness gain deviation: region flicker.
    """

    def __init__(self, size: int = 64, *, tint: Sequence[float] = (1.15, 0.9, 0.8), mask_jitter: float = 0.0,
                 colour_jitter: float = 0.0, seed: int = 0) -> None:
        self.size = int(size)
        self.tint = np.asarray(tint, np.float32)
        self.mask_jitter = float(mask_jitter)
        self.colour_jitter = float(colour_jitter)
        self.seed = seed

    def render(self, params, indices: Sequence[int], plate_frames: list[np.ndarray]) -> SyntheticCropRender:
        S = self.size
        idx = np.asarray(indices, np.int64)
        aff = np.asarray(params.crop_affine, np.float64)[idx] * (S / float(params.crop_size))
        px = (np.arange(S, dtype=np.float32) + 0.5) / S
        yy, xx = np.meshgrid(px, px, indexing="ij")
        out = {k: [] for k in ("rgb", "alpha", "composite", "mask_face", "mask_mouth", "depth", "normal", "uv",
                               "context")}
        for a, i, frame in zip(aff, idx, plate_frames):
            rng = np.random.default_rng(self.seed * 100003 + int(params.frame_numbers[i]))
            rad = 0.3 * (1.0 + self.mask_jitter * rng.standard_normal())
            gain = 1.0 + self.colour_jitter * rng.standard_normal()
            crop = warp_to_crop(np.asarray(frame, np.float32), a, S)
            dx, dy = (xx - 0.5) / (0.8 * rad), (yy - 0.52) / rad
            rr = dx * dx + dy * dy
            face = rr < 1.0
            mouth = face & (((xx - 0.5) / 0.1) ** 2 + ((yy - 0.68) / 0.04) ** 2 < 1.0)
            dz = -np.sqrt(np.clip(1.0 - rr, 0.0, None))
            painted = np.clip(crop * self.tint * gain, 0.0, 1.0)
            painted[mouth] = (0.15, 0.05, 0.06)
            rgb = np.where(face[:, :, None], painted, crop)
            out["rgb"].append(rgb.transpose(2, 0, 1))
            out["context"].append(crop.transpose(2, 0, 1))
            out["alpha"].append(face[None].astype(np.float32))
            out["composite"].append(rgb.transpose(2, 0, 1))
            out["mask_face"].append(face[None].astype(np.float32))
            out["mask_mouth"].append(mouth[None].astype(np.float32))
            out["depth"].append(((3.0 + 0.3 * dz) * face)[None].astype(np.float32))
            out["normal"].append((np.stack([dx, dy, dz]) * face).astype(np.float32))
            out["uv"].append((np.stack([xx, yy]) * face).astype(np.float32))
        st = {k: np.stack(v).astype(np.float32) for k, v in out.items()}
        maps = {k: st[k] for k in ("mask_face", "mask_mouth", "depth", "normal", "uv")}
        return SyntheticCropRender(st["rgb"], st["alpha"], st["composite"], maps, aff, st["context"])


def synthetic_params(frame_numbers: Sequence[int], plate_size: tuple[int, int], *, crop_size: int = 256,
                     side_frac: float = 0.45, drift: float = 0.05, usable: Sequence[bool] | None = None):
    """FrameParams whose crops (side ``side_frac`` of the plate height) drift slowly."""
    from engine.face.params import FrameParams

    n = len(frame_numbers)
    w, h = plate_size
    t = np.arange(n, dtype=np.float64)
    center = np.stack([w / 2 + drift * w * np.sin(t / 9.0), h / 2 + drift * h * np.cos(t / 13.0)], 1)
    side = np.full(n, side_frac * h)
    aff = crop_affine(center, side, np.zeros(n), crop_size)
    return FrameParams(frame_numbers=np.asarray(frame_numbers, np.int64), identity=np.zeros(1, np.float32),
                       expression=np.zeros((n, 1), np.float32), rotation=np.zeros((n, 3), np.float32),
                       translation=np.tile(np.array([0, 0, 60], np.float32), (n, 1)), focal=float(max(w, h)),
                       principal_point=np.array([w / 2, h / 2], np.float32), image_size=(int(w), int(h)),
                       crop_affine=aff, crop_size=int(crop_size),
                       usable=np.ones(n, bool) if usable is None else np.asarray(usable, bool))


def write_synthetic_plate(folder, n: int, size: tuple[int, int], *, kind: str = "png", first_frame: int = 1001,
                          fps=24):
    """An image-sequence plate of ``n`` moving-gradient frames: sRGB PNGs (``kind="png"``) or
    half-float ACEScg EXRs (``kind="exr"``). Returns the sequence pattern."""
    from fractions import Fraction
    from pathlib import Path

    import cv2

    from engine.io.exr import write_exr

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        t = float(i)
        r = 0.5 + 0.4 * np.sin(xx / w * 6.0 + 0.2 * t)
        g = 0.5 + 0.4 * np.cos(yy / h * 5.0 - 0.15 * t)
        b = 0.5 + 0.3 * np.sin((xx + yy) / (w + h) * 20.0 + 0.1 * t)
        img = np.clip(np.stack([r, g, b], -1), 0.0, 1.0)
        if kind == "png":
            cv2.imwrite(str(folder / f"plate.{first_frame + i:04d}.png"),
                        np.rint(img * 255).astype(np.uint8)[:, :, ::-1])
        elif kind == "exr":
            write_exr(folder / f"plate.{first_frame + i:04d}.exr", {"rgb": (img ** 2.2 * 0.8).astype(np.float16)},
                      metadata={"framesPerSecond": Fraction(fps)}, overwrite=True)
        else:
            raise ValueError(f"plate kind must be png or exr, got {kind!r}")
    return folder / f"plate.%04d.{kind}"
