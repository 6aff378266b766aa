"""Temporal filters: lag, jitter reduction, causality, validity gaps, fps awareness."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from engine.errors import ConfigError
from engine.face.smoothing import SmoothingConfig, mean_acceleration, savgol_weights, smooth

FPS = Fraction(25)
ONE_EURO = SmoothingConfig(kind="one_euro")
SAVGOL = SmoothingConfig(kind="savgol", past=6, lookahead=1, order=2)
SAVGOL_CAUSAL = SmoothingConfig(kind="savgol", past=6, lookahead=0, order=1)
FILTERS = [ONE_EURO, SAVGOL, SAVGOL_CAUSAL]


def _noisy_track(seed=0, n=400, points=68, sigma=0.5):
    """Slow head-like motion of a point cloud (pixels) plus landmark jitter."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / float(FPS)
    motion = np.stack([6 * np.sin(2 * np.pi * 0.4 * t), 3 * np.cos(2 * np.pi * 0.25 * t)], -1)
    clean = motion[:, None, :] + rng.uniform(50, 200, (1, points, 2))
    return clean, clean + rng.normal(0, sigma, clean.shape)


def _step_lag(cfg, size=10.0) -> int:
    x = np.zeros(80)
    x[40:] = size
    y = smooth(x, cfg, FPS)
    return int(np.argmax(y >= size / 2)) - 40


def _ramp_lag(cfg, slope=1.0) -> float:
    """Steady-state delay (frames) of the output behind a ramp of ``slope`` units/frame."""
    x = np.arange(120, dtype=np.float64) * slope
    y = smooth(x, cfg, FPS)
    return float(np.mean((x - y)[80:]) / slope)


def _xcorr_lag(x, y) -> int:
    """Lag (frames) maximising the cross-correlation of the detrended signals."""
    x = x - x.mean()
    y = y - y.mean()
    lags = range(-5, 6)
    return max(lags, key=lambda k: float(np.dot(x[10:-10], np.roll(y, -k)[10:-10])))


@pytest.mark.parametrize("cfg", FILTERS, ids=lambda c: f"{c.kind}-la{c.lookahead}")
def test_lag_at_most_one_frame(cfg):
    assert 0 <= _step_lag(cfg) <= 1
    lag = _ramp_lag(cfg, slope=1.0)
    assert -0.05 <= lag <= 1.0, lag
    clean, noisy = _noisy_track()
    y = smooth(noisy, cfg, FPS)
    assert abs(_xcorr_lag(clean[:, 0, 0], y[:, 0, 0])) <= 1


@pytest.mark.parametrize("cfg", FILTERS, ids=lambda c: f"{c.kind}-la{c.lookahead}")
def test_jitter_reduced_by_40_percent(cfg):
    clean, noisy = _noisy_track()
    y = smooth(noisy, cfg, FPS)
    assert y.shape == noisy.shape
    before, after = mean_acceleration(noisy), mean_acceleration(y)
    assert after <= 0.6 * before, (before, after)
    # and it does not buy smoothness by drifting away from the true motion
    assert np.sqrt(np.mean((y - clean) ** 2)) < 1.1 * np.sqrt(np.mean((noisy - clean) ** 2))


@pytest.mark.parametrize("cfg", FILTERS, ids=lambda c: f"{c.kind}-la{c.lookahead}")
def test_short_and_empty_tracks(cfg):
    assert smooth(np.zeros((0, 4, 2)), cfg, FPS).shape == (0, 4, 2)
    np.testing.assert_allclose(smooth(np.array([3.0]), cfg, FPS), [3.0])
    np.testing.assert_allclose(smooth(np.array([3.0, 5.0]), cfg, FPS)[0], 3.0)
    assert np.isnan(mean_acceleration(np.zeros((0, 2))))


def test_none_is_identity_copy():
    _, noisy = _noisy_track(n=20)
    y = smooth(noisy, SmoothingConfig(kind="none"), FPS)
    np.testing.assert_array_equal(y, noisy)
    assert y is not noisy


@pytest.mark.parametrize("cfg", FILTERS, ids=lambda c: f"{c.kind}-la{c.lookahead}")
def test_constant_passes_unchanged(cfg):
    x = np.full((30, 5, 2), 7.25)
    np.testing.assert_allclose(smooth(x, cfg, FPS), x, atol=1e-9)


@pytest.mark.parametrize("cfg,reach", [(ONE_EURO, 0), (SAVGOL, 1), (SAVGOL_CAUSAL, 0)],
                         ids=["one_euro", "savgol-la1", "savgol-la0"])
def test_look_ahead_is_bounded(cfg, reach):
    """Changing frame t must not change outputs before t - reach."""
    _, noisy = _noisy_track(n=60, points=3)
    y0 = smooth(noisy, cfg, FPS)
    changed = noisy.copy()
    changed[30:] += 50.0
    y1 = smooth(changed, cfg, FPS)
    np.testing.assert_array_equal(y0[:30 - reach], y1[:30 - reach])
    if reach:
        assert not np.allclose(y0[30 - reach], y1[30 - reach])


def test_savgol_weights_match_scipy_and_reproduce_polynomials():
    from scipy.signal import savgol_coeffs
    for past, la, order in ((6, 1, 2), (6, 0, 1), (4, 1, 3), (8, 1, 2)):
        w = savgol_weights(past, la, order)
        ref = savgol_coeffs(past + la + 1, order, pos=past, use="dot")
        np.testing.assert_allclose(w, ref, atol=1e-10)
        assert w.sum() == pytest.approx(1.0)
    # a quadratic passes unchanged everywhere, including the shortened windows at the ends
    t = np.arange(40, dtype=np.float64)
    quad = 0.03 * t ** 2 - 0.5 * t + 4
    np.testing.assert_allclose(smooth(quad, SAVGOL, FPS), quad, atol=1e-8)


@pytest.mark.parametrize("cfg", FILTERS, ids=lambda c: f"{c.kind}-la{c.lookahead}")
def test_invalid_frames_break_the_filter(cfg):
    # a face at 0 disappears for 3 frames and comes back at 100: no smoothing across the gap
    x = np.zeros((40, 2))
    x[20:] = 100.0
    valid = np.ones(40, bool)
    valid[17:20] = False
    x[17:20] = np.nan
    y = smooth(x, cfg, FPS, valid=valid)
    np.testing.assert_allclose(y[:17], 0.0, atol=1e-9)
    assert np.isnan(y[17:20]).all()                     # passed through untouched
    np.testing.assert_allclose(y[20:], 100.0, atol=1e-9)
    # NaN frames are treated as invalid even without a mask
    y2 = smooth(x, cfg, FPS)
    np.testing.assert_allclose(y2[20:], 100.0, atol=1e-9)
    # an explicit invalid frame with finite data is also passed through
    z = np.arange(30, dtype=np.float64)
    v = np.ones(30, bool)
    v[10] = False
    z[10] = -999.0
    out = smooth(z, cfg, FPS, valid=v)
    assert out[10] == -999.0 and np.all(np.abs(out[11:] - z[11:]) < 2.0)


def test_one_euro_is_fps_aware():
    """The same physical ramp sampled at 25 and 100 fps lags by the same time."""
    lags = []
    for fps in (25, 100):
        t = np.arange(4 * fps) / fps
        x = 20.0 * t                       # 20 units per second
        y = smooth(x, ONE_EURO, fps)
        lags.append(float(np.mean((x - y)[-fps:]) / 20.0))   # seconds
    assert lags[0] == pytest.approx(lags[1], rel=0.15)


def test_mean_acceleration():
    t = np.arange(10, dtype=np.float64)
    assert mean_acceleration(t ** 2) == pytest.approx(2.0)
    pts = np.stack([3 * t ** 2, 4 * t ** 2], -1)[:, None, :]      # (N, 1, 2): norm = 10
    assert mean_acceleration(pts) == pytest.approx(10.0)
    valid = np.ones(10, bool)
    valid[5] = False
    bumped = t ** 2
    bumped[5] += 1000
    assert mean_acceleration(bumped, valid) == pytest.approx(2.0)
    assert np.isnan(mean_acceleration(t[:2]))


def test_config_errors():
    with pytest.raises(ConfigError):
        smooth(np.zeros(5), SmoothingConfig(kind="kalman"), FPS)
    with pytest.raises(ConfigError):
        smooth(np.zeros(5), SmoothingConfig(kind="savgol", lookahead=2), FPS)
    with pytest.raises(ConfigError):
        smooth(np.zeros(5), SmoothingConfig(kind="savgol", past=1, lookahead=0, order=3), FPS)
    with pytest.raises(ConfigError):
        smooth(np.zeros(5), ONE_EURO, 0)
    with pytest.raises(ConfigError):
        smooth(np.zeros(5), ONE_EURO, FPS, valid=np.ones(4, bool))
