"""Conditional PatchGAN discriminator for stage 2 (realism of renders without ground truth).

pix2pix (Isola et al. 2017, "Image-to-Image Translation with Conditional Adversarial
Networks"): a fully convolutional discriminator scores overlapping patches (its receptive
field, ~34-70 px) rather than the whole image, which models high-frequency realism (skin
texture, teeth, lip edges) with few parameters, and is *conditional*: it sees the
conditioning maps concatenated with the image, so it judges "is this a real photo of the
actor with this geometry", not merely "is this a photo". Real = plate crops with their own
conditioning; fake = renders of auxiliary parameters (no ground truth) and of plate frames.

Stabilisation: spectral normalisation of every convolution (Miyato et al. 2018) and the
hinge loss (Lim & Ye 2017; as in SAGAN / BigGAN); no batch statistics (per-batch norms would
couple real and fake samples of a batch). ``lsgan`` (Mao et al. 2017) is available too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from engine.errors import ConfigError

__all__ = ["PatchDiscriminator", "d_loss", "g_loss"]


class PatchDiscriminator(nn.Module):
    """(image (B, 3, S, S), cond (B, C, S, S)) -> patch logits (B, 1, S/2^(layers), ...).

    ``layers`` stride-2 4x4 convolutions (width ``base`` doubling up to ``max_channels``),
    then a stride-1 4x4 conv and a 1-channel 4x4 conv, as in pix2pix's 70x70 PatchGAN
    (layers=3)."""

    def __init__(self, cond_channels: int, *, base: int = 32, layers: int = 3, max_channels: int = 256) -> None:
        super().__init__()
        if layers < 1:
            raise ConfigError("discriminator layers must be >= 1")
        chs = [min(base * 2 ** i, max_channels) for i in range(layers + 1)]
        mods: list[nn.Module] = [spectral_norm(nn.Conv2d(3 + cond_channels, chs[0], 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        for i in range(1, layers):
            mods += [spectral_norm(nn.Conv2d(chs[i - 1], chs[i], 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        mods += [spectral_norm(nn.Conv2d(chs[layers - 1], chs[layers], 4, 1, 1)), nn.LeakyReLU(0.2, True),
                 spectral_norm(nn.Conv2d(chs[layers], 1, 4, 1, 1))]
        self.net = nn.Sequential(*mods)

    def forward(self, image: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # Images to [-1, 1] so they share the conditioning's range.
        return self.net(torch.cat([image.float() * 2 - 1, cond.float()], 1))


def d_loss(real: torch.Tensor, fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Discriminator loss on real / fake patch logits."""
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    if kind == "lsgan":
        return ((real - 1) ** 2).mean() + (fake ** 2).mean()
    raise ConfigError(f"unknown GAN loss {kind!r} (hinge, lsgan)")


def g_loss(fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Generator's adversarial loss on fake patch logits."""
    if kind == "hinge":
        return -fake.mean()
    if kind == "lsgan":
        return ((fake - 1) ** 2).mean()
    raise ConfigError(f"unknown GAN loss {kind!r} (hinge, lsgan)")
