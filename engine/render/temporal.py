"""Temporal smoothing for compositing, and the flicker metric that checks it.

Per-frame networks and per-frame mattes flicker: a matte edge that moves by a pixel from
frame to frame, or a face whose overall brightness wobbles by a percent, is invisible on a
still and obvious in motion. Both are filtered over time *in crop space*: the crop track is
smoothed and centred on the face (:mod:`engine.face.crop`), so a crop pixel is, to first
order, the same point of the face in neighbouring frames -- the crop is the motion
compensation, and a plain per-pixel temporal filter there does not smear a moving head
(filtering in plate space would).

* the **matte** is averaged with Gaussian weights over ``matte_sigma`` frames;
* the **low frequencies of the render's difference to the plate** (a Gaussian blur of
  ``lowpass`` x S: shading and skin tone, not detail) are averaged the same way and swapped
  in for the frame's own. Filtering the *difference* (render - plate crop), not the render,
  matters: the plate's own changes (a light flicking on, a shadow crossing the face) pass
  through untouched, and only the network's frame-to-frame wobble around them is removed;
  detail stays sharp. The mouth is excluded (``keep``): its shape changes every frame by
  design. (The "temporal low-pass of the base layer" of video tone mapping and of blind
  video consistency methods, e.g. Lai et al. 2018 "Learning Blind Video Temporal
  Consistency", whose metric is also a frame-difference energy.)

The filter is centred (``mode="centred"``, no lag) or causal, with support
``radius = ceil(3 sigma)`` frames. A chunk renders ``radius`` extra frames either side of its
own (clamped to the shot) so each output frame sees exactly the neighbours it would see in a
whole-shot render: chunk boundaries are seamless by construction. Frames with no face count
as matte 0 in their neighbours' averages (the face fades in and out instead of popping) and
are forced to 0 themselves (pass-through stays exact).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import cv2
import numpy as np

from engine.errors import ConfigError

__all__ = ["TemporalConfig", "temporal_weights", "smooth_sequence", "smooth_low_frequencies",
           "temporal_flicker", "flicker_report", "edge_band"]


@dataclass
class TemporalConfig:
    """matte_sigma / colour_sigma: Gaussian sigma in frames (0 disables); lowpass: the blur
    (fraction of the crop size) separating low frequencies from detail; mode: "centred" or
    "causal"."""

    matte_sigma: float = 1.0
    colour_sigma: float = 1.0
    lowpass: float = 0.04
    mode: str = "centred"

    def validate(self) -> None:
        if self.matte_sigma < 0 or self.colour_sigma < 0:
            raise ConfigError("temporal sigmas must be >= 0 (0 disables)")
        if not 0 < self.lowpass < 0.5:
            raise ConfigError(f"temporal lowpass must be in (0, 0.5), got {self.lowpass}")
        if self.mode not in ("centred", "causal"):
            raise ConfigError(f"temporal mode must be 'centred' or 'causal', got {self.mode!r}")

    @property
    def radius(self) -> int:
        """Frames either side a filtered frame depends on (the chunk overlap)."""
        return max(_radius(self.matte_sigma), _radius(self.colour_sigma))

    @property
    def lookahead(self) -> int:
        return 0 if self.mode == "causal" else self.radius


def _radius(sigma: float) -> int:
    return int(math.ceil(3.0 * sigma)) if sigma > 0 else 0


def temporal_weights(sigma: float, mode: str = "centred") -> dict[int, float]:
    """Frame offset -> unnormalised Gaussian weight (offset 0 included)."""
    r = _radius(sigma)
    if r == 0:
        return {0: 1.0}
    offs = range(-r, 1) if mode == "causal" else range(-r, r + 1)
    return {d: math.exp(-0.5 * (d / sigma) ** 2) for d in offs}


def smooth_sequence(values: Mapping[int, np.ndarray | None], frame: int, sigma: float,
                    mode: str = "centred", frames_available: Sequence[int] | None = None) -> np.ndarray | None:
    """Weighted mean of ``values[frame + d]`` over the filter's offsets ``d``.

    ``values``: frame number -> array, or None for a frame that exists but has no value
    (no face: counts as zeros). Frames absent from ``values`` (outside the shot) are left
    out and the weights renormalised. Returns None when ``values[frame]`` is None.
    """
    own = values.get(frame)
    if own is None:
        return None
    total = np.zeros_like(own, dtype=np.float32)
    wsum = 0.0
    for d, w in temporal_weights(sigma, mode).items():
        f = frame + d
        if f not in values:
            continue
        v = values[f]
        if v is not None:
            total += w * v
        wsum += w
    return total / wsum


def _lowpass(image: np.ndarray, sigma_px: float) -> np.ndarray:
    return cv2.GaussianBlur(np.ascontiguousarray(image, np.float32), (0, 0), sigma_px,
                            borderType=cv2.BORDER_REFLECT_101)


def smooth_low_frequencies(images: Mapping[int, np.ndarray | None], frame: int, config: TemporalConfig,
                           lows: dict[int, np.ndarray] | None = None, keep: np.ndarray | None = None,
                           clip: bool = True) -> np.ndarray | None:
    """Frame ``frame``'s image with its low frequencies replaced by their temporal average.
    ``lows``: a cache of per-frame low-pass images (filled as needed); ``keep`` (S, S) in
    [0, 1]: where the frame keeps its own low frequencies; ``clip``: clip to [0, 1] (off for
    signed differences)."""
    own = images.get(frame)
    if own is None or config.colour_sigma <= 0:
        return own
    lows = {} if lows is None else lows
    sigma_px = config.lowpass * own.shape[0]
    low_vals: dict[int, np.ndarray | None] = {}
    for d in temporal_weights(config.colour_sigma, config.mode):
        f = frame + d
        if f not in images:
            continue
        img = images[f]
        if img is None:
            continue  # no face there: no colour to average with (unlike the matte)
        if f not in lows:
            lows[f] = _lowpass(img, sigma_px)
        low_vals[f] = lows[f]
    avg = smooth_sequence(low_vals, frame, config.colour_sigma, config.mode)
    delta = avg - lows[frame]
    if keep is not None:
        delta = delta * (1.0 - np.clip(keep, 0.0, 1.0))[..., None]
    out = own + delta
    return (np.clip(out, 0.0, 1.0) if clip else out).astype(np.float32)


# ---------------------------------------------------------------------------------------
# flicker metric
# ---------------------------------------------------------------------------------------
def _luma(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, np.float32)
    if img.ndim == 3 and img.shape[-1] >= 3:
        return img[..., 0] * 0.2126 + img[..., 1] * 0.7152 + img[..., 2] * 0.0722
    return img


def temporal_flicker(frames: Sequence[np.ndarray], masks: Sequence[np.ndarray] | np.ndarray) -> float:
    """Mean absolute frame-to-frame luma change inside ``masks`` (per-frame (H, W) bool, or
    one mask for all frames): the temporal energy a viewer sees as flicker (plus motion,
    which :func:`flicker_report` cancels against the plate)."""
    if len(frames) < 2:
        return 0.0
    masks = np.asarray(masks, bool)
    diffs, count = 0.0, 0
    for t in range(1, len(frames)):
        m = masks if masks.ndim == 2 else (masks[t] | masks[t - 1])
        if not m.any():
            continue
        d = np.abs(_luma(frames[t]) - _luma(frames[t - 1]))[m]
        diffs += float(d.sum())
        count += int(d.size)
    return diffs / count if count else 0.0


def edge_band(mattes: Sequence[np.ndarray], low: float = 0.02, high: float = 0.98) -> np.ndarray:
    """Per-frame (N, H, W) bool: the matte's soft edge (low < m < high), dilated by 2 px so
    a hard, jumping edge is caught too."""
    kernel = np.ones((5, 5), np.uint8)
    out = []
    for m in mattes:
        band = ((m > low) & (m < high)).astype(np.uint8)
        out.append(cv2.dilate(band, kernel) > 0)
    return np.stack(out)


def flicker_report(plate: Sequence[np.ndarray], render: Sequence[np.ndarray],
                   mattes: Sequence[np.ndarray]) -> dict[str, dict[str, float]]:
    """Flicker of the render against the plate (display-referred frames, same size), in the
    matte region (m > 0.5) and in its edge band. ``excess`` = flicker(render) -
    flicker(plate) (0: no flicker added beyond the plate's own motion); ``residual`` = mean
    |change of (render - plate)| (0: the render's difference to the plate is steady)."""
    mattes = [np.asarray(m, np.float32) for m in mattes]
    regions = {"region": np.stack([m > 0.5 for m in mattes]), "edge": edge_band(mattes)}
    diff = [np.asarray(r, np.float32) - np.asarray(p, np.float32) for r, p in zip(render, plate)]
    out = {}
    for name, masks in regions.items():
        fr, fp = temporal_flicker(render, masks), temporal_flicker(plate, masks)
        out[name] = {"render": fr, "plate": fp, "excess": fr - fp, "residual": temporal_flicker(diff, masks)}
    return out
