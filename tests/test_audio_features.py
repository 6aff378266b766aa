"""Log-mel features aligned to video frames, CMVN, viseme features."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from engine.audio import features as F
from engine.audio.phones import Phone
from engine.audio.sync import frame_boundaries
from engine.errors import ConfigError


def test_filterbank_and_tone_band():
    cfg = F.AudioFeatureConfig()
    fb = F.mel_filterbank(16000, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)
    assert fb.shape == (cfg.n_mels, cfg.n_fft // 2 + 1) and (fb >= 0).all()
    t = np.arange(16000) / 16000
    lo = F.log_mel(np.sin(2 * np.pi * 200 * t), 16000, cfg)
    hi = F.log_mel(np.sin(2 * np.pi * 3000 * t), 16000, cfg)
    assert lo.shape == (98, cfg.n_mels)
    assert np.argmax(lo.mean(0)) < np.argmax(hi.mean(0))
    # other input rates are resampled: a 48 kHz tone lands in the same band
    t48 = np.arange(48000) / 48000
    hi48 = F.log_mel(np.sin(2 * np.pi * 3000 * t48), 48000, cfg)
    assert np.argmax(hi48.mean(0)) == np.argmax(hi.mean(0))


def _speechy(n_s: int, seed: int = 0) -> np.ndarray:
    """Noise with a syllable-rate envelope and a moving spectral peak, never silent."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_s) / 16000
    env = 0.2 + 0.8 * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) ** 2
    carrier = rng.standard_normal(n_s) + np.sin(2 * np.pi * (500 + 300 * np.sin(2 * np.pi * 0.5 * t)) * t)
    return (0.1 * env * carrier).astype(np.float32)


def test_features_shape_and_level_invariance():
    fps, n = Fraction(25), 100
    x = _speechy(16000 * 4)
    cfg = F.AudioFeatureConfig()
    a = F.audio_features(x, 16000, fps, n, config=cfg)
    b = F.audio_features(x * 0.05, 16000, fps, n, config=cfg)
    assert a.mel.shape == (n, cfg.window_len, cfg.n_mels) and a.mel.dtype == np.float32
    assert a.speech.all()
    # per-utterance normalisation: a 26 dB quieter recording gives the same features
    assert np.abs(a.mel - b.mel).max() < 0.05
    assert np.median(a.energy_db - b.energy_db) == pytest.approx(26.0, abs=0.5)
    # CMVN: speech features are zero-mean, unit-variance per band
    centre = a.mel[:, cfg.context]
    assert np.abs(centre.mean(0)).max() < 0.2 and np.abs(centre.std(0) - 1).max() < 0.2


def test_features_frame_alignment_ntsc():
    fps, sr, n = Fraction(30000, 1001), 16000, 60
    b = frame_boundaries(fps, sr, n)
    x = np.zeros(int(b[-1]), np.float32) + 1e-4 * np.random.default_rng(0).standard_normal(int(b[-1])).astype(np.float32)
    x[b[30]:b[36]] += 0.3 * np.sin(2 * np.pi * 1000 * np.arange(b[36] - b[30]) / sr)
    f = F.audio_features(x, sr, fps, n)
    assert f.speech[31:35].all() and not f.speech[:28].any() and not f.speech[38:].any()
    loud = np.flatnonzero(f.energy_db > f.energy_db.min() + 30)
    assert loud.min() in (29, 30) and loud.max() in (35, 36)
    # start_sample moves frame 0: the burst appears 10 frames earlier
    g = F.audio_features(x, sr, fps, n - 10, start_sample=int(b[10]))
    assert g.speech[21:25].all() and not g.speech[:18].any()
    # frames past the audio are silence; the window pads with the quietest level
    h = F.audio_features(x, sr, fps, n + 20)
    assert not h.speech[n:].any()
    assert np.allclose(h.mel[-1], h.mel[-1][0][None])


def test_viseme_features():
    phones = [Phone("M", 0.0, 0.06), Phone("AA", 0.06, 0.2)]
    v = F.viseme_features(phones, Fraction(25), 8)
    assert v.shape == (8, len(F.VISEME_CLASSES))
    assert np.allclose(v.sum(1), 1.0)
    names = [c for c, _ in F.VISEME_CLASSES]
    assert v[0, names.index("bilabial")] == pytest.approx(1.0)
    assert v[1, names.index("bilabial")] == pytest.approx(0.5) and v[1, names.index("open")] == pytest.approx(0.5)
    assert v[6, names.index("sil")] == pytest.approx(1.0)
    f = F.audio_features(_speechy(16000), 16000, Fraction(25), 10, phones=phones)
    assert f.visemes.shape == (10, len(F.VISEME_CLASSES))


def test_config_validation():
    with pytest.raises(ConfigError):
        F.audio_features(np.zeros(1600), 16000, Fraction(25), 2, config=F.AudioFeatureConfig(fmax=9000))
