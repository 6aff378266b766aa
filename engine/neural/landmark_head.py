"""A small differentiable landmark regressor on face crops (stage-2 geometric guidance).

Geometric consistency losses for neural head renderers (Zakharov et al. 2019, "Few-Shot
Adversarial Learning of Realistic Neural Talking Head Models", and Doukas et al. 2021
"HeadGAN", both supervise generated faces with facial landmarks) need landmarks *as a
differentiable function of the generated image*. No pretrained landmark network may be
downloaded here, so the head is trained on the actor's own plate frames, where the tracked
face model's projected landmarks are the labels; on renders of new expressions/poses it
must then find the landmarks of the conditioning that produced them, and the generator is
penalised when it does not (the render does not show the geometry it was asked for).

Architecture: a few strided / dilated convolutions with CoordConv inputs (Liu et al. 2018,
"An intriguing failing of convolutional neural networks and the CoordConv solution") to one
heatmap per landmark, and a spatial soft-argmax (integral regression, Sun et al. 2018
"Integral Human Pose Regression") to sub-pixel coordinates: differentiable end to end.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.neural.generator import pixel_grid

__all__ = ["LandmarkHead", "landmark_loss"]


class LandmarkHead(nn.Module):
    """Crop (B, 3, S, S) in [0, 1] -> landmarks (B, L, 2) in crop pixels (engine convention:
    pixel centres at +0.5, so a landmark at the centre of pixel (i, j) is (j + 0.5, i + 0.5)).

    ``size``: the crop is resampled to this resolution first (cheap on CPU; the heatmaps are
    size/4 px and the soft-argmax is sub-pixel). ``base``: channel width."""

    def __init__(self, num_landmarks: int, *, size: int = 64, base: int = 16) -> None:
        super().__init__()
        self.size = int(size)
        self.num_landmarks = int(num_landmarks)
        act = lambda: nn.LeakyReLU(0.2, inplace=True)  # noqa: E731
        b = int(base)
        self.body = nn.Sequential(
            nn.Conv2d(5, b, 3, stride=2, padding=1), act(),
            nn.Conv2d(b, 2 * b, 3, stride=2, padding=1), act(),
            nn.Conv2d(2 * b, 2 * b, 3, padding=2, dilation=2), act(),
            nn.Conv2d(2 * b, 4 * b, 3, padding=4, dilation=4), act(),
            nn.Conv2d(4 * b, 4 * b, 3, padding=1), act(),
            nn.Conv2d(4 * b, num_landmarks, 1))
        # Inverse temperature of the soft-argmax, learned (sharp heatmaps -> precise points).
        self.log_beta = nn.Parameter(torch.tensor(1.0))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        B, _, S, _ = img.shape
        x = img.float()
        if S != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=S > self.size,
                              align_corners=False)
        x = torch.cat([x * 2 - 1, pixel_grid(B, self.size, self.size, x.device, x.dtype)], 1)
        h = self.body(x)                                       # (B, L, h, h)
        hh, hw = h.shape[-2:]
        prob = torch.softmax(h.flatten(2) * self.log_beta.exp(), -1).reshape(B, -1, hh, hw)
        ys = (torch.arange(hh, device=h.device, dtype=h.dtype) + 0.5) / hh
        xs = (torch.arange(hw, device=h.device, dtype=h.dtype) + 0.5) / hw
        u = (prob.sum(2) * xs).sum(-1)                          # (B, L) in [0, 1] of the crop width
        v = (prob.sum(3) * ys).sum(-1)
        return torch.stack([u, v], -1) * S


def landmark_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None, size: int) -> torch.Tensor:
    """Mean L1 distance in units of the crop size over valid landmarks (B, L)."""
    d = (pred.float() - target.float()).abs().sum(-1) / float(size)
    if valid is None:
        return d.mean()
    w = valid.to(d.dtype)
    return (d * w).sum() / w.sum().clamp_min(1.0)
