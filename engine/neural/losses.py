"""Training losses of the stage-1 reconstruction (each cites the idea it implements).

All image losses take (B, 3, H, W) images in [0, 1] and an optional per-pixel weight map
(B, 1, H, W) from :func:`pixel_weights`; weighted means divide by the weight sum, so a
larger mouth weight shifts emphasis rather than the overall loss scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.neural.metrics import dilate_mask

__all__ = ["LossConfig", "pixel_weights", "weighted_l1", "velocity_loss", "alpha_loss",
           "texture_rgb_loss", "Losses"]


@dataclass
class LossConfig:
    """Weights of the stage-1 losses (0 disables a term).

    l1: photometric L1 on the composite. perceptual: ST-LPIPS/VGG feature loss
    (perceptual_mode "lpips" or "vgg", first perceptual_layers VGG blocks, evaluated at most
    at perceptual_size px, on every perceptual_stride-th frame of the batch: 2 = one frame
    per 2-frame clip, half the cost, which on CPU is most of a draft step).
    velocity: temporal L1 on consecutive-frame differences.
    mouth_weight / face_weight: extra pixel weight on the (dilated) mouth interior and on the
    face (1 + extra). mouth_dilate: dilation of the mouth mask (fraction of crop size) so the
    lips around the cavity count as mouth. alpha: matte loss. texture: Thies et al.'s RGB
    supervision of the first neural-texture channels, decayed to 0 over texture_decay_steps.
    """

    l1: float = 1.0
    perceptual: float = 0.1
    perceptual_mode: str = "lpips"
    perceptual_layers: int = 5
    perceptual_size: int = 256
    perceptual_stride: int = 1
    velocity: float = 1.0
    mouth_weight: float = 4.0
    face_weight: float = 1.0
    mouth_dilate: float = 0.02
    alpha: float = 0.1
    texture: float = 1.0
    texture_decay_steps: int = 0


def pixel_weights(face: torch.Tensor, mouth: torch.Tensor | None, cfg: LossConfig,
                  valid: torch.Tensor | None = None) -> torch.Tensor:
    """1 + face_weight * face + mouth_weight * dilated mouth, times ``valid`` (B, 1, H, W).

    Region-weighted reconstruction as in talking-head work (e.g. Wav2Lip's and Neural Voice
    Puppetry's emphasis on the mouth): the mouth is a small part of the crop but carries
    the performance, so an unweighted loss under-fits it.
    """
    w = 1 + cfg.face_weight * (face > 0.5).to(face.dtype)
    if mouth is not None and cfg.mouth_weight:
        r = int(round(cfg.mouth_dilate * mouth.shape[-1]))
        w = w + cfg.mouth_weight * dilate_mask((mouth > 0.5).to(face.dtype), r)
    if valid is not None:
        w = w * valid
    return w


def weighted_l1(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error (L1 keeps edges sharper than L2; Zhao et al. 2017 "Loss Functions
    for Image Restoration with Neural Networks"), optionally pixel-weighted."""
    d = (pred - target).abs()
    if weight is None:
        return d.mean()
    w = weight.expand_as(d)
    return (d * w).sum() / w.sum().clamp_min(1e-8)


def velocity_loss(pred: torch.Tensor, target: torch.Tensor, clip_len: int,
                  weight: torch.Tensor | None = None) -> torch.Tensor:
    """L1 between the frame-to-frame differences of prediction and target.

    The velocity loss of VOCA (Cudeiro et al. 2019) / FaceFormer, applied to images: the
    render must change between consecutive frames exactly as the plate does, which
    penalises flicker (independent per-frame errors) that a per-frame loss cannot see.
    ``pred``/``target`` are (N * clip_len, ...) with each clip's frames consecutive.
    """
    if clip_len < 2:
        return pred.new_zeros(())
    n = pred.shape[0] // clip_len
    p = pred.reshape(n, clip_len, *pred.shape[1:])
    t = target.reshape(n, clip_len, *target.shape[1:])
    dp, dt = p[:, 1:] - p[:, :-1], t[:, 1:] - t[:, :-1]
    d = (dp - dt).abs()
    if weight is None:
        return d.mean()
    w = weight.reshape(n, clip_len, *weight.shape[1:])
    w = torch.minimum(w[:, 1:], w[:, :-1]).expand_as(d)  # both frames must be valid
    return (d * w).sum() / w.sum().clamp_min(1e-8)


def alpha_loss(alpha: torch.Tensor, hole: torch.Tensor, band: int) -> torch.Tensor:
    """Matte prior: alpha = 1 inside the hole (the plate is masked there, nothing else can show;
    the generator already guarantees it), alpha = 0 beyond ``band`` pixels outside it (keep the
    plate's own pixels), free in between, where the network blends its painting into hair and
    neck. The composite L1 alone would leave alpha arbitrary wherever the painting happens to
    match the plate -- and a matte that strays over the background makes paste-back unsafe."""
    outside = 1 - dilate_mask(hole, band)
    inside = hole * (1 - alpha)
    out = outside * alpha
    return (inside.sum() + out.sum()) / alpha.numel()


def texture_rgb_loss(texture_rgb: torch.Tensor, target: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
    """Thies et al. 2019: supervise the first three neural-texture channels with the image
    colour, which gives the texture a meaningful initialisation and speeds up training."""
    m = (face > 0.5).to(target.dtype)
    d = (texture_rgb - target).abs() * m
    return d.sum() / (3 * m.sum()).clamp_min(1e-8)


class Losses(torch.nn.Module):
    """All stage-1 terms; ``forward`` returns the total and a dict of the (detached) weighted terms."""

    def __init__(self, cfg: LossConfig, perceptual: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.perceptual = perceptual
        if cfg.perceptual > 0 and perceptual is None:
            from engine.neural.perceptual import PerceptualLoss
            self.perceptual = PerceptualLoss(layers=cfg.perceptual_layers, mode=cfg.perceptual_mode,
                                             max_size=cfg.perceptual_size)

    def forward(self, out, target: torch.Tensor, *, face: torch.Tensor, mouth: torch.Tensor | None,
                clip_len: int, step: int, valid: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        pred = out.composite
        target = target.to(pred.dtype)
        w = pixel_weights(face.to(pred.dtype), None if mouth is None else mouth.to(pred.dtype), cfg,
                          None if valid is None else valid.to(pred.dtype))
        terms: dict[str, torch.Tensor] = {}
        if cfg.l1:
            terms["l1"] = cfg.l1 * weighted_l1(pred, target, w)
        if cfg.perceptual and self.perceptual is not None:
            k = max(1, cfg.perceptual_stride)
            terms["perceptual"] = cfg.perceptual * self.perceptual(pred[::k], target[::k], w[::k])
        if cfg.velocity and clip_len > 1:
            terms["velocity"] = cfg.velocity * velocity_loss(pred, target, clip_len, w)
        if cfg.alpha:
            band = max(1, int(round(0.05 * pred.shape[-1])))
            terms["alpha"] = cfg.alpha * alpha_loss(out.alpha, out.hole, band)
        if cfg.texture:
            decay = 1.0
            if cfg.texture_decay_steps > 0:
                decay = max(0.0, 1.0 - step / cfg.texture_decay_steps)
            if decay > 0:
                terms["texture"] = cfg.texture * decay * texture_rgb_loss(out.texture_rgb, target, face.to(pred.dtype))
        total = sum(terms.values()) if terms else pred.new_zeros(())
        # Detached tensors, not floats: converting every step would sync the GPU.
        return total, {k: v.detach() for k, v in terms.items()}
