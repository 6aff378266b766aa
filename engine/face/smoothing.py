"""Temporal filters for per-frame tracks (landmarks, crop boxes, face-model parameters).

A track is an array ``(N, ...)`` over N frames. Filters run along axis 0, vectorised over
everything else. An optional validity mask ``valid`` (N,) splits the track into runs of
usable frames: the filter restarts after every invalid frame, so a ``no_face`` gap is never
smoothed across (a face that reappears elsewhere is not dragged from its old position).
Invalid frames are passed through unchanged (typically NaN). A frame with any non-finite
value is treated as invalid too.

Filters
-------
* ``none``: identity (a copy).
* ``one_euro``: the 1-euro filter (Casiez, Roussel & Vogel, CHI 2012): a first-order
  low-pass whose cutoff rises with the (low-passed) speed, ``fc = min_cutoff + beta*|dx/dt|``,
  so slow drifts are smoothed hard (jitter) and fast motion passes with little lag. Causal.
  Cutoffs are in Hz and speeds in track units per second, so it is fps-aware; ``beta``
  depends on the track's units (for pixel landmarks, pixels/s).
* ``savgol``: Savitzky-Golay smoothing with a short, asymmetric window: fit a polynomial of
  degree ``order`` by least squares to frames [t - past, t + lookahead] and evaluate it at
  t. ``lookahead`` is 0 (causal) or 1 (one frame of latency, as an online renderer can
  afford). Polynomials up to ``order`` pass unchanged, so ramps have zero lag. Near the
  ends of a run the window shrinks to the frames available (and the degree with it).

``mean_acceleration`` (mean norm of the second difference) is the jitter figure used by the
tests and benchmarks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np

from engine.errors import ConfigError

KINDS = ("none", "one_euro", "savgol")


@dataclass
class SmoothingConfig:
    """Temporal filter settings (see module doc). Defaults suit pixel landmarks at 25-30 fps
    on faces ~100-300 px wide."""

    kind: str = "one_euro"
    # one_euro
    min_cutoff: float = 1.0   # Hz: cutoff at rest (lower = smoother, more lag when slow)
    beta: float = 0.2         # Hz per (unit/s): how fast the cutoff opens with speed
    d_cutoff: float = 1.0     # Hz: low-pass on the speed estimate
    # savgol
    past: int = 6             # frames before t in the fitting window
    lookahead: int = 1        # frames after t (0 causal, 1 one frame of latency)
    order: int = 2            # polynomial degree

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"smoothing.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "one_euro":
            if self.min_cutoff <= 0 or self.d_cutoff <= 0 or self.beta < 0:
                raise ConfigError("smoothing: one_euro needs min_cutoff > 0, d_cutoff > 0 and beta >= 0")
        if self.kind == "savgol":
            if self.lookahead not in (0, 1):
                raise ConfigError(f"smoothing.lookahead must be 0 or 1 frame, got {self.lookahead}")
            if self.past < 0 or self.order < 0:
                raise ConfigError("smoothing: savgol needs past >= 0 and order >= 0")
            if self.past + self.lookahead < self.order:
                raise ConfigError(f"smoothing: a degree-{self.order} fit needs more than "
                                  f"{self.past + self.lookahead + 1} frames in its window")


def _runs(valid: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of maximal runs of True."""
    v = np.concatenate([[False], valid, [False]]).astype(np.int8)
    d = np.diff(v)
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def frame_validity(track: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """(N,) bool: ``valid`` (default all) and every value of the frame finite."""
    n = track.shape[0]
    finite = np.isfinite(track.reshape(n, -1)).all(axis=1) if n else np.zeros(0, bool)
    if valid is None:
        return finite
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != (n,):
        raise ConfigError(f"smoothing: valid mask has shape {valid.shape}, expected ({n},)")
    return valid & finite


def smooth(track: np.ndarray, config: SmoothingConfig, fps: float | Fraction,
           valid: np.ndarray | None = None) -> np.ndarray:
    """Filter ``track`` (N, ...) along frames; returns float64 of the same shape."""
    config.validate()
    x = np.asarray(track, dtype=np.float64)
    if x.ndim == 0:
        raise ConfigError("smoothing: track must have a frame axis")
    rate = float(fps)
    if not rate > 0:
        raise ConfigError(f"smoothing: fps must be > 0, got {fps}")
    ok = frame_validity(x, valid)
    out = x.copy()
    if config.kind == "none" or x.shape[0] == 0:
        return out
    flat_in = x.reshape(x.shape[0], -1)
    flat_out = out.reshape(x.shape[0], -1)
    for a, b in _runs(ok):
        seg = flat_in[a:b]
        if config.kind == "one_euro":
            flat_out[a:b] = _one_euro(seg, rate, config.min_cutoff, config.beta, config.d_cutoff)
        else:
            flat_out[a:b] = _savgol(seg, config.past, config.lookahead, config.order)
    return out


# ---------------------------------------------------------------------------------------
# One-Euro
# ---------------------------------------------------------------------------------------
def _alpha(cutoff, rate: float):
    # Exponential smoothing factor of a first-order low-pass with this cutoff, sampled at
    # ``rate``: alpha = 1 / (1 + tau / Te), tau = 1 / (2 pi fc), Te = 1 / rate.
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau * rate)


def _one_euro(seg: np.ndarray, rate: float, min_cutoff: float, beta: float, d_cutoff: float) -> np.ndarray:
    y = np.empty_like(seg)
    x_hat = seg[0].copy()
    dx_hat = np.zeros_like(x_hat)
    y[0] = x_hat
    a_d = _alpha(d_cutoff, rate)
    for t in range(1, seg.shape[0]):
        # Speed from consecutive raw samples. The paper differentiates against the previous
        # *filtered* value, which overestimates the speed by the filter's own lag in frames
        # (x - x_hat_prev = slope * (1 + lag * fps) / fps): beta would then act differently
        # at 24 and 60 fps. The raw difference keeps the filter's behaviour in seconds.
        dx = (seg[t] - seg[t - 1]) * rate
        dx_hat = a_d * dx + (1.0 - a_d) * dx_hat
        a = _alpha(min_cutoff + beta * np.abs(dx_hat), rate)
        x_hat = a * seg[t] + (1.0 - a) * x_hat
        y[t] = x_hat
    return y


# ---------------------------------------------------------------------------------------
# Savitzky-Golay with a short look-ahead
# ---------------------------------------------------------------------------------------
@lru_cache(maxsize=256)
def savgol_weights(past: int, lookahead: int, order: int) -> np.ndarray:
    """FIR weights w over offsets -past..+lookahead such that sum_j w_j x[t+j] is the value
    at t of the least-squares polynomial (degree min(order, window-1)) through the window."""
    offsets = np.arange(-past, lookahead + 1, dtype=np.float64)
    deg = min(order, offsets.size - 1)
    vander = offsets[:, None] ** np.arange(deg + 1)[None, :]
    w = np.linalg.pinv(vander)[0]   # row 0: the constant term = the fit evaluated at 0
    w.setflags(write=False)
    return w


def _savgol(seg: np.ndarray, past: int, lookahead: int, order: int) -> np.ndarray:
    n = seg.shape[0]
    y = np.empty_like(seg)
    w = savgol_weights(past, lookahead, order)
    lo, hi = past, n - lookahead          # frames with a full window: [lo, hi)
    if hi > lo:
        acc = np.zeros((hi - lo,) + seg.shape[1:])
        for j, wj in enumerate(w):        # window length is small: loop over taps, not frames
            acc += wj * seg[j:j + hi - lo]
        y[lo:hi] = acc
    for t in list(range(0, min(lo, n))) + list(range(max(hi, lo), n)):
        back, fwd = min(past, t), min(lookahead, n - 1 - t)
        wt = savgol_weights(back, fwd, order)
        y[t] = wt @ seg[t - back:t + fwd + 1]
    return y


# ---------------------------------------------------------------------------------------
# Measures
# ---------------------------------------------------------------------------------------
def mean_acceleration(track: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean norm of the second difference x[t+1] - 2 x[t] + x[t-1] (units per frame^2).

    For a track (N, ..., D) with ndim >= 2 the norm is over the last axis (a point's
    coordinates); for (N,) it is the absolute value. Second differences that touch an
    invalid frame are left out. NaN if none is left.
    """
    x = np.asarray(track, dtype=np.float64)
    ok = frame_validity(x, valid)
    if x.shape[0] < 3:
        return float("nan")
    acc = x[2:] - 2.0 * x[1:-1] + x[:-2]
    keep = ok[2:] & ok[1:-1] & ok[:-2]
    acc = acc[keep]
    if acc.size == 0:
        return float("nan")
    mag = np.abs(acc) if x.ndim == 1 else np.linalg.norm(acc, axis=-1)
    return float(mag.mean())
