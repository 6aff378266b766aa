"""ST-LPIPS / VGG perceptual module: loads the weights shipped in stlpips-pytorch and matches
the package's own implementation exactly (run with stub modules for its torchvision/IPython
imports, which the shift-tolerant VGG path never uses)."""
from __future__ import annotations

import importlib
import sys
import types

import pytest
import torch

from engine.errors import MediaError
from engine.neural import perceptual
from engine.neural.perceptual import STLPIPS, PerceptualLoss, weights_available

needs_weights = pytest.mark.skipif(
    not weights_available(),
    reason="stlpips-pytorch (VGG weights) not installed: pip install --no-deps stlpips-pytorch")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def metric():
    return STLPIPS()


def _images(seed: int, noise: float, shape=(2, 3, 48, 48)):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    return x, (x + noise * torch.randn(shape, generator=g)).clamp(0, 1)


@needs_weights
def test_matches_reference_package(metric, monkeypatch):
    for name in ("torchvision", "torchsummary", "IPython"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["torchvision"].models = types.SimpleNamespace()
    sys.modules["torchsummary"].summary = None
    sys.modules["IPython"].embed = None
    try:
        ref_mod = importlib.import_module("stlpips_pytorch.stlpips")
        ref = ref_mod.LPIPS(net="vgg", variant="shift_tolerant", verbose=False)
        x, y = _images(0, 0.2, shape=(2, 3, 40, 56))
        with torch.no_grad():
            r = ref(x, y, normalize=True).flatten()
            m = metric(x, y)
        assert torch.allclose(r, m, rtol=1e-5, atol=1e-7), (r, m)
    finally:
        for mod in [m for m in sys.modules if m.startswith("stlpips_pytorch")]:
            del sys.modules[mod]


@needs_weights
def test_distance_properties(metric):
    x, y_small = _images(1, 0.05)
    _, y_big = _images(1, 0.3)
    with torch.no_grad():
        assert torch.all(metric(x, x) == 0)
        d_small, d_big = metric(x, y_small), metric(x, y_big)
    assert torch.all(d_small > 0) and torch.all(d_big > d_small)
    # Spatial map averaged over a full mask equals the mean of the map.
    with torch.no_grad():
        dmap = metric(x, y_big, spatial=True)
        dm = metric(x, y_big, mask=torch.ones(2, 1, 48, 48))
    assert dmap.shape == (2, 1, 48, 48)
    assert torch.allclose(dmap.mean((1, 2, 3)), dm, rtol=1e-5)


@needs_weights
def test_perceptual_loss_gradient_and_weighting():
    loss = PerceptualLoss(layers=2, mode="lpips")
    x, y = _images(2, 0.2)
    p = x.clone().requires_grad_()
    val = loss(p, y)
    val.backward()
    assert val.item() > 0 and p.grad is not None and p.grad.abs().sum() > 0
    assert all(not q.requires_grad for q in loss.parameters())
    # Weight 0 on the right half: changing only the right half leaves the loss ~unchanged.
    w = torch.zeros(2, 1, 48, 48)
    w[..., :16] = 1
    y2 = y.clone()
    y2[..., 36:] = 1 - y2[..., 36:]
    with torch.no_grad():
        a, b = loss(x, y, w), loss(x, y2, w)
        c, d = loss(x, y), loss(x, y2)
    assert abs(a - b) < 0.1 * abs(c - d)
    vgg = PerceptualLoss(layers=3, mode="vgg", max_size=32)
    assert vgg(x, y).item() > 0 and vgg(x, x).item() == 0


def test_missing_package_gives_clear_error(monkeypatch):
    monkeypatch.delenv(perceptual.ENV_WEIGHTS, raising=False)
    monkeypatch.setattr(perceptual.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MediaError, match="pip install --no-deps stlpips-pytorch"):
        perceptual.find_stlpips_weights()
    assert not weights_available()


def test_corrupt_weight_file_is_one_line_error(tmp_path):
    bad = tmp_path / "vgg.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(MediaError) as exc:
        perceptual.load_stlpips_state(bad)
    assert "\n" not in str(exc.value) and "vgg.pth" in str(exc.value)
