"""Generator: shapes, compositing, no leakage of the plate's face into the render, inputs checked."""
from __future__ import annotations

import math

import pytest
import torch

from engine.errors import ConfigError
from engine.neural.generator import (FourierEncoding, GeneratorConfig, NeuralTexture, PortraitGenerator,
                                     face_hole, pixel_grid)
from engine.neural.synthetic import synthetic_frame

SMALL = dict(image_size=32, texture_channels=4, texture_size=16, texture_levels=2, mouth_texture_channels=2,
             mouth_texture_size=8, pe_surface_freqs=2, pe_pixel_freqs=2, pe_mouth_freqs=2, mlp_channels=8,
             mlp_layers=1, unet_base=8, unet_depth=2, unet_max_channels=16)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(n=2, size=32):
    frames = [synthetic_frame(t, size) for t in range(n)]
    cond = {k: torch.cat([f[0][k] for f in frames]) for k in frames[0][0]}
    img = torch.stack([f[1] for f in frames])
    expr = torch.stack([f[2] for f in frames])
    return cond, img, expr


def test_output_shapes_and_composite():
    torch.manual_seed(0)
    g = PortraitGenerator(GeneratorConfig(**SMALL))
    cond, img, _ = _batch()
    out = g(cond, img)
    for t, c in ((out.rgb, 3), (out.alpha, 1), (out.composite, 3), (out.hole, 1), (out.texture_rgb, 3)):
        assert t.shape == (2, c, 32, 32)
    assert out.rgb.min() >= 0 and out.rgb.max() <= 1 and out.alpha.min() >= 0 and out.alpha.max() <= 1
    ctx = img * (1 - out.hole)
    assert torch.allclose(out.composite, out.alpha * out.rgb + (1 - out.alpha) * ctx, atol=1e-6)
    # The hole covers the face mask.
    assert torch.all(out.hole >= cond["mask_face"])


def test_plate_face_pixels_do_not_leak_into_the_render():
    # At inference the plate under the hole shows the *old* performance; it must not matter.
    torch.manual_seed(0)
    g = PortraitGenerator(GeneratorConfig(**SMALL)).eval()
    cond, img, _ = _batch()
    hole = face_hole(cond["mask_face"], g.cfg.hole_dilate)
    other = img.clone()
    other = torch.where(hole > 0, torch.rand_like(img), img)
    with torch.no_grad():
        a, b = g(cond, img), g(cond, other)
    assert torch.equal(a.composite, b.composite)
    # ...while the plate outside the hole does matter.
    changed = torch.where(hole > 0, img, 1 - img)
    with torch.no_grad():
        c = g(cond, changed)
    assert not torch.allclose(a.composite, c.composite)


def test_missing_inputs_are_config_errors():
    g = PortraitGenerator(GeneratorConfig(**SMALL))
    cond, img, _ = _batch(1)
    with pytest.raises(ConfigError, match="uv"):
        g({k: v for k, v in cond.items() if k != "uv"}, img)
    with pytest.raises(ConfigError, match="context"):
        g(cond, None)
    ge = PortraitGenerator(GeneratorConfig(**{**SMALL, "expr_dim": 2}))
    with pytest.raises(ConfigError, match="expression"):
        ge(cond, img)
    cond2, img2, expr = _batch(2)
    assert ge(cond2, img2, expr).rgb.shape == (2, 3, 32, 32)
    with pytest.raises(ConfigError, match="divisible"):
        GeneratorConfig(**{**SMALL, "image_size": 30}).validate()
    with pytest.raises(ConfigError, match="unknown conditioning map"):
        GeneratorConfig(**{**SMALL, "cond_keys": ("nope",)}).validate()


def test_region_map_as_input():
    cfg = GeneratorConfig(**{**SMALL, "cond_keys": ("normal", "region", "mask_mouth"), "region_channels": 8})
    g = PortraitGenerator(cfg)
    cond, img, _ = _batch(1)
    assert g(cond, img).composite.shape == (1, 3, 32, 32)


def test_fourier_encoding_values():
    enc = FourierEncoding(1, 3)
    x = torch.full((1, 1, 1, 1), 0.25)
    y = enc(x).flatten()
    expect = [0.25] + [math.sin(2 ** k * math.pi * 0.25) for k in range(3)] + \
             [math.cos(2 ** k * math.pi * 0.25) for k in range(3)]
    assert torch.allclose(y, torch.tensor(expect), atol=1e-6)
    assert enc.out_channels == 7


def test_neural_texture_uv_convention_and_pyramid():
    tex = NeuralTexture(1, 4, levels=1, init_std=0.0)
    with torch.no_grad():
        tex.levels[0][0, 0] = torch.arange(16.0).reshape(4, 4)
    # Texel centres: u = (j + 0.5) / 4, row 0 is v = 1 (OBJ convention, v up).
    uv = torch.tensor([[0.125, 1 - 0.125], [0.875, 0.125]]).T.reshape(1, 2, 1, 2)
    s = tex.sample(uv)
    assert torch.allclose(s.flatten(), torch.tensor([0.0, 15.0]))
    two = NeuralTexture(2, 8, levels=3)
    assert [tuple(p.shape[-2:]) for p in two.levels] == [(8, 8), (4, 4), (2, 2)]
    assert two.full().shape == (1, 2, 8, 8)


def test_pixel_grid_centres():
    g = pixel_grid(1, 2, 4, torch.device("cpu"), torch.float32)
    assert torch.allclose(g[0, 0, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    assert torch.allclose(g[0, 1, :, 0], torch.tensor([-0.5, 0.5]))
