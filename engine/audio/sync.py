"""Audio/lip-sync analysis: per-frame audio energy, mouth opening, AV offset, bilabial closures.

Used by the audio-driven benchmarks and by QC (#9) on any rendered or plate shot.

Time base
---------
Everything is per *video frame*. Array index ``k`` is video frame ``k`` of the analysed
range; its audio is the half-open sample range of :func:`engine.io.audio.samples_for_frames`
(exact rational arithmetic, ``a_k = ceil(k * sr / fps)``) shifted by ``start_sample`` — the
sample at which frame 0 starts. Phone times (seconds from sample 0 of the array given to
:func:`phone_alignment`) map to frames the same way.

AV offset sign convention
-------------------------
``AvOffset.frames > 0`` means the AUDIO IS LATE relative to the video: the sound that goes
with the mouth movement of frame ``t`` is heard at frame ``t + frames``. To fix it, shift the
audio earlier by that many frames (or the picture later). This is the sign of SyncNet's
"AV offset" reported by lip-sync tools for audio delayed against video.

Two estimators:

* :func:`estimate_av_offset` (energy): mouth movements and the sound envelope go together
  (Chandrasekaran et al. 2009, "The natural statistics of audiovisual speech": mouth area
  and the 1-3 kHz envelope are correlated with a peak near zero lag). We correlate the
  frame-to-frame changes of mouth opening and of band energy (Pearson r at every integer
  lag in ``[-max_lag, max_lag]`` over the frames valid in both) and refine the peak to
  sub-frame precision with the parabola through it and its neighbours. Needs no phones
  and works for any language; weak on short or near-silent shots (check ``correlation``).
* :func:`estimate_closure_offset` (articulation): p/b/m need shut lips and vowels open
  ones; the video shift that best separates the two gives the offset. Needs phones.

On the primary plate (EDTalk pose_source2) both say the audio is ~2 frames late (energy
+2.6, closure +1.8 over 60 s): a property of that file, not of the method (shifting its
audio by 3 more frames moves both estimates by +3.0).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from engine.audio.phones import BILABIALS, Phone, PhoneAlignConfig, phone_alignment
from engine.io.audio import samples_for_frames

__all__ = ["audio_energy", "mouth_opening", "AvOffset", "estimate_av_offset", "Phone", "PhoneAlignConfig",
           "phone_alignment", "BilabialEvent", "BilabialReport", "bilabial_hits", "frame_boundaries",
           "DEFAULT_CLOSED_THRESHOLD", "ENERGY_FLOOR_DB", "SYNC_BAND_HZ", "av_offset_from_audio",
           "estimate_closure_offset", "VOWELS"]

#: dB value of digital silence (RMS floor 1e-5 full scale): keeps log energy finite.
ENERGY_FLOOR_DB = -100.0
#: Inner-lip gap / inter-ocular distance below which the lips count as closed. MediaPipe's
#: inner-lip points of a closed mouth sit ~0-2 % of the inter-ocular distance apart; the lips
#: part visibly (>= 3-4 px on a 100 px inter-ocular face) above ~4 %.
DEFAULT_CLOSED_THRESHOLD = 0.04


# ---------------------------------------------------------------------------------------
# Energy
# ---------------------------------------------------------------------------------------
def frame_boundaries(fps: Fraction, sr: int, n_frames: int, start_sample: int = 0) -> np.ndarray:
    """(n_frames + 1,) int64 sample positions: frame ``k`` is ``[b[k], b[k+1])``."""
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    fps = Fraction(fps)
    # samples_for_frames gives [a_k, a_{k+n}); a_k = ceil(k*sr/fps) for every k, so the
    # boundaries are the starts of consecutive one-frame ranges.
    b = [samples_for_frames(k, 1, fps, 0, sr)[0] for k in range(n_frames)]
    b.append(samples_for_frames(0, n_frames, fps, 0, sr)[1])
    return np.asarray(b, dtype=np.int64) + int(start_sample)


def audio_energy(samples: np.ndarray, sr: int, fps: Fraction, n_frames: int, start_sample: int = 0,
                 *, band_hz: tuple[float, float] | None = None) -> np.ndarray:
    """Per-video-frame RMS energy in dB full scale, (n_frames,) float64.

    ``samples``: float in [-1, 1], (n,) or (n, channels) (channels are averaged).
    Frame ``k`` covers samples ``[b_k, b_{k+1})`` (see :func:`frame_boundaries`); samples
    outside the array count as silence, so frames before/after the audio read
    ``ENERGY_FLOOR_DB``. ``band_hz=(lo, hi)`` restricts the energy to a frequency band
    (zero-phase Butterworth band-pass, so it adds no delay), e.g. (300, 3000) for the
    formant range that follows jaw opening.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if x.ndim != 1:
        raise ValueError(f"samples must be (n,) or (n, channels), got {np.shape(samples)}")
    if band_hz is not None and len(x) > 64:
        from scipy.signal import butter, sosfiltfilt
        lo, hi = float(band_hz[0]), min(float(band_hz[1]), 0.45 * sr)
        sos = butter(4, [lo, hi], btype="bandpass", fs=sr, output="sos")
        x = sosfiltfilt(sos, x)
    b = frame_boundaries(fps, sr, n_frames, start_sample)
    cs = np.concatenate([[0.0], np.cumsum(x * x)])
    idx = np.clip(b, 0, len(x))
    power = (cs[idx[1:]] - cs[idx[:-1]]) / np.maximum(np.diff(b), 1)
    floor = 10.0 ** (ENERGY_FLOOR_DB / 10.0)
    return 10.0 * np.log10(np.maximum(power, floor))


# ---------------------------------------------------------------------------------------
# Mouth opening
# ---------------------------------------------------------------------------------------
def mouth_opening(landmarks: np.ndarray, valid: np.ndarray | None = None, normalise: str = "interocular") -> np.ndarray:
    """Inner-lip gap per frame, (N,) float64, from MediaPipe-topology landmarks (N, 478, 2|3).

    The gap is the mean of three vertical inner-lip point pairs (82-87, 13-14, 312-317),
    divided by the inter-ocular distance (outer eye corners 33-263; ``normalise=
    "mouth_width"`` divides by the corner-to-corner mouth width instead). 0 = lips closed.
    Frames that are not ``valid`` or whose points are NaN give NaN.
    """
    from engine.face.landmarks import mouth_opening as _mo

    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[1] < 478 or pts.shape[2] not in (2, 3):
        raise ValueError(f"landmarks must be (N, 478, 2|3), got {pts.shape}")
    out = np.asarray(_mo(pts, normalise=normalise), dtype=np.float64)
    if valid is not None:
        out = np.where(np.asarray(valid, bool), out, np.nan)
    return out


# ---------------------------------------------------------------------------------------
# AV offset
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AvOffset:
    frames: float            # > 0: audio late relative to video (see module doc); NaN if undetermined
    correlation: float       # Pearson correlation at the (interpolated) peak
    curve: np.ndarray = field(repr=False)   # (2*max_lag+1,) correlation per integer lag
    lags: np.ndarray = field(repr=False)    # (2*max_lag+1,) the lags, frames
    fps: Fraction = Fraction(25)
    n_frames_used: int = 0
    method: str = "energy"   # "energy": correlation is Pearson r; "closure": vowel-minus-bilabial contrast (std units)

    @property
    def seconds(self) -> float:
        return float(self.frames / float(self.fps))

    @property
    def at_edge(self) -> bool:
        """The peak is at the end of the searched range: the true offset may be larger."""
        return bool(np.isfinite(self.frames) and abs(self.frames) >= self.lags[-1] - 0.5)

    def to_dict(self) -> dict:
        return {"method": self.method, "frames": float(self.frames), "seconds": self.seconds,
                "correlation": float(self.correlation),
                "at_edge": self.at_edge, "n_frames_used": int(self.n_frames_used),
                "lags": [int(v) for v in self.lags], "curve": [float(v) for v in self.curve]}


def _detrend(x: np.ndarray, window: int) -> np.ndarray:
    """Subtract a centred NaN-aware moving average (keeps NaN where x is NaN)."""
    if window <= 1:
        return x
    from scipy.ndimage import uniform_filter1d
    ok = np.isfinite(x)
    num = uniform_filter1d(np.where(ok, x, 0.0), window, mode="nearest")
    den = uniform_filter1d(ok.astype(np.float64), window, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, x - num / np.maximum(den, 1e-9), np.nan)


def _lag_corr(a: np.ndarray, b: np.ndarray, d: int, min_pairs: int) -> tuple[float, int]:
    """Pearson r of a[t] and b[t + d] over t where both are finite."""
    n = len(a)
    if d >= 0:
        x, y = a[: n - d], b[d:]
    else:
        x, y = a[-d:], b[: n + d]
    ok = np.isfinite(x) & np.isfinite(y)
    m = int(ok.sum())
    if m < min_pairs:
        return np.nan, m
    x, y = x[ok] - x[ok].mean(), y[ok] - y[ok].mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return (float((x * y).sum() / den) if den > 0 else np.nan), m


def estimate_av_offset(mouth_open: np.ndarray, energy: np.ndarray, fps: Fraction, max_lag_frames: int = 10,
                       *, mode: str = "velocity", detrend_s: float = 1.0, min_pairs: int = 25) -> AvOffset:
    """Audio-vs-video offset from the cross-correlation of mouth opening and frame energy.

    ``mouth_open`` and ``energy`` are (N,) per video frame over the same frames (NaN =
    unknown, e.g. no face). Returns frames > 0 when the audio is late (module doc), with
    sub-frame precision; NaN when fewer than ``min_pairs`` frames overlap at some lag or the
    signals are constant.

    ``mode="velocity"`` (default) correlates the frame-to-frame *changes* of both signals:
    openings/closings against onsets/offsets of sound. Levels (``mode="level"``, each minus
    a ``detrend_s`` moving average) are confounded by speakers who rest with the mouth open
    in pauses and keep it shut through voiced m/b; on the primary plate, 12 s windows gave
    offsets of 2.7, 2.2, 2.2, 1.9 frames with velocities against -10 (edge), 2.5, 2.4, 10
    (edge) with detrended levels.
    """
    if mode not in ("velocity", "level"):
        raise ValueError(f"mode must be 'velocity' or 'level', not {mode!r}")
    m = np.asarray(mouth_open, dtype=np.float64).ravel()
    e = np.asarray(energy, dtype=np.float64).ravel()
    if m.shape != e.shape:
        raise ValueError(f"mouth_open {m.shape} and energy {e.shape} must cover the same frames")
    if max_lag_frames < 1:
        raise ValueError(f"max_lag_frames must be >= 1, got {max_lag_frames}")
    fps = Fraction(fps)
    win = max(int(round(detrend_s * float(fps))), 1) if detrend_s > 0 else 1
    if mode == "velocity":
        # A difference shifts both signals by the same half frame: the lag is unchanged.
        md, ed = np.diff(m), np.diff(e)
    else:
        md, ed = _detrend(m, win), _detrend(e, win)
    lags = np.arange(-max_lag_frames, max_lag_frames + 1)
    res = [_lag_corr(md, ed, int(d), min_pairs) for d in lags]
    curve = np.array([r for r, _ in res])
    used = int(np.isfinite(md).sum())
    if not np.isfinite(curve).all():
        return AvOffset(np.nan, np.nan, curve, lags, fps, used)
    frames, peak = _parabolic_peak(curve, lags)
    return AvOffset(frames, peak, curve, lags, fps, used, "energy")


def offset_p_value(mouth_open: np.ndarray, energy: np.ndarray, max_lag_frames: int = 10, *,
                   min_pairs: int = 25) -> float | None:
    """Permutation p-value of :func:`estimate_av_offset`'s peak (velocity mode).

    The null distribution is the same search (peak correlation over +-``max_lag_frames``) with
    the mouth track circularly shifted by every offset that keeps it more than two search
    widths away from its true pairing: the signals keep their own spectra and rhythm
    (syllable rate), only the pairing with the audio is broken -- a surrogate-data test, so
    autocorrelation and the search over lags are accounted for without a parametric model.
    ``(1 + #null peaks >= observed) / (1 + #shifts)``; None when the clip is too short for
    at least 9 shifts (the smallest p-value would be 0.1). Deterministic (no random draws).
    """
    m = np.diff(np.asarray(mouth_open, dtype=np.float64).ravel())
    e = np.diff(np.asarray(energy, dtype=np.float64).ravel())
    n, lags = len(m), range(-max_lag_frames, max_lag_frames + 1)
    shifts = range(2 * max_lag_frames + 1, n - 2 * max_lag_frames)
    if len(shifts) < 9:
        return None

    def peak(a: np.ndarray) -> float:
        c = np.array([_lag_corr(a, e, d, min_pairs)[0] for d in lags])
        return float(np.max(c)) if np.isfinite(c).all() else np.nan

    obs = peak(m)
    if not np.isfinite(obs):
        return None
    null = np.array([peak(np.roll(m, k)) for k in shifts])
    null = null[np.isfinite(null)]
    return float((1 + int((null >= obs).sum())) / (1 + len(null)))


def _parabolic_peak(curve: np.ndarray, lags: np.ndarray) -> tuple[float, float]:
    """Arg-max of a sampled curve refined by the vertex of the parabola through the
    maximum and its two neighbours (exact for a locally quadratic peak)."""
    i = int(np.argmax(curve))
    frames, peak = float(lags[i]), float(curve[i])
    if 0 < i < len(curve) - 1:
        y0, y1, y2 = curve[i - 1], curve[i], curve[i + 1]
        den = y0 - 2.0 * y1 + y2
        if den < 0:  # a proper maximum
            delta = 0.5 * (y0 - y2) / den
            frames += delta
            peak = float(y1 - 0.25 * (y0 - y2) * delta)
    return frames, peak


#: Frequency band whose energy follows the mouth best (second formant range; on the
#: primary plate it gives the sharpest, highest cross-correlation peak of the bands tried:
#: full band r=0.18, 80-300 Hz 0.17, 300-1000 Hz 0.16, 1-3 kHz 0.32).
SYNC_BAND_HZ = (1000.0, 3000.0)


def av_offset_from_audio(samples: np.ndarray, sr: int, fps: Fraction, mouth_open: np.ndarray,
                         start_sample: int = 0, max_lag_frames: int = 10) -> AvOffset:
    """:func:`estimate_av_offset` of ``mouth_open`` against the 1-3 kHz band energy of the
    audio whose video frame 0 starts at ``start_sample`` (the recommended QC call)."""
    energy = audio_energy(samples, sr, fps, len(mouth_open), start_sample, band_hz=SYNC_BAND_HZ)
    return estimate_av_offset(mouth_open, energy, fps, max_lag_frames)


#: Vowels: the mouth is open while they sound (contrast set of the closure-based offset).
VOWELS = frozenset({"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"})


def _phone_frames(ph: Phone, fps: float, time_offset_s: float) -> tuple[int, int]:
    t0, t1 = ph.start_s - time_offset_s, ph.end_s - time_offset_s
    f0 = int(np.floor(t0 * fps + 1e-9))
    return f0, max(int(np.ceil(t1 * fps - 1e-9)) - 1, f0)


def estimate_closure_offset(phones: list[Phone], mouth_open: np.ndarray, fps: Fraction, max_lag_frames: int = 10,
                            *, time_offset_s: float = 0.0, min_events: int = 5) -> AvOffset:
    """AV offset from articulation: the lips must be shut during p/b/m and apart during vowels.

    For every video shift ``d`` the score is the mean (standardised) mouth opening over the
    frames of vowel phones minus that over bilabial phones, both read at ``frame + d``; the
    best ``d`` (sub-frame, parabolic) says where the video's closures are relative to the
    audio's. Unlike energy correlation this has no anticipatory bias: the closure of a
    bilabial physically coincides with its acoustic segment. Same sign convention as
    :func:`estimate_av_offset` (``frames > 0``: audio late). NaN with fewer than
    ``min_events`` scored bilabials.
    """
    mo = np.asarray(mouth_open, dtype=np.float64).ravel()
    n, fps_f = len(mo), float(Fraction(fps))
    sd = np.nanstd(mo)
    z = (mo - np.nanmean(mo)) / (sd if sd > 0 else 1.0)
    spans = {"b": [], "v": []}
    for ph in phones:
        key = "b" if ph.label in BILABIALS else "v" if ph.label in VOWELS else None
        if key:
            spans[key].append(_phone_frames(ph, fps_f, time_offset_s))
    lags = np.arange(-max_lag_frames, max_lag_frames + 1)
    curve, n_b = np.full(len(lags), np.nan), 0

    def mean_over(sp: list[tuple[int, int]], d: int) -> tuple[float, int]:
        vals = []
        for f0, f1 in sp:
            lo, hi = f0 + d, f1 + d
            if lo >= 0 and hi < n:
                w = z[lo: hi + 1]
                if np.isfinite(w).any():
                    vals.append(np.nanmean(w))
        return (float(np.mean(vals)) if vals else np.nan), len(vals)

    for j, d in enumerate(lags):
        mb, nb = mean_over(spans["b"], int(d))
        mv, _ = mean_over(spans["v"], int(d))
        n_b = max(n_b, nb)
        if nb >= min_events:
            curve[j] = mv - mb
    if not np.isfinite(curve).all():
        return AvOffset(np.nan, np.nan, curve, lags, Fraction(fps), n_b, "closure")
    d_best, peak = _parabolic_peak(curve, lags)
    # Video shift d matches audio frame f to video frame f + d: the audio is late by -d.
    return AvOffset(-d_best, peak, curve[::-1].copy(), -lags[::-1].copy(), Fraction(fps), n_b, "closure")


# ---------------------------------------------------------------------------------------
# Bilabial closures
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BilabialEvent:
    label: str          # P, B or M
    start_s: float
    end_s: float
    first_frame: int    # 0-based frame indices searched (phone span widened by the tolerance)
    last_frame: int
    min_opening: float  # smallest mouth opening in the searched frames (NaN: no valid frame)
    hit: bool


@dataclass(frozen=True)
class BilabialReport:
    hit_rate: float                      # hits / scored events; NaN when there are none
    events: list[BilabialEvent]
    hits: np.ndarray                     # (n_scored,) bool, one per event with a valid frame
    closed_threshold: float
    n_unscored: int = 0                  # bilabials whose frames have no valid mouth opening

    def to_dict(self) -> dict:
        return {"hit_rate": float(self.hit_rate), "n_events": len(self.hits), "n_hits": int(self.hits.sum()),
                "n_unscored": self.n_unscored, "closed_threshold": self.closed_threshold}


def bilabial_hits(phones: list[Phone], mouth_open: np.ndarray, fps: Fraction, tol_frames: int = 1,
                  closed_threshold: float = DEFAULT_CLOSED_THRESHOLD, *, time_offset_s: float = 0.0,
                  min_duration_s: float = 0.0) -> BilabialReport:
    """For each p/b/m phone, are the lips closed at some frame within ``tol_frames`` of it?

    Phone ``[start_s, end_s)`` (seconds from the audio sample that video frame 0 starts at,
    minus ``time_offset_s``) covers frames ``floor(start*fps)`` .. ``ceil(end*fps) - 1``; the
    search widens that by ``tol_frames`` each side. A hit is a frame there whose
    ``mouth_open`` (as :func:`mouth_opening`) is ``<= closed_threshold``. Events whose whole
    window is outside the video or NaN are not scored (counted in ``n_unscored``).
    """
    mo = np.asarray(mouth_open, dtype=np.float64).ravel()
    fps_f = float(Fraction(fps))
    n = len(mo)
    events, hits, unscored = [], [], 0
    for ph in phones:
        if ph.label not in BILABIALS or ph.duration_s < min_duration_s:
            continue
        p0, p1 = _phone_frames(ph, fps_f, time_offset_s)
        f0, f1 = p0 - tol_frames, p1 + tol_frames
        lo, hi = max(f0, 0), min(f1, n - 1)
        win = mo[lo: hi + 1] if hi >= lo else np.empty(0)
        win = win[np.isfinite(win)]
        if win.size == 0:
            unscored += 1
            events.append(BilabialEvent(ph.label, ph.start_s, ph.end_s, f0, f1, np.nan, False))
            continue
        low = float(win.min())
        hit = low <= closed_threshold
        events.append(BilabialEvent(ph.label, ph.start_s, ph.end_s, f0, f1, low, hit))
        hits.append(hit)
    hits_arr = np.asarray(hits, dtype=bool)
    rate = float(hits_arr.mean()) if hits_arr.size else np.nan
    return BilabialReport(rate, events, hits_arr, float(closed_threshold), unscored)
