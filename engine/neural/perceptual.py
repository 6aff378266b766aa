"""VGG16 perceptual features and the ST-LPIPS distance, in plain torch (no torchvision).

Weights come from the ``stlpips-pytorch`` wheel, which ships the *whole* shift-tolerant
LPIPS model, not only the linear heads: ``stlpips_pytorch/weights/vST0.0/vgg_shift_tolerant.pth``
is a plain ``state_dict`` (37 tensors) with

* ``scaling_layer.shift`` / ``scaling_layer.scale`` (1, 3, 1, 1): the LPIPS input normalisation
  (ImageNet mean/std expressed for inputs in [-1, 1]);
* ``net.slice{1..5}.{i}.weight|bias``: the 13 VGG16 convolutions (configuration "D"), indexed by
  their position ``i`` in the anti-aliased feature stack below;
* ``net.slice{2..5}.{i}.filt`` (C, 1, 3, 3): the fixed [1, 2, 1] x [1, 2, 1] / 16 blur of each
  BlurPool (stored because it is a registered buffer; we check it rather than trust it);
* ``lin{0..4}.model.1.weight`` (1, C, 1, 1): the LPIPS linear calibration heads.

The backbone is the anti-aliased VGG16 of Zhang 2019 ("Making Convolutional Networks
Shift-Invariant Again"): every 2x2/2 max-pool becomes a stride-1 max-pool followed by a
reflect-padded [1, 2, 1] blur with stride 2 (BlurPool). ST-LPIPS (Ghildyal & Liu 2022,
"Shift-tolerant Perceptual Similarity Metric") trains the LPIPS (Zhang et al. 2018, "The
Unreasonable Effectiveness of Deep Features as a Perceptual Metric") heads and backbone on
top of it, so its features are also less sensitive to the 1-2 px misalignments that a
tracked face render always has -- a good property for both a training loss and a metric.

The package itself is never imported (it imports torchvision, torchsummary and IPython);
we only locate its files with :func:`importlib.util.find_spec`. Nothing is downloaded.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import ConfigError, MediaError

__all__ = ["STLPIPS_PACKAGE", "LAYER_NAMES", "find_stlpips_weights", "load_stlpips_state",
           "VGG16Features", "STLPIPS", "PerceptualLoss", "weights_available"]

STLPIPS_PACKAGE = "stlpips-pytorch"
_MODULE = "stlpips_pytorch"
_WEIGHT_FILE = Path("weights") / "vST0.0" / "vgg_shift_tolerant.pth"
ENV_WEIGHTS = "PORTRAIT_STLPIPS_WEIGHTS"

LAYER_NAMES = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
CHANNELS = (64, 128, 256, 512, 512)
# VGG16 "D": convolutions per block; block k ends at LAYER_NAMES[k].
_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# LPIPS input normalisation (in [-1, 1] units); checked against the file on load.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def _conv_keys() -> list[tuple[str, str]]:
    """(our conv name, ST-LPIPS key prefix) for the 13 convolutions, in order.

    In ST-LPIPS' ``features`` Sequential each conv is followed by a ReLU and each block by
    MaxPool(2, 1) + BlurPool, so indices run 0, 2 | 6, 8 | 12, 14, 16 | 20, 22, 24 | 28, 30, 32,
    and ``slice{k+1}`` holds block k (preceded, for k > 0, by the previous block's pooling).
    """
    keys = []
    idx = 0
    for b, convs in enumerate(_BLOCKS):
        if b > 0:
            idx += 2  # MaxPool(2, stride 1) + BlurPool of the previous block
        for c in range(len(convs)):
            keys.append((f"conv{b + 1}_{c + 1}", f"net.slice{b + 1}.{idx}"))
            idx += 2  # conv + ReLU
    return keys


def weights_available() -> bool:
    try:
        find_stlpips_weights()
    except MediaError:
        return False
    return True


def find_stlpips_weights(path: str | os.PathLike | None = None) -> Path:
    """Path of the ST-LPIPS VGG weight file: ``path``, $PORTRAIT_STLPIPS_WEIGHTS, or the wheel's copy."""
    if path is None:
        path = os.environ.get(ENV_WEIGHTS) or None
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise MediaError(f"ST-LPIPS weight file {p} does not exist")
        return p
    spec = importlib.util.find_spec(_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise MediaError(f"perceptual loss/metric needs the VGG weights of the '{STLPIPS_PACKAGE}' "
                         f"package: pip install --no-deps {STLPIPS_PACKAGE}")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / _WEIGHT_FILE
        if p.is_file():
            return p
    raise MediaError(f"'{STLPIPS_PACKAGE}' is installed but has no {_WEIGHT_FILE}; "
                     f"reinstall it: pip install --no-deps --force-reinstall {STLPIPS_PACKAGE}")


def load_stlpips_state(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The raw ST-LPIPS state_dict (CPU tensors), validated against the layout above."""
    p = find_stlpips_weights(path)
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError/UnpicklingError/EOFError/... on corrupt files
        first = (str(exc).strip().splitlines() or [""])[0][:120]
        raise MediaError(f"cannot read ST-LPIPS weights {p}: {type(exc).__name__}: {first}") from None
    expected = [f"{pre}.{s}" for _, pre in _conv_keys() for s in ("weight", "bias")]
    expected += [f"lin{k}.model.1.weight" for k in range(5)]
    missing = [k for k in expected if k not in sd]
    if missing:
        raise MediaError(f"{p} is not an ST-LPIPS VGG state_dict (missing {missing[:3]}...)")
    return sd


class BlurPool(nn.Module):
    """Anti-aliased downsampling (Zhang 2019): reflect pad, [1,2,1]^2/16 blur, stride 2.

    ``pad`` = 2 on every side matches ST-LPIPS' ``pad_more=True`` variant exactly.
    """

    def __init__(self, channels: int, pad: int = 2) -> None:
        super().__init__()
        a = torch.tensor([1.0, 2.0, 1.0])
        k = a[:, None] * a[None, :]
        self.register_buffer("filt", (k / k.sum())[None, None].repeat(channels, 1, 1, 1), persistent=False)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (self.pad,) * 4, mode="reflect")
        return F.conv2d(x, self.filt.to(x.dtype), stride=2, groups=x.shape[1])


class VGG16Features(nn.Module):
    """Anti-aliased VGG16 trunk returning relu1_2 ... relu5_3 (frozen; inputs already normalised)."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleDict()
        self.pools = nn.ModuleList()
        cin = 3
        for b, convs in enumerate(_BLOCKS):
            for c, cout in enumerate(convs):
                self.convs[f"conv{b + 1}_{c + 1}"] = nn.Conv2d(cin, cout, 3, padding=1)
                cin = cout
            self.pools.append(BlurPool(cin))

    def forward(self, x: torch.Tensor, upto: int = 5) -> list[torch.Tensor]:
        """Features of the first ``upto`` blocks (stopping early saves most of the cost)."""
        feats = []
        for b, convs in enumerate(_BLOCKS[:upto]):
            if b > 0:
                x = self.pools[b - 1](F.max_pool2d(x, 2, stride=1))
            for c in range(len(convs)):
                x = F.relu(self.convs[f"conv{b + 1}_{c + 1}"](x))
            feats.append(x)
        return feats

    def load_stlpips(self, sd: dict[str, torch.Tensor]) -> None:
        for name, pre in _conv_keys():
            conv = self.convs[name]
            w, bias = sd[f"{pre}.weight"], sd[f"{pre}.bias"]
            if w.shape != conv.weight.shape:
                raise MediaError(f"ST-LPIPS weight {pre}.weight has shape {tuple(w.shape)}, "
                                 f"expected {tuple(conv.weight.shape)}")
            with torch.no_grad():
                conv.weight.copy_(w)
                conv.bias.copy_(bias)
        # The stored blur kernels must be the fixed [1,2,1]^2/16 we implement.
        for key, t in sd.items():
            if key.endswith(".filt") and not torch.allclose(t[0, 0], self.pools[0].filt[0, 0]):
                raise MediaError(f"ST-LPIPS blur kernel {key} is not the [1,2,1] binomial filter")


def _normalise_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit-length feature vectors per pixel (LPIPS eq. 1)."""
    return x / (x.pow(2).sum(1, keepdim=True).sqrt() + eps)


class _Frozen(nn.Module):
    """Base for modules whose parameters never train and never appear in a model state_dict."""

    def _freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "_Frozen":  # stays in eval (no dropout/BN anyway)
        return super().train(False)


class STLPIPS(_Frozen):
    """ST-LPIPS distance (VGG variant). Inputs in [0, 1] (``normalize=True``) or [-1, 1].

    ``forward(x, y)`` -> (B,) distance; ``spatial=True`` -> (B, 1, H, W) distance map (each
    layer's map upsampled bilinearly to the input size and summed, as LPIPS' spatial mode);
    ``mask`` (B, 1, H, W) averages the spatial map over the mask -- a region distance.
    """

    def __init__(self, weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        sd = load_stlpips_state(weights)
        self.net = VGG16Features()
        self.net.load_stlpips(sd)
        shift = torch.tensor(_SHIFT)[None, :, None, None]
        scale = torch.tensor(_SCALE)[None, :, None, None]
        if not (torch.allclose(sd["scaling_layer.shift"], shift, atol=1e-6)
                and torch.allclose(sd["scaling_layer.scale"], scale, atol=1e-6)):
            raise MediaError("ST-LPIPS scaling layer differs from the LPIPS constants")
        self.register_buffer("shift", shift, persistent=False)
        self.register_buffer("scale", scale, persistent=False)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS)
        with torch.no_grad():
            for k, lin in enumerate(self.lins):
                lin.weight.copy_(sd[f"lin{k}.model.1.weight"])
        self._freeze()

    def scale_input(self, x: torch.Tensor, normalize: bool) -> torch.Tensor:
        if normalize:
            x = 2 * x - 1
        return (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)

    def forward(self, x: torch.Tensor, y: torch.Tensor, *, normalize: bool = True,
                spatial: bool = False, mask: torch.Tensor | None = None) -> torch.Tensor:
        fx = self.net(self.scale_input(x, normalize))
        fy = self.net(self.scale_input(y, normalize))
        H, W = x.shape[-2:]
        if not spatial and mask is None:
            # LPIPS eq. 1: sum over layers of the spatial mean of w_l . (yhat_l - y_l)^2.
            return sum(self.lins[k]((_normalise_channels(a) - _normalise_channels(b)) ** 2).mean((2, 3))
                       for k, (a, b) in enumerate(zip(fx, fy)))[:, 0]
        dmap = sum(F.interpolate(self.lins[k]((_normalise_channels(a) - _normalise_channels(b)) ** 2),
                                 size=(H, W), mode="bilinear", align_corners=False)
                   for k, (a, b) in enumerate(zip(fx, fy)))
        if mask is None:
            return dmap
        m = mask.to(dmap.dtype)
        return (dmap * m).sum((1, 2, 3)) / m.sum((1, 2, 3)).clamp_min(1e-8)


class PerceptualLoss(_Frozen):
    """Perceptual (feature reconstruction) loss on the ST-LPIPS VGG trunk.

    Johnson et al. 2016 ("Perceptual Losses for Real-Time Style Transfer"): compare deep
    features instead of pixels, which rewards sharp, plausible detail where an L1 loss
    settles for the blurry mean. ``mode="lpips"`` uses the learned LPIPS/ST-LPIPS linear
    heads on unit-normalised features (the metric itself as the loss); ``mode="vgg"`` uses
    L1 between raw features with per-layer ``layer_weights`` (pix2pixHD-style). ``layers``
    (1..5) stops the trunk early: relu1_2..relu3_3 carry most of the texture signal at a
    fraction of the cost, which matters on CPU. ``max_size`` downsamples larger inputs
    (antialiased) before the trunk.
    """

    def __init__(self, *, layers: int = 5, mode: str = "lpips", layer_weights: Sequence[float] | None = None,
                 max_size: int | None = None, weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        if not 1 <= layers <= 5:
            raise ConfigError(f"perceptual layers must be 1..5, got {layers}")
        if mode not in ("lpips", "vgg"):
            raise ConfigError(f"perceptual mode must be 'lpips' or 'vgg', got {mode!r}")
        self.metric = STLPIPS(weights)
        self.layers = layers
        self.mode = mode
        lw = list(layer_weights) if layer_weights is not None else [1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0]
        if len(lw) < layers:
            raise ConfigError(f"perceptual layer_weights needs {layers} values, got {len(lw)}")
        self.layer_weights = lw[:layers]
        self.max_size = max_size
        self._freeze()

    def forward(self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar loss for images in [0, 1]; ``weight`` (B, 1, H, W) weights pixels (resampled per layer)."""
        if self.max_size is not None and max(pred.shape[-2:]) > self.max_size:
            s = self.max_size / max(pred.shape[-2:])
            size = (max(1, round(pred.shape[-2] * s)), max(1, round(pred.shape[-1] * s)))
            pred = F.interpolate(pred, size=size, mode="bilinear", antialias=True, align_corners=False)
            target = F.interpolate(target, size=size, mode="bilinear", antialias=True, align_corners=False)
            if weight is not None:
                weight = F.interpolate(weight, size=size, mode="area")
        m = self.metric
        x = torch.cat([pred, target], 0)
        feats = m.net(m.scale_input(x, True), upto=self.layers)
        total = pred.new_zeros(())
        B = pred.shape[0]
        for k, f in enumerate(feats):
            fp, ft = f[:B], f[B:].detach()
            if self.mode == "lpips":
                d = m.lins[k]((_normalise_channels(fp) - _normalise_channels(ft)) ** 2)
                lw = 1.0
            else:
                d = (fp - ft).abs().mean(1, keepdim=True)
                lw = self.layer_weights[k]
            if weight is None:
                total = total + lw * d.mean()
            else:
                w = F.adaptive_avg_pool2d(weight, d.shape[-2:])
                total = total + lw * (d * w).sum() / w.sum().clamp_min(1e-8)
        return total
