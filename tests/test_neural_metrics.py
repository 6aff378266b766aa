"""engine.neural.metrics against independent references (skimage, numpy) and known values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from engine.neural.metrics import dilate_mask, landmark_distance, psnr, region_metrics, ssim


def _pair(seed: int, shape=(2, 3, 40, 48), noise=0.1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    y = (x + noise * torch.randn(shape, generator=g)).clamp(0, 1)
    return x, y


def test_psnr_matches_skimage():
    x, y = _pair(0)
    got = psnr(x, y)
    for b in range(2):
        ref = peak_signal_noise_ratio(x[b].numpy(), y[b].numpy(), data_range=1.0)
        assert got[b].item() == pytest.approx(ref, abs=1e-4)


def test_psnr_known_value_and_mask():
    x = torch.zeros(1, 3, 8, 8)
    y = torch.full((1, 3, 8, 8), 0.1)  # MSE 0.01 -> 20 dB
    assert psnr(x, y).item() == pytest.approx(20.0, abs=1e-5)
    # Masked: errors outside the mask must not count.
    y2 = y.clone()
    y2[..., :, 4:] = 0.5
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, :4] = 1
    assert psnr(x, y2, mask).item() == pytest.approx(20.0, abs=1e-5)
    assert psnr(x, y2).item() < 15


def test_ssim_matches_skimage():
    x, y = _pair(1, shape=(2, 3, 64, 56), noise=0.15)
    got = ssim(x, y)
    for b in range(2):
        ref = structural_similarity(x[b].permute(1, 2, 0).numpy(), y[b].permute(1, 2, 0).numpy(),
                                    gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=1.0, channel_axis=-1)
        assert got[b].item() == pytest.approx(ref, abs=1e-5)


def test_ssim_identity_and_masked_region():
    x, y = _pair(2, shape=(1, 3, 48, 48), noise=0.3)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)
    # Left half identical, right half noisy: the masked SSIM over the clean half is ~1.
    z = x.clone()
    z[..., 24:] = y[..., 24:]
    mask = torch.zeros(1, 1, 48, 48)
    mask[..., :12] = 1
    assert ssim(x, z, mask).item() == pytest.approx(1.0, abs=1e-6)
    assert ssim(x, z).item() < 0.9


def test_dilate_mask_is_a_square_max_filter():
    m = torch.zeros(1, 1, 11, 11)
    m[0, 0, 5, 5] = 1
    d = dilate_mask(m, 2)
    assert d.sum().item() == 25 and d[0, 0, 3:8, 3:8].min().item() == 1


def test_landmark_distance():
    a = torch.zeros(2, 5, 2)
    b = a.clone()
    b[..., 0] = 3.0
    b[..., 1] = 4.0
    assert torch.allclose(landmark_distance(a, b), torch.tensor([5.0, 5.0]))
    assert torch.allclose(landmark_distance(a, b, scale=5.0), torch.tensor([1.0, 1.0]))


def test_region_metrics_empty_region_is_nan(l1_metric):
    x, y = _pair(3, shape=(2, 3, 32, 32))
    face = torch.ones(2, 1, 32, 32)
    mouth = torch.zeros(2, 1, 32, 32)
    mouth[0, :, 10:20, 10:20] = 1
    out = region_metrics(x, y, {"face": face, "mouth": mouth}, metric=l1_metric)
    assert set(out) == {f"{m}_{r}" for m in ("psnr", "ssim", "lpips") for r in ("face", "mouth")}
    assert math.isfinite(out["psnr_mouth"][0].item()) and math.isnan(out["psnr_mouth"][1].item())
    assert np.isfinite(out["psnr_face"].numpy()).all()
    # One distance map per batch, averaged per region == the metric evaluated on each region.
    m = l1_metric
    torch.testing.assert_close(out["lpips_face"], m(x, y, mask=face))
    torch.testing.assert_close(out["lpips_mouth"][:1], m(x[:1], y[:1], mask=mouth[:1]))
