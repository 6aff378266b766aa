"""Exact time alignment of a driving performance onto the shot's frames.

The drive's start (driving frame index 0) lines up with plate frame
``plate_start_frame + offset`` (``drive.offset`` of the shot, in plate frames; see
docs/shot_reference.md). A plate frame ``f`` therefore happens at driving time

    tau(f) = (f - plate_start_frame - offset) / plate_fps            (seconds, a Fraction)

and looks at the driving video at the fractional frame position ``p = tau * driver_fps``
(driving frame ``i`` is the sample taken at time ``i / driver_fps``). Everything is
``fractions.Fraction``: a 30 fps driver on a 25 fps plate samples positions 0, 6/5, 12/5, ...
exactly, with no float drift over a long shot.

Sampling: ``nearest`` takes frame ``floor(p + 1/2)``; ``linear`` blends frames ``floor(p)``
and ``floor(p) + 1`` with weight ``p - floor(p)``. Positions outside the driving clip hold its
first / last frame and are flagged (``before_start`` / ``after_end``): a driver shorter than
the shot holds its last frame rather than failing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np

from engine.errors import ConfigError

__all__ = ["SAMPLING", "SamplePlan", "driver_positions", "sample_plan"]

SAMPLING = ("nearest", "linear")


@dataclass(frozen=True)
class SamplePlan:
    """Where each target frame reads the driver: ``value = (1 - w) x[i0] + w x[i1]``.

    ``positions`` are the exact fractional driving-frame positions; ``before_start`` /
    ``after_end`` mark target frames outside the clip (held at its first / last frame).
    """

    positions: tuple[Fraction, ...]
    i0: np.ndarray          # (N,) int64
    i1: np.ndarray          # (N,) int64
    weight: np.ndarray      # (N,) float64 in [0, 1)
    before_start: np.ndarray  # (N,) bool
    after_end: np.ndarray     # (N,) bool

    def __len__(self) -> int:
        return int(self.i0.shape[0])

    def blend(self, values: np.ndarray) -> np.ndarray:
        """(M, ...) per-driving-frame values -> (N, ...) per-target values (linear in values)."""
        v = np.asarray(values, np.float64)
        w = self.weight.reshape((-1,) + (1,) * (v.ndim - 1))
        return (1.0 - w) * v[self.i0] + w * v[self.i1]


def _fraction(value: Fraction | int | float | str, what: str) -> Fraction:
    try:
        out = Fraction(value)
    except (TypeError, ValueError, ZeroDivisionError):
        raise ConfigError(f"{what} must be a number or a ratio such as 24000/1001, got {value!r}") from None
    if out <= 0:
        raise ConfigError(f"{what} must be positive, got {value}")
    return out


def driver_positions(target_frames: Sequence[int] | np.ndarray, *, plate_start_frame: int, offset: int,
                     plate_fps: Fraction, driver_fps: Fraction) -> list[Fraction]:
    """Exact fractional driving-frame position of each target (plate) frame number."""
    pf = _fraction(plate_fps, "plate fps")
    df = _fraction(driver_fps, "driving fps")
    ratio = df / pf
    zero = int(plate_start_frame) + int(offset)
    return [(int(f) - zero) * ratio for f in np.asarray(target_frames, np.int64)]


def nearest_driver_frames(positions: np.ndarray, n_driver: int) -> np.ndarray:
    """(N,) driver frame index nearest each exact driving position ((N, 2) numerator,
    denominator: :attr:`engine.drive.transfer.DriveResult.positions`), clamped to the clip
    (the ``nearest`` sampling of :func:`sample_plan`, for showing the driver's own frame)."""
    idx = [math.floor(Fraction(int(n), int(d)) + Fraction(1, 2)) for n, d in np.asarray(positions)]
    return np.clip(np.asarray(idx, np.int64), 0, max(int(n_driver) - 1, 0))


def sample_plan(target_frames: Sequence[int] | np.ndarray, n_driver: int, *, plate_start_frame: int,
                offset: int, plate_fps: Fraction, driver_fps: Fraction,
                sampling: str = "linear") -> SamplePlan:
    """The sampling of an ``n_driver``-frame driving clip for each target frame."""
    if sampling not in SAMPLING:
        raise ConfigError(f"drive sampling must be one of {', '.join(SAMPLING)}, got {sampling!r}")
    if n_driver < 1:
        raise ConfigError("the driving clip has no frames")
    pos = driver_positions(target_frames, plate_start_frame=plate_start_frame, offset=offset,
                           plate_fps=plate_fps, driver_fps=driver_fps)
    n = len(pos)
    i0 = np.zeros(n, np.int64)
    i1 = np.zeros(n, np.int64)
    w = np.zeros(n, np.float64)
    before = np.zeros(n, bool)
    after = np.zeros(n, bool)
    last = n_driver - 1
    for k, p in enumerate(pos):
        if sampling == "nearest":
            j = math.floor(p + Fraction(1, 2))
            if j < 0:
                before[k], j = True, 0
            elif j > last:
                after[k], j = True, last
            i0[k] = i1[k] = j
            continue
        if p < 0:
            before[k] = True
            continue                      # i0 = i1 = 0, w = 0
        if p > last:
            after[k] = True
            i0[k] = i1[k] = last
            continue
        j = math.floor(p)
        frac = p - j
        i0[k] = j
        i1[k] = min(j + 1, last)
        w[k] = float(frac)
    return SamplePlan(tuple(pos), i0, i1, w, before, after)
