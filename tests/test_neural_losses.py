"""Stage-1 losses: each term responds to what it is meant to measure, and nothing else."""
from __future__ import annotations

import pytest
import torch

from engine.neural.generator import GeneratorOutput
from engine.neural.losses import (LossConfig, Losses, alpha_loss, pixel_weights, texture_rgb_loss,
                                  velocity_loss, weighted_l1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_weighted_l1():
    p = torch.zeros(1, 3, 4, 4)
    t = torch.ones(1, 3, 4, 4)
    t[..., 2:] = 0
    assert weighted_l1(p, t).item() == pytest.approx(0.5)
    w = torch.zeros(1, 1, 4, 4)
    w[..., :2] = 1
    assert weighted_l1(p, t, w).item() == pytest.approx(1.0)


def test_velocity_loss_ignores_constant_offsets_but_not_flicker():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(6, 3, 8, 8, generator=g)  # 3 clips x 2 frames
    offset = torch.rand(3, 1, 3, 8, 8, generator=g).expand(3, 2, 3, 8, 8).reshape(6, 3, 8, 8)
    assert velocity_loss(target + offset, target, clip_len=2).item() == pytest.approx(0.0, abs=1e-7)
    flicker = torch.rand(6, 3, 8, 8, generator=g) * 0.1
    assert velocity_loss(target + flicker, target, clip_len=2).item() > 0.01
    assert velocity_loss(target + flicker, target, clip_len=1).item() == 0.0


def test_pixel_weights_emphasise_mouth_and_face():
    face = torch.zeros(1, 1, 20, 20)
    face[..., 4:16, 4:16] = 1
    mouth = torch.zeros(1, 1, 20, 20)
    mouth[..., 12, 10] = 1
    cfg = LossConfig(mouth_weight=4.0, face_weight=1.0, mouth_dilate=0.05)  # radius 1 px
    w = pixel_weights(face, mouth, cfg)
    assert w[0, 0, 0, 0] == 1 and w[0, 0, 5, 5] == 2
    assert w[0, 0, 12, 10] == 6 and w[0, 0, 11, 9] == 6 and w[0, 0, 14, 10] == 2
    valid = torch.ones_like(face)
    valid[..., 0, :] = 0
    assert pixel_weights(face, mouth, cfg, valid)[0, 0, 0].sum() == 0


def test_alpha_loss_inside_outside_band():
    hole = torch.zeros(1, 1, 20, 20)
    hole[..., 5:15, 5:15] = 1
    perfect = hole.clone()
    assert alpha_loss(perfect, hole, band=2).item() == 0
    # Anything goes within the band around the hole...
    banded = hole.clone()
    banded[..., 3:17, 3:17] = 0.7
    banded[..., 5:15, 5:15] = 1
    assert alpha_loss(banded, hole, band=2).item() == 0
    # ...but not alpha < 1 inside or alpha > 0 far outside.
    assert alpha_loss(torch.zeros_like(hole), hole, band=2).item() > 0
    assert alpha_loss(torch.ones_like(hole), hole, band=2).item() > 0


def test_texture_rgb_loss_only_on_face():
    face = torch.zeros(1, 1, 4, 4)
    face[..., :2, :] = 1
    t = torch.rand(1, 3, 4, 4)
    tex = t.clone()
    tex[..., 2:, :] += 1  # off-face mismatch does not count
    assert texture_rgb_loss(tex, t, face).item() == pytest.approx(0.0, abs=1e-7)
    tex[..., :2, :] += 0.5
    assert texture_rgb_loss(tex, t, face).item() == pytest.approx(0.5, abs=1e-6)


def test_losses_module_terms_and_texture_decay():
    g = torch.Generator().manual_seed(1)
    B = 4
    face = torch.zeros(B, 1, 16, 16)
    face[..., 4:12, 4:12] = 1
    target = torch.rand(B, 3, 16, 16, generator=g)
    out = GeneratorOutput(rgb=torch.rand(B, 3, 16, 16, generator=g), alpha=face.clone(), composite=target * 0.9,
                          hole=face.clone(), texture_rgb=torch.zeros(B, 3, 16, 16))
    cfg = LossConfig(perceptual=0.0, texture_decay_steps=10)
    losses = Losses(cfg)
    total, terms = losses(out, target, face=face, mouth=torch.zeros_like(face), clip_len=2, step=0)
    assert set(terms) == {"l1", "velocity", "alpha", "texture"}
    assert total.item() == pytest.approx(sum(v.item() for v in terms.values()), rel=1e-6)
    _, late = losses(out, target, face=face, mouth=None, clip_len=2, step=10)
    assert "texture" not in late
