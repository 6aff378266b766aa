"""Colour conversions between plates, networks, EXRs and review movies, in one module.

Conventions (DESIGN.md): EXR plates and outputs are scene-linear in their declared
colourspace; networks and review movies see display-referred values in [0, 1].

Video and 8-bit image plates are display-referred: `sRGB` uses the IEC 61966-2-1 piecewise
curve, `Rec.709` the BT.1886 display EOTF (pure 2.4 power, black at 0), which is what a
grading display shows for Rec.709 video. Linear counterparts keep the same primaries
(`Linear Rec.709`), so the round trip display -> linear -> display is exact up to float
precision and a pass-through render changes no pixel beyond half-float rounding.
EXR plates declared `ACEScg`/`ACES2065-1` are converted to display by the matrix to linear
Rec.709 primaries followed by the sRGB curve: a simple, documented review transform (the
OpenColorIO ACES view transform is the richer alternative for review movies).
"""
from __future__ import annotations

import numpy as np

from engine.errors import ConfigError

DISPLAY_SPACES = ("sRGB", "Rec.709")
LINEAR_SPACES = ("Linear Rec.709", "ACEScg", "ACES2065-1")

# Linear AP1 (ACEScg) -> linear Rec.709 primaries, and AP0 -> Rec.709 (D60 -> D65 Bradford),
# values as published in the ACES/OCIO reference configs.
_AP1_TO_709 = np.array([[1.70505, -0.62179, -0.08326],
                        [-0.13026, 1.14080, -0.01055],
                        [-0.02400, -0.12897, 1.15297]], dtype=np.float32)
_AP0_TO_709 = np.array([[2.52169, -1.13413, -0.38756],
                        [-0.27648, 1.37272, -0.09624],
                        [-0.01538, -0.15298, 1.16835]], dtype=np.float32)


def _check(space: str) -> str:
    if space not in DISPLAY_SPACES + LINEAR_SPACES:
        raise ConfigError(f"unknown colourspace {space!r}; valid: {', '.join(DISPLAY_SPACES + LINEAR_SPACES)}")
    return space


def srgb_to_linear(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return np.where(v <= 0.04045, v / 12.92, ((np.maximum(v, 0.04045) + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return np.where(v <= 0.0031308, v * 12.92,
                    1.055 * np.maximum(v, 0.0031308) ** (1 / 2.4) - 0.055).astype(np.float32)


def as_float(image: np.ndarray) -> np.ndarray:
    """uint8/uint16 -> float32 in [0, 1]; float input is returned as float32."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    return image.astype(np.float32, copy=False)


def to_scene_linear(image: np.ndarray, space: str) -> np.ndarray:
    """Plate pixels in ``space`` -> scene-linear float32 (same primaries as ``space``)."""
    _check(space)
    img = as_float(image)
    if space == "sRGB":
        return srgb_to_linear(img)
    if space == "Rec.709":
        return np.power(np.clip(img, 0.0, None), 2.4).astype(np.float32)
    return img


def linear_space_of(space: str) -> str:
    """The linear colourspace in which outputs of a plate in ``space`` are written."""
    _check(space)
    return "Linear Rec.709" if space in DISPLAY_SPACES else space


def from_scene_linear(linear: np.ndarray, space: str) -> np.ndarray:
    """Inverse of :func:`to_scene_linear`: back to the plate's own encoding (float32)."""
    _check(space)
    lin = np.asarray(linear, dtype=np.float32)
    if space == "sRGB":
        return linear_to_srgb(np.clip(lin, 0.0, None))
    if space == "Rec.709":
        return np.power(np.clip(lin, 0.0, None), 1 / 2.4).astype(np.float32)
    return lin


def to_display(image: np.ndarray, space: str) -> np.ndarray:
    """Pixels in ``space`` -> display-referred float32 RGB in [0, 1] (what networks and
    review movies see)."""
    _check(space)
    if space in DISPLAY_SPACES:
        return np.clip(as_float(image), 0.0, 1.0)
    lin = as_float(image)
    if space == "ACEScg":
        lin = lin[..., :3] @ _AP1_TO_709.T
    elif space == "ACES2065-1":
        lin = lin[..., :3] @ _AP0_TO_709.T
    return np.clip(linear_to_srgb(np.clip(lin, 0.0, None)), 0.0, 1.0)


def to_uint8(display: np.ndarray) -> np.ndarray:
    """Display-referred float [0, 1] -> uint8 with rounding (not truncation)."""
    return np.clip(np.rint(np.asarray(display, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
