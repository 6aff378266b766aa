"""Image-quality metrics for renders: PSNR, SSIM, perceptual distance, LMD; masked variants.

All take (B, C, H, W) float tensors in [0, 1] (``data_range`` otherwise) and return (B,)
per-image values, so a caller can average over frames or report per-frame curves. ``mask``
(B, 1, H, W) in [0, 1] restricts a metric to a region (face, mouth): PSNR over the masked
pixels, SSIM as the mean of the SSIM map over the mask, the perceptual distance as the mean
of its spatial map over the mask.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim", "ssim_map", "perceptual_distance", "landmark_distance", "dilate_mask",
           "region_metrics"]


def _check(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"metric inputs must both be (B, C, H, W), got {tuple(x.shape)} and {tuple(y.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None,
         data_range: float = 1.0, eps: float = 1e-12) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, 10 log10(R^2 / MSE), per image. Identical images give +inf
    (clamped by ``eps`` to a large finite value)."""
    _check(x, y)
    d = (x.double() - y.double()) ** 2
    if mask is None:
        mse = d.mean((1, 2, 3))
    else:
        m = mask.double().expand_as(d)
        mse = (d * m).sum((1, 2, 3)) / m.sum((1, 2, 3)).clamp_min(eps)
    return (10 * torch.log10(data_range ** 2 / mse.clamp_min(eps))).to(x.dtype)


@lru_cache(maxsize=8)
def _gauss_1d(size: int, sigma: float) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, sigma: float = 1.5,
             win_size: int = 11, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """SSIM map (Wang et al. 2004) with an 11x11 Gaussian window (sigma 1.5) and the standard
    constants, averaged over channels; 'valid' filtering, so the map is (B, 1, H-10, W-10).

    Matches ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=...)``, which filters with the same 11-tap window
    (truncate 3.5) and discards the border where the window leaves the image.
    """
    _check(x, y)
    C = x.shape[1]
    g = _gauss_1d(win_size, sigma).to(device=x.device)
    gx = g.view(1, 1, 1, -1).repeat(C, 1, 1, 1)
    gy = g.view(1, 1, -1, 1).repeat(C, 1, 1, 1)
    xd, yd = x.double(), y.double()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, gx, groups=C), gy, groups=C)

    mu_x, mu_y = blur(xd), blur(yd)
    sxx = blur(xd * xd) - mu_x ** 2
    syy = blur(yd * yd) - mu_y ** 2
    sxy = blur(xd * yd) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return s.mean(1, keepdim=True).to(x.dtype)


def ssim(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None, data_range: float = 1.0,
         **kw: float) -> torch.Tensor:
    """Mean SSIM per image; with ``mask``, the mean of the SSIM map over the masked window centres."""
    return _masked_mean(ssim_map(x, y, data_range=data_range, **kw), mask)


def perceptual_distance(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None,
                        metric: torch.nn.Module | None = None, batch: int = 8) -> torch.Tensor:
    """ST-LPIPS distance per image (lower is better), optionally averaged over ``mask``.

    ``metric`` is an :class:`engine.neural.perceptual.STLPIPS` (built once and reused by the
    caller: it holds 59 MB of weights); evaluated in chunks of ``batch`` under no_grad.
    """
    _check(x, y)
    if metric is None:
        metric = _default_metric()
    dev = next(metric.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            m = None if mask is None else mask[i:i + batch].to(dev)
            out.append(metric(x[i:i + batch].to(dev), y[i:i + batch].to(dev), mask=m).float().cpu())
    return torch.cat(out)


_METRIC: list[torch.nn.Module] = []


def _default_metric() -> torch.nn.Module:
    if not _METRIC:
        from engine.neural.perceptual import STLPIPS
        _METRIC.append(STLPIPS())
    return _METRIC[0]


def landmark_distance(pred: torch.Tensor, target: torch.Tensor, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """LMD (Chen et al. 2018, "Lip Movements Generation at a Glance"): mean Euclidean distance
    between corresponding landmarks (..., N, 2) detected on the render and on the plate,
    divided by ``scale`` (e.g. the crop size, to report it resolution-free). Returns (...,)."""
    if pred.shape != target.shape or pred.shape[-1] != 2:
        raise ValueError(f"landmarks must both be (..., N, 2), got {tuple(pred.shape)} and {tuple(target.shape)}")
    return (pred.double() - target.double()).norm(dim=-1).mean(-1).div(scale).to(pred.dtype)


def dilate_mask(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Dilation of a (B, C, H, W) mask by a (2 radius + 1)^2 square: a max filter, done as
    a row pass then a column pass (same result, O(r) instead of O(r^2) per pixel)."""
    if radius <= 0:
        return mask
    k = 2 * radius + 1
    m = F.max_pool2d(mask, (1, k), stride=1, padding=(0, radius))
    return F.max_pool2d(m, (k, 1), stride=1, padding=(radius, 0))


def _masked_mean(m_map: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of a (B, 1, h, w) map over ``mask`` (B, 1, H, W), centre-cropped to the map's size
    (SSIM's 'valid' map is smaller than the image)."""
    if mask is None:
        return m_map.mean((1, 2, 3))
    pad_y = (mask.shape[-2] - m_map.shape[-2]) // 2
    pad_x = (mask.shape[-1] - m_map.shape[-1]) // 2
    m = mask[..., pad_y:mask.shape[-2] - pad_y, pad_x:mask.shape[-1] - pad_x].to(m_map.dtype)
    return (m_map * m).sum((1, 2, 3)) / m.sum((1, 2, 3)).clamp_min(1e-8)


def region_metrics(pred: torch.Tensor, target: torch.Tensor, masks: dict[str, torch.Tensor],
                   metric: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """``{"psnr_<region>", "ssim_<region>", "lpips_<region>"}`` -> (B,) for each named mask
    (``None`` as a mask means the whole image). Frames whose mask is empty get NaN, so a mean
    over frames can skip them (``torch.nanmean``) instead of averaging in a fake value.

    The SSIM map and the ST-LPIPS distance map are computed once per batch and averaged over
    each region (the VGG trunk is by far the most expensive part; once instead of once per
    region makes a held-out evaluation several times faster)."""
    _check(pred, target)
    if metric is None:
        metric = _default_metric()
    dev = next(metric.parameters()).device
    s_map = ssim_map(pred, target)
    with torch.no_grad():
        d_map = torch.cat([metric(pred[i:i + 8].to(dev), target[i:i + 8].to(dev), spatial=True).float().cpu()
                           for i in range(0, pred.shape[0], 8)])
    out: dict[str, torch.Tensor] = {}
    nan = torch.tensor(math.nan)
    for name, m in masks.items():
        empty = torch.zeros(pred.shape[0], dtype=torch.bool) if m is None else (m.sum((1, 2, 3)) <= 0).cpu()
        mm = None if m is None else m.cpu()
        vals = {
            "psnr": psnr(pred, target, m).float().cpu(),
            "ssim": _masked_mean(s_map, m).float().cpu(),
            "lpips": _masked_mean(d_map, mm),
        }
        for k, v in vals.items():
            out[f"{k}_{name}"] = torch.where(empty, nan, v)
    return out
