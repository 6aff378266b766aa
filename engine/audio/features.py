"""Audio features for the audio-to-expression model, aligned to video frames.

Log-mel spectrogram (25 ms Hann window, 10 ms hop, 16 kHz) with per-utterance mean/variance
normalisation per mel band (CMVN). The dub voice is usually another speaker, another
language, another microphone: CMVN removes what is constant over the utterance in each
band — level, the microphone/room response and much of the speaker's average spectral
envelope (timbre) — and leaves how the spectrum *changes*, which is what articulation does.
Statistics come from speech frames only, so that the share of pauses in a clip does not
move them (a clip that is half silence would otherwise read every speech frame as loud).
Further speaker independence comes from training-time frequency warping (VTLP, Jaitly &
Hinton 2013) in :mod:`engine.audio.a2e`.

Alignment: video frame ``k`` covers samples ``[b_k, b_{k+1})`` (see
:func:`engine.audio.sync.frame_boundaries`); its feature is the window of ``2*context+1``
mel frames (10 ms apart) centred on the frame's centre instant. Mel frames outside the
audio are the utterance's quietest level.

Optional phone features: per video frame, the fraction of the frame covered by each viseme
class of the phones found by pocketsphinx (:mod:`engine.audio.phones`), a coarse,
voice-independent description of what the mouth must do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from engine.audio.phones import Phone
from engine.audio.sync import frame_boundaries
from engine.errors import ConfigError

__all__ = ["AudioFeatureConfig", "AudioFeatures", "log_mel", "cmvn", "audio_features", "VISEME_CLASSES",
           "viseme_features", "mel_filterbank"]


@dataclass
class AudioFeatureConfig:
    """Log-mel features (nerfstudio-style config next to its code)."""

    sample_rate: int = 16000
    n_mels: int = 40
    win_s: float = 0.025
    hop_s: float = 0.010
    n_fft: int = 512
    fmin: float = 60.0
    fmax: float = 7600.0
    context: int = 12            # mel frames each side of a video frame's centre (+-120 ms)
    speech_db_below_peak: float = 35.0   # speech frames: within this of the clip's 95th percentile level
    speech_floor_dbfs: float = -60.0     # ... and above this absolute RMS level (digital silence is not speech)
    floor: float = 1e-10         # added to mel power before the log (digital silence)

    def validate(self) -> None:
        if self.n_mels < 1 or self.context < 0 or self.hop_s <= 0 or self.win_s <= 0:
            raise ConfigError("audio features: n_mels >= 1, context >= 0, positive hop and window")
        if not 0 < self.fmin < self.fmax <= self.sample_rate / 2:
            raise ConfigError(f"audio features: need 0 < fmin < fmax <= {self.sample_rate / 2}")

    @property
    def window_len(self) -> int:
        return 2 * self.context + 1


@dataclass
class AudioFeatures:
    mel: np.ndarray        # (N, 2*context+1, n_mels) float32, CMVN-normalised log-mel
    energy_db: np.ndarray  # (N,) float32 total mel power of the frame's own span, dB (before CMVN)
    speech: np.ndarray     # (N,) bool: the frame's span holds speech (energy VAD)
    visemes: np.ndarray | None = None  # (N, len(VISEME_CLASSES)) float32 when phones were given

    def __len__(self) -> int:
        return len(self.mel)


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_mels, n_fft//2+1) triangular HTK-mel filters, area-normalised (Slaney style)."""
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fb = np.zeros((n_mels, len(freqs)))
    for i in range(n_mels):
        lo, c, hi = edges[i], edges[i + 1], edges[i + 2]
        up = (freqs - lo) / max(c - lo, 1e-9)
        down = (hi - freqs) / max(hi - c, 1e-9)
        fb[i] = np.maximum(0.0, np.minimum(up, down)) * (2.0 / (hi - lo))
    return fb


def _resample(x: np.ndarray, sr: int, target: int) -> np.ndarray:
    if sr == target:
        return x
    from scipy.signal import resample_poly
    g = math.gcd(int(sr), int(target))
    return resample_poly(x, target // g, int(sr) // g)


def _analysis_signal(samples: np.ndarray, sr: int, cfg: AudioFeatureConfig) -> tuple[np.ndarray, int, int]:
    """Mono float64 signal at ``cfg.sample_rate`` and the analysis window / hop in samples."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    x = _resample(x, sr, cfg.sample_rate)
    return x, int(round(cfg.win_s * cfg.sample_rate)), int(round(cfg.hop_s * cfg.sample_rate))


def log_mel(samples: np.ndarray, sr: int, config: AudioFeatureConfig | None = None) -> np.ndarray:
    """(T, n_mels) natural-log mel power; mel frame ``j`` is centred at ``j*hop + win/2``
    seconds (at ``config.sample_rate``)."""
    cfg = config or AudioFeatureConfig()
    return _log_mel(*_analysis_signal(samples, sr, cfg), cfg)


def _log_mel(x: np.ndarray, win: int, hop: int, cfg: AudioFeatureConfig) -> np.ndarray:
    n = max(1 + (len(x) - win) // hop, 0) if len(x) >= win else 0
    fb = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)
    if n == 0:
        return np.zeros((0, cfg.n_mels), np.float32)
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    frames = x[idx] * np.hanning(win + 2)[1:-1][None, :]
    spec = np.abs(np.fft.rfft(frames, n=cfg.n_fft, axis=1)) ** 2
    return np.log(spec @ fb.T + cfg.floor).astype(np.float32)


def cmvn(logmel: np.ndarray, speech: np.ndarray | None = None, floor_std: float = 0.1) -> np.ndarray:
    """Per-band mean/variance normalisation with statistics over ``speech`` frames (all
    frames when fewer than 10 are speech)."""
    x = np.asarray(logmel, dtype=np.float64)
    sel = x if speech is None or int(np.sum(speech)) < 10 else x[np.asarray(speech, bool)]
    if len(sel) == 0:
        return x.astype(np.float32)
    mu, sd = sel.mean(axis=0), np.maximum(sel.std(axis=0), floor_std)
    return ((x - mu) / sd).astype(np.float32)


def _frame_rms_dbfs(x: np.ndarray, win: int, hop: int, n: int) -> np.ndarray:
    """RMS level (dB full scale) of each of the ``n`` mel analysis windows of the analysis signal."""
    cs = np.concatenate([[0.0], np.cumsum(x * x)])
    s0 = hop * np.arange(n)
    p = (cs[np.minimum(s0 + win, len(x))] - cs[np.minimum(s0, len(x))]) / win
    return 10.0 * np.log10(np.maximum(p, 1e-12))


def audio_features(samples: np.ndarray, sr: int, fps: Fraction, n_frames: int, start_sample: int = 0,
                   config: AudioFeatureConfig | None = None, phones: list[Phone] | None = None) -> AudioFeatures:
    """Features of video frames ``0..n_frames-1``, frame 0 starting at ``start_sample`` of
    ``samples`` (at ``sr``). ``phones`` (times relative to sample 0 of ``samples``) add
    viseme features."""
    cfg = config or AudioFeatureConfig()
    cfg.validate()
    x, win, hop_n = _analysis_signal(samples, sr, cfg)  # resampled once for both analyses
    lm = _log_mel(x, win, hop_n, cfg)                    # (T, M) at cfg.sample_rate
    hop, half_win = cfg.hop_s, cfg.win_s / 2
    # frame level: log of the total mel power (a mean of log-bands would let quiet bands
    # mask a loud narrow-band sound)
    frame_db = (np.logaddexp.reduce(lm.astype(np.float64), axis=1) if len(lm) else np.zeros(0))
    if len(lm):
        peak = np.percentile(frame_db, 95)
        speech_mel = (frame_db > peak - cfg.speech_db_below_peak / (10.0 / math.log(10))) \
            & (_frame_rms_dbfs(x, win, hop_n, len(lm)) > cfg.speech_floor_dbfs)
    else:
        speech_mel = np.zeros(0, bool)
    norm = cmvn(lm, speech_mel)
    # Context windows beyond the ends of the audio are padded with the utterance's quietest
    # normalised level per band (not with normalised digital silence, whose value would
    # depend on the recording level).
    silence = norm.min(axis=0, keepdims=True) if len(lm) else np.zeros((1, cfg.n_mels), np.float32)
    b = frame_boundaries(fps, sr, n_frames, start_sample)
    centres_s = (b[:-1] + b[1:]) / 2.0 / sr               # seconds from sample 0
    # mel frame j is centred at j*hop + win/2
    centre_idx = np.rint((centres_s - half_win) / hop).astype(np.int64)
    offs = np.arange(-cfg.context, cfg.context + 1)
    idx = centre_idx[:, None] + offs[None, :]
    inside = (idx >= 0) & (idx < len(lm))
    padded = np.concatenate([norm, silence], axis=0)
    mel = padded[np.where(inside, idx, len(padded) - 1)]
    # per-video-frame energy and VAD over the frame's own span
    lo = np.clip(np.floor((b[:-1] / sr - half_win) / hop).astype(np.int64), 0, max(len(lm) - 1, 0))
    hi = np.clip(np.ceil((b[1:] / sr - half_win) / hop).astype(np.int64), 0, max(len(lm) - 1, 0))
    if len(lm):
        cs = np.concatenate([[0.0], np.cumsum(frame_db)])
        csp = np.concatenate([[0], np.cumsum(speech_mel)])
        cnt = np.maximum(hi - lo + 1, 1)
        e = (cs[hi + 1] - cs[lo]) / cnt
        sp = (csp[hi + 1] - csp[lo]) / cnt >= 0.5
        outside = (b[1:] <= 0) | (b[:-1] >= len(np.asarray(samples)))
        e = np.where(outside, math.log(cfg.floor), e)
        sp = sp & ~outside
    else:
        e, sp = np.full(n_frames, math.log(cfg.floor)), np.zeros(n_frames, bool)
    vis = viseme_features(phones, fps, n_frames, start_sample / sr) if phones is not None else None
    return AudioFeatures(mel.astype(np.float32), (e * 10.0 / math.log(10)).astype(np.float32), sp, vis)


#: Viseme classes (mouth shapes) grouping ARPAbet phones; index 0 is silence/unknown.
VISEME_CLASSES: tuple[tuple[str, frozenset[str]], ...] = (
    ("sil", frozenset({"SIL", "+SPN+", "+NSN+", "SP"})),
    ("bilabial", frozenset({"P", "B", "M"})),
    ("labiodental", frozenset({"F", "V"})),
    ("dental", frozenset({"TH", "DH"})),
    ("alveolar", frozenset({"T", "D", "N", "L", "S", "Z"})),
    ("postalveolar", frozenset({"SH", "ZH", "CH", "JH"})),
    ("velar", frozenset({"K", "G", "NG", "HH", "Y"})),
    ("rounded", frozenset({"W", "R", "UW", "UH", "OW", "OY", "ER"})),
    ("open", frozenset({"AA", "AE", "AH", "AO", "AW", "AY"})),
    ("spread", frozenset({"IY", "IH", "EH", "EY"})),
)


def viseme_features(phones: list[Phone], fps: Fraction, n_frames: int, t0_s: float = 0.0) -> np.ndarray:
    """(n_frames, n_classes) fraction of each video frame covered by each viseme class;
    frame ``k`` spans ``[t0 + k/fps, t0 + (k+1)/fps)`` seconds; uncovered time counts as silence."""
    lut = {p: i for i, (_, ps) in enumerate(VISEME_CLASSES) for p in ps}
    out = np.zeros((n_frames, len(VISEME_CLASSES)), np.float32)
    f = float(Fraction(fps))
    for ph in phones:
        c = lut.get(ph.label, 0)
        a, z = (ph.start_s - t0_s) * f, (ph.end_s - t0_s) * f
        for k in range(max(int(math.floor(a)), 0), min(int(math.ceil(z)), n_frames)):
            out[k, c] += max(0.0, min(z, k + 1) - max(a, k))
    out[:, 0] += np.clip(1.0 - out.sum(axis=1), 0.0, None)
    return out
