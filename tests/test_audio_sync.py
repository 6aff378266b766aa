"""Audio/lip-sync analysis: frame energy, mouth opening, AV offset, bilabial closures."""
from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from engine.audio import sync as S
from engine.audio.phones import Phone, PhoneAlignConfig

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PLATE = SHARED / "media" / "actor" / "EDTalk__pose_source2.mp4"


# ---------------------------------------------------------------------------------------
# energy
# ---------------------------------------------------------------------------------------
def test_frame_boundaries_exact_ntsc():
    fps, sr = Fraction(30000, 1001), 16000
    b = S.frame_boundaries(fps, sr, 1000, start_sample=7)
    want = [math.ceil(Fraction(k * sr) / fps) + 7 for k in range(1001)]
    assert b.tolist() == want
    # frames are 533 or 534 samples, never drifting
    assert set(np.diff(b).tolist()) == {533, 534}


def test_audio_energy_tone_lands_in_its_frames():
    fps, sr = Fraction(30000, 1001), 16000
    b = S.frame_boundaries(fps, sr, 40)
    x = np.zeros(b[-1], np.float32)
    t = np.arange(b[10], b[20])
    x[b[10]:b[20]] = 0.5 * np.sin(2 * np.pi * 440 * t / sr)
    e = S.audio_energy(x, sr, fps, 40)
    want = 20 * np.log10(0.5 / np.sqrt(2))
    assert np.allclose(e[10:20], want, atol=0.1)
    assert np.all(e[:10] == S.ENERGY_FLOOR_DB) and np.all(e[20:] == S.ENERGY_FLOOR_DB)
    # start_sample: frame 0 starts later in the array, so the tone moves to earlier frames
    e2 = S.audio_energy(x, sr, fps, 30, start_sample=int(b[5]))
    # (frame 4 of the shifted grid may catch one sample of the tone: 533.87-sample frames
    # do not tile from an arbitrary start exactly as from 0)
    assert np.allclose(e2[5:14], want, atol=0.1) and np.all(e2[:4] == S.ENERGY_FLOOR_DB) and e2[4] < want - 20
    # past the end of the audio is silence, stereo is averaged
    e3 = S.audio_energy(np.stack([x, x], 1), sr, fps, 60)
    assert np.allclose(e3[:40], e, atol=1e-9) and np.all(e3[40:] == S.ENERGY_FLOOR_DB)


def test_audio_energy_band_rejects_out_of_band_tone():
    fps, sr = Fraction(25), 16000
    t = np.arange(sr) / sr
    low = 0.5 * np.sin(2 * np.pi * 100 * t)
    mid = 0.5 * np.sin(2 * np.pi * 2000 * t)
    e_low = S.audio_energy(low, sr, fps, 25, band_hz=S.SYNC_BAND_HZ)
    e_mid = S.audio_energy(mid, sr, fps, 25, band_hz=S.SYNC_BAND_HZ)
    assert np.median(e_mid) - np.median(e_low) > 40


# ---------------------------------------------------------------------------------------
# synthetic talking signal: a smooth random mouth opening and speech-like audio whose
# envelope follows it, delayed by a known amount
# ---------------------------------------------------------------------------------------
def _mouth(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    from scipy.ndimage import gaussian_filter1d
    m = gaussian_filter1d(rng.standard_normal(n + 20), 1.5)[10:-10]
    return 0.03 * np.exp(0.8 * m / m.std())


def _audio_following(mouth: np.ndarray, fps: Fraction, sr: int, delay_frames: float, seed: int = 1) -> np.ndarray:
    """Noise carrier whose amplitude at time t is the mouth opening at t - delay, over a
    -60 dB noise floor (room tone)."""
    n_s = int(len(mouth) * sr / fps)
    t_frames = np.arange(n_s) * float(fps) / sr - 0.5   # frame centres at k + 0.5
    env = np.interp(t_frames - delay_frames, np.arange(len(mouth)), mouth, left=0, right=0)
    rng = np.random.default_rng(seed)
    return ((env * 4 + 1e-3) * rng.standard_normal(n_s)).astype(np.float32)


@pytest.mark.parametrize("delay", [0.0, 3.0, -4.0, 2.5])
def test_av_offset_recovers_known_shift(delay):
    fps, sr, n = Fraction(25), 16000, 600
    mouth = _mouth(n)
    audio = _audio_following(mouth, fps, sr, delay)
    off = S.av_offset_from_audio(audio, sr, fps, mouth, max_lag_frames=8)
    assert off.method == "energy"
    assert abs(off.frames - delay) < 0.25, off
    assert off.correlation > 0.6 and not off.at_edge
    assert len(off.curve) == 17 and off.lags[0] == -8


def test_av_offset_handles_nan_frames_and_sign():
    fps, sr, n = Fraction(30), 16000, 500
    mouth = _mouth(n, seed=3)
    energy = S.audio_energy(_audio_following(mouth, fps, sr, 2.0, seed=4), sr, fps, n)
    m = mouth.copy()
    m[100:160] = np.nan                     # a stretch with no face
    off = S.estimate_av_offset(m, energy, fps, max_lag_frames=6)
    assert off.frames == pytest.approx(2.0, abs=0.3)
    assert off.seconds == pytest.approx(off.frames / 30)
    # video delayed instead (the same mouth later): negative
    later = np.concatenate([np.full(3, np.nan), mouth[:-3]])
    assert S.estimate_av_offset(later, energy, fps, 6).frames == pytest.approx(-1.0, abs=0.3)


def test_av_offset_undetermined_on_constant_signal():
    off = S.estimate_av_offset(np.zeros(200), np.zeros(200), Fraction(25))
    assert math.isnan(off.frames)
    with pytest.raises(ValueError):
        S.estimate_av_offset(np.zeros(10), np.zeros(11), Fraction(25))


def test_offset_p_value_separates_paired_from_unrelated_signals():
    fps, sr, n = Fraction(25), 16000, 300
    mouth = _mouth(n, seed=5)
    energy = S.audio_energy(_audio_following(mouth, fps, sr, 2.0, seed=6), sr, fps, n)
    p_pair = S.offset_p_value(mouth, energy, 10)
    assert p_pair is not None and p_pair <= 0.01        # the best a 300-frame clip can give: 1/(1+258)
    # another mouth (same statistics) against the same audio: no pairing, no significance
    p_other = S.offset_p_value(_mouth(n, seed=7), energy, 10)
    assert p_other is not None and p_other > 0.05
    # too short for the surrogate test to mean anything: None, not a number
    assert S.offset_p_value(mouth[:45], energy[:45], 10) is None


# ---------------------------------------------------------------------------------------
# bilabials and closure offset
# ---------------------------------------------------------------------------------------
def _phones_and_mouth(fps: float, n: int, video_shift: int):
    """Alternating 'M AA' syllables; the video closes the lips ``video_shift`` frames after
    the audio's M (video late = audio early = offset -video_shift)."""
    phones, mouth = [], np.full(n, 0.15)
    t = 0.2
    while t + 0.4 < n / fps - 0.5:   # AA (6 frames) M (3 frames), repeated
        phones += [Phone("AA", t, t + 0.24), Phone("M", t + 0.24, t + 0.36)]
        f0 = int(round((t + 0.24) * fps))
        mouth[max(f0 + video_shift, 0): f0 + 3 + video_shift] = 0.0
        t += 0.36
    return phones, mouth


def test_bilabial_hits_tolerance_and_threshold():
    fps = 25.0
    phones, mouth = _phones_and_mouth(fps, 250, 0)
    rep = S.bilabial_hits(phones, mouth, Fraction(25))
    assert rep.hit_rate == 1.0 and len(rep.hits) == sum(p.label == "M" for p in phones)
    # closures 4 frames late: outside +-1 frame of the 3-frame M's
    phones2, mouth2 = _phones_and_mouth(fps, 250, 4)
    assert S.bilabial_hits(phones2, mouth2, Fraction(25), tol_frames=1).hit_rate == 0.0
    assert S.bilabial_hits(phones2, mouth2, Fraction(25), tol_frames=2).hit_rate == 1.0
    # a wide-open mouth never hits; a huge threshold always does
    assert S.bilabial_hits(phones, np.full(250, 0.2), Fraction(25)).hit_rate == 0.0
    assert S.bilabial_hits(phones, np.full(250, 0.2), Fraction(25), closed_threshold=0.3).hit_rate == 1.0
    # no valid frames -> unscored, rate NaN
    rep = S.bilabial_hits(phones, np.full(250, np.nan), Fraction(25))
    assert math.isnan(rep.hit_rate) and rep.n_unscored == len(rep.events)


def test_closure_offset_recovers_shift():
    fps = 25.0
    for shift in (0, 2, -3):
        phones, mouth = _phones_and_mouth(fps, 500, shift)
        off = S.estimate_closure_offset(phones, mouth, Fraction(25), max_lag_frames=6)
        assert off.method == "closure"
        assert off.frames == pytest.approx(-shift, abs=0.5), (shift, off)


def test_mouth_opening_from_landmarks():
    from engine.face import landmarks as L
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 10, (3, 478, 2))
    pts[:, L.RIGHT_EYE_OUTER] = [0, 0]
    pts[:, L.LEFT_EYE_OUTER] = [100, 0]
    for a, b in L.INNER_LIP_PAIRS:
        pts[:, a] = [50, 80]
        pts[:, b] = [50, 80]
    gaps = np.array([0.0, 5.0, 20.0])
    for a, b in L.INNER_LIP_PAIRS:
        pts[:, b, 1] = 80 + gaps
    mo = S.mouth_opening(pts, valid=np.array([True, True, False]))
    assert mo[:2] == pytest.approx([0.0, 0.05]) and math.isnan(mo[2])
    with pytest.raises(ValueError):
        S.mouth_opening(np.zeros((2, 68, 2)))


# ---------------------------------------------------------------------------------------
# pocketsphinx (real speech)
# ---------------------------------------------------------------------------------------
def _need(path: Path):
    if not path.exists():
        pytest.skip(f"test media {path} not available")
    pytest.importorskip("pocketsphinx")


def test_phone_alignment_real_speech():
    _need(PLATE)
    from engine.io.audio import extract_audio
    from engine.audio.phones import phone_alignment
    x = extract_audio(PLATE, 16000)[: 16000 * 6]
    for method in ("words", "allphone"):
        ph = phone_alignment(x, 16000, PhoneAlignConfig(method=method))
        assert len(ph) > 30, method
        starts = np.array([p.start_s for p in ph])
        assert np.all(np.diff(starts) >= 0) and all(p.end_s > p.start_s for p in ph)
        assert 0 <= ph[0].start_s and ph[-1].end_s <= 6.01
        labels = {p.label for p in ph}
        assert labels & S.VOWELS and labels & {"P", "B", "M"}, labels
    # the same audio at 48 kHz (resampled inside) gives nearly the same phones
    x48 = extract_audio(PLATE, 48000)[: 48000 * 6]
    ph48 = phone_alignment(x48, 48000, PhoneAlignConfig(method="allphone"))
    ph16 = phone_alignment(x, 16000, PhoneAlignConfig(method="allphone"))
    assert abs(len(ph48) - len(ph16)) <= 0.2 * len(ph16)
    assert phone_alignment(np.zeros(100, np.float32), 16000) == []
    with pytest.raises(Exception):
        phone_alignment(x, 16000, PhoneAlignConfig(method="bogus"))


@pytest.mark.slow
def test_plate_sync_real():
    """On 12 s of the primary plate: lips closed at >= 80 % of p/b/m, and both offset
    estimators agree within a frame (the plate's audio measures ~2 frames late)."""
    _need(PLATE)
    from engine.face.landmarks import track_frames
    from engine.io.audio import extract_audio
    from engine.io.video import VideoSource
    from engine.audio.phones import phone_alignment
    n = 300
    src = VideoSource(PLATE)
    lm = track_frames(src.iter_frames(0, n))
    mo = S.mouth_opening(lm.points, lm.usable)
    fps = src.fps
    x = extract_audio(PLATE, 16000)[: 16000 * n // 25]
    phones = phone_alignment(x, 16000)
    rep = S.bilabial_hits(phones, mo, fps)
    assert len(rep.hits) >= 8 and rep.hit_rate >= 0.8, rep.to_dict()
    e = S.av_offset_from_audio(x, 16000, fps, mo)
    c = S.estimate_closure_offset(phones, mo, fps)
    assert np.isfinite(e.frames) and np.isfinite(c.frames)
    assert abs(e.frames - c.frames) <= 1.5, (e.to_dict(), c.to_dict())
    assert -1.0 <= c.frames <= 4.0
