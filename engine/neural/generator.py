"""The personalised portrait generator: conditioning maps -> RGB + alpha for the face crop.

Deferred neural rendering (Thies et al. 2019, "Deferred Neural Rendering: Image Synthesis
using Neural Textures"): the tracked face model is rasterised into screen-space maps, a
learned per-actor *neural texture* in UV space is sampled at each pixel's UV, and an
image-to-image network (U-Net, Ronneberger et al. 2015; as in Deep Video Portraits, Kim et
al. 2018) translates the resulting feature image into the actor's photo. On top of that:

* Neural texture as a Laplacian pyramid (Thies et al. 2019, sec. 4): levels of decreasing
  resolution are sampled at the same UV and summed, so coarse levels learn smooth colour
  (and get gradients from many pixels) while fine levels add per-actor detail.
* Fourier positional encoding (Mildenhall et al. 2020 "NeRF"; Tancik et al. 2020 "Fourier
  Features Let Networks Learn High Frequency Functions") of the canonical surface coordinate
  (which point of the face) and of the pixel coordinate (where in the crop), fed through a
  per-pixel MLP (1x1 convolutions) -- a coordinate-based network ahead of the U-Net.
* Mouth interior (teeth, tongue, cavity) has its own inputs: the mouth mask, a dedicated
  mouth neural texture and a higher-frequency encoding of canonical coordinates, both gated
  by the mouth mask, so teeth do not share (and blur into) lip/skin capacity. Optional
  per-frame expression coefficients modulate the bottleneck (FiLM, Perez et al. 2018) --
  the mouth interior (tongue, teeth visibility) is only partly explained by geometry.
* Plate context: the plate crop with the face region ("hole": the dilated face mask) zeroed
  is an input, and the output is composited ``alpha * rgb + (1 - alpha) * context`` (alpha
  is 1 inside the hole by construction, learned outside it), so
  hair, neck, torso and background come from the plate and the network only has to paint
  the face (as in Deep Video Portraits / Neural Voice Puppetry, which render into the
  target video's background). The hole is dilated so that no face pixel of the plate leaks
  in: at inference the plate under the hole shows the *old* performance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import ConfigError
from engine.neural.metrics import dilate_mask

__all__ = ["GeneratorConfig", "GeneratorOutput", "NeuralTexture", "FourierEncoding", "UNet",
           "PortraitGenerator", "MAP_CHANNELS", "pixel_grid", "face_hole"]

# Channel count of each conditioning map (engine.face.conditioning); "region" is one-hot with
# GeneratorConfig.region_channels channels.
MAP_CHANNELS: dict[str, int] = {"canonical": 3, "normal": 3, "depth": 1, "depth_norm": 1, "uv": 2,
                                "mask_face": 1, "mask_mouth": 1}


@dataclass
class GeneratorConfig:
    """Architecture of :class:`PortraitGenerator` (everything needed to rebuild it from a checkpoint).

    cond_keys: conditioning maps fed to the network as they are (besides uv/canonical, which
    are consumed by the texture and the encodings). uv_key / canonical_key / face_key /
    mouth_key name the maps with those roles (``mouth_key`` "" disables the mouth branch).
    texture_*: the neural texture (channels, finest resolution, pyramid levels).
    mouth_texture_*: the mouth's own texture (0 channels disables it).
    pe_*_freqs: octaves of the Fourier encodings (0 disables that encoding).
    context: take the masked plate crop as input and composite onto it.
    hole_dilate: dilation of the face mask into the context hole, as a fraction of the crop size.
    expr_dim: size of per-frame expression coefficients for FiLM (0: not used).
    mlp_*: per-pixel MLP ahead of the U-Net; unet_*: the U-Net (base width, downsamplings, cap).
    """

    image_size: int = 256
    cond_keys: tuple[str, ...] = ("normal", "depth_norm", "mask_face", "mask_mouth")
    region_channels: int = 8
    uv_key: str = "uv"
    canonical_key: str = "canonical"
    face_key: str = "mask_face"
    mouth_key: str = "mask_mouth"
    texture_channels: int = 16
    texture_size: int = 512
    texture_levels: int = 4
    mouth_texture_channels: int = 8
    mouth_texture_size: int = 128
    pe_surface_freqs: int = 6
    pe_pixel_freqs: int = 4
    pe_mouth_freqs: int = 8
    context: bool = True
    hole_dilate: float = 0.03
    expr_dim: int = 0
    mlp_channels: int = 64
    mlp_layers: int = 2
    unet_base: int = 32
    unet_depth: int = 4
    unet_max_channels: int = 256

    def map_channels(self, key: str) -> int:
        if key == "region":
            return self.region_channels
        if key not in MAP_CHANNELS:
            raise ConfigError(f"unknown conditioning map {key!r}; known: {sorted([*MAP_CHANNELS, 'region'])}")
        return MAP_CHANNELS[key]

    def validate(self) -> None:
        for k in self.cond_keys:
            self.map_channels(k)
        if self.image_size % (2 ** self.unet_depth):
            raise ConfigError(f"generator image_size {self.image_size} must be divisible by "
                              f"2**unet_depth = {2 ** self.unet_depth}")
        if self.texture_channels < 3:
            raise ConfigError("generator texture_channels must be >= 3 (the first 3 are RGB-supervised)")
        if self.texture_size < 2 ** (self.texture_levels - 1) or self.texture_levels < 1:
            raise ConfigError(f"generator texture_size {self.texture_size} too small for "
                              f"{self.texture_levels} pyramid levels")
        for name in ("mlp_channels", "unet_base", "unet_max_channels"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"generator {name} must be positive")
        if not 0 <= self.hole_dilate < 0.5:
            raise ConfigError(f"generator hole_dilate must be in [0, 0.5), got {self.hole_dilate}")

    def required_maps(self) -> tuple[str, ...]:
        keys = [*self.cond_keys, self.uv_key, self.face_key]
        if self.pe_surface_freqs > 0 or (self.mouth_key and self.pe_mouth_freqs > 0):
            keys.append(self.canonical_key)
        if self.mouth_key:
            keys.append(self.mouth_key)
        return tuple(dict.fromkeys(keys))


@dataclass
class GeneratorOutput:
    rgb: torch.Tensor        # (B, 3, H, W) in [0, 1], the network's painting
    alpha: torch.Tensor      # (B, 1, H, W) in [0, 1], where the painting replaces the plate
    composite: torch.Tensor  # alpha * rgb + (1 - alpha) * masked context
    hole: torch.Tensor       # (B, 1, H, W) the context region that was masked out
    texture_rgb: torch.Tensor  # (B, 3, H, W) first 3 neural-texture channels at each pixel (masked)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class FourierEncoding(nn.Module):
    """x -> [x, sin(2^k pi x), cos(2^k pi x)] for k < freqs (NeRF positional encoding), per channel."""

    def __init__(self, in_channels: int, freqs: int, include_input: bool = True) -> None:
        super().__init__()
        self.freqs = freqs
        self.include_input = include_input
        self.register_buffer("bands", (2.0 ** torch.arange(freqs)) * math.pi, persistent=False)
        self.out_channels = in_channels * (2 * freqs + int(include_input))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        B, C, H, W = x.shape
        xb = x[:, :, None] * self.bands.to(x.dtype)[None, None, :, None, None]  # (B, C, F, H, W)
        parts = [torch.sin(xb).reshape(B, -1, H, W), torch.cos(xb).reshape(B, -1, H, W)]
        if self.include_input:
            parts.insert(0, x)
        return torch.cat(parts, 1)


class NeuralTexture(nn.Module):
    """Learned C-channel texture in UV space as a Laplacian pyramid (Thies et al. 2019).

    UV follows the OBJ convention (v = 0 at the bottom of the texture image), so texel row 0
    is v = 1; ``sample`` flips v accordingly. Outside [0, 1] the border texel repeats.
    """

    def __init__(self, channels: int, size: int, levels: int, init_std: float = 0.01) -> None:
        super().__init__()
        self.levels = nn.ParameterList(
            nn.Parameter(torch.randn(1, channels, max(1, size >> i), max(1, size >> i)) * init_std)
            for i in range(levels))

    def sample(self, uv: torch.Tensor) -> torch.Tensor:
        """uv (B, 2, H, W) in [0, 1] -> features (B, C, H, W): sum over pyramid levels."""
        grid = torch.stack([uv[:, 0] * 2 - 1, 1 - uv[:, 1] * 2], -1)  # (B, H, W, 2), v flipped
        B = uv.shape[0]
        out = None
        for lvl in self.levels:
            s = F.grid_sample(lvl.expand(B, -1, -1, -1).to(uv.dtype), grid, mode="bilinear",
                              padding_mode="border", align_corners=False)
            out = s if out is None else out + s
        return out

    def full(self) -> torch.Tensor:
        """The composed texture at the finest resolution (1, C, S, S), e.g. to inspect it."""
        top = self.levels[0]
        out = top.detach().clone()
        for lvl in list(self.levels)[1:]:
            out += F.interpolate(lvl.detach(), size=top.shape[-2:], mode="bilinear", align_corners=False)
        return out


def pixel_grid(B: int, H: int, W: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(B, 2, H, W) pixel-centre coordinates in [-1, 1] (engine convention: centres at +0.5)."""
    ys = (torch.arange(H, device=device, dtype=dtype) + 0.5) / H * 2 - 1
    xs = (torch.arange(W, device=device, dtype=dtype) + 0.5) / W * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], 0)[None].expand(B, -1, -1, -1)


def face_hole(face_mask: torch.Tensor, dilate_frac: float) -> torch.Tensor:
    """The plate region hidden from the network: the face mask dilated by a fraction of the crop."""
    r = int(round(dilate_frac * face_mask.shape[-1]))
    return dilate_mask((face_mask > 0.5).to(face_mask.dtype), r)


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


class _DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), _act(),
                         nn.Conv2d(cout, cout, 3, padding=1), _act())


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015) with strided-conv downsampling and bilinear upsampling
    (no transposed convs: they leave checkerboard artefacts, Odena et al. 2016). No
    normalisation layers: per-image statistics would make brightness depend on what else is
    in the frame and flicker from frame to frame. Optional FiLM at the bottleneck."""

    def __init__(self, cin: int, cout: int, base: int, depth: int, max_ch: int, film_dim: int = 0) -> None:
        super().__init__()
        chs = [min(base * 2 ** i, max_ch) for i in range(depth + 1)]
        self.inc = _DoubleConv(cin, chs[0])
        self.downs = nn.ModuleList(_DoubleConv(chs[i], chs[i + 1], stride=2) for i in range(depth))
        self.ups = nn.ModuleList(_DoubleConv(chs[i + 1] + chs[i], chs[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(chs[0], cout, 1)
        self.film = None
        if film_dim > 0:
            self.film = nn.Sequential(nn.Linear(film_dim, 128), _act(), nn.Linear(128, 2 * chs[-1]))
            nn.init.zeros_(self.film[-1].weight)
            nn.init.zeros_(self.film[-1].bias)

    def forward(self, x: torch.Tensor, film: torch.Tensor | None = None) -> torch.Tensor:
        skips = [self.inc(x)]
        for d in self.downs:
            skips.append(d(skips[-1]))
        h = skips.pop()
        if self.film is not None and film is not None:
            gamma, beta = self.film(film.to(h.dtype)).chunk(2, -1)
            # Scale bounded to (0, 2): an outlier coefficient vector (a tracking glitch, an
            # extreme driven expression) cannot flip or explode the bottleneck features.
            h = h * (1 + torch.tanh(gamma)[..., None, None]) + beta[..., None, None]
        for up in self.ups:
            s = skips.pop()
            h = F.interpolate(h, size=s.shape[-2:], mode="bilinear", align_corners=False)
            h = up(torch.cat([h, s], 1))
        return self.head(h)


class PortraitGenerator(nn.Module):
    """Conditioning maps (+ masked plate context, + expression) -> :class:`GeneratorOutput`."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.texture = NeuralTexture(cfg.texture_channels, cfg.texture_size, cfg.texture_levels)
        self.mouth_texture = None
        if cfg.mouth_key and cfg.mouth_texture_channels > 0:
            self.mouth_texture = NeuralTexture(cfg.mouth_texture_channels, cfg.mouth_texture_size, 2)
        self.pe_surface = FourierEncoding(3, cfg.pe_surface_freqs) if cfg.pe_surface_freqs > 0 else None
        self.pe_pixel = FourierEncoding(2, cfg.pe_pixel_freqs) if cfg.pe_pixel_freqs > 0 else None
        self.pe_mouth = (FourierEncoding(3, cfg.pe_mouth_freqs, include_input=False)
                         if cfg.mouth_key and cfg.pe_mouth_freqs > 0 else None)
        cin = cfg.texture_channels + sum(cfg.map_channels(k) for k in cfg.cond_keys)
        for enc in (self.pe_surface, self.pe_pixel, self.pe_mouth):
            cin += enc.out_channels if enc is not None else 0
        cin += cfg.mouth_texture_channels if self.mouth_texture is not None else 0
        layers: list[nn.Module] = []
        c = cin
        for _ in range(cfg.mlp_layers):
            layers += [nn.Conv2d(c, cfg.mlp_channels, 1), _act()]
            c = cfg.mlp_channels
        self.mlp = nn.Sequential(*layers)
        unet_in = c + (4 if cfg.context else 0)  # + masked context RGB + hole
        self.unet = UNet(unet_in, 4, cfg.unet_base, cfg.unet_depth, cfg.unet_max_channels, film_dim=cfg.expr_dim)
        # alpha = hole + (1 - hole) * sigmoid(logit): inside the hole the plate is masked, so
        # alpha must be 1 there and is not left to learn; outside, the logit starts at -4
        # (alpha ~ 0.02): the plate passes through from the first step and the network learns
        # to paint beyond the hole only where that helps (hair line, jaw over the neck).
        with torch.no_grad():
            self.unet.head.bias[3].fill_(-4.0)

    def features(self, cond: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pixel network input (B, Cin, H, W) and the RGB-supervised texture channels."""
        cfg = self.cfg
        missing = [k for k in cfg.required_maps() if k not in cond]
        if missing:
            raise ConfigError(f"generator needs conditioning map(s) {missing}; got {sorted(cond)}")
        face = cond[cfg.face_key].float()
        dtype = face.dtype
        tex = self.texture.sample(cond[cfg.uv_key].to(dtype)) * face
        parts = [tex]
        parts += [cond[k].to(dtype) for k in cfg.cond_keys]
        B, _, H, W = face.shape
        if self.pe_surface is not None:
            parts.append(self.pe_surface(cond[cfg.canonical_key].to(dtype)) * face)
        if self.pe_pixel is not None:
            parts.append(self.pe_pixel(pixel_grid(B, H, W, face.device, dtype)))
        if cfg.mouth_key:
            mouth = cond[cfg.mouth_key].to(dtype)
            if self.mouth_texture is not None:
                parts.append(self.mouth_texture.sample(cond[cfg.uv_key].to(dtype)) * mouth)
            if self.pe_mouth is not None:
                parts.append(self.pe_mouth(cond[cfg.canonical_key].to(dtype)) * mouth)
        return torch.cat(parts, 1), tex[:, :3]

    def forward(self, cond: dict[str, torch.Tensor], context: torch.Tensor | None = None,
                expr: torch.Tensor | None = None, hole: torch.Tensor | None = None) -> GeneratorOutput:
        """cond: name -> (B, C, H, W); context (B, 3, H, W) plate crop in [0, 1] (required when
        ``cfg.context``); expr (B, expr_dim); hole (B, 1, H, W) overrides the dilated face mask."""
        cfg = self.cfg
        x, tex_rgb = self.features(cond)
        if hole is None:
            hole = face_hole(cond[cfg.face_key].float(), cfg.hole_dilate)
        hole = hole.to(x.dtype)
        x = self.mlp(x)
        if cfg.context:
            if context is None:
                raise ConfigError("this generator composites onto the plate: pass the plate crop as context")
            ctx = context.to(x.dtype) * (1 - hole)
            x = torch.cat([x, ctx, hole], 1)
        else:
            ctx = torch.zeros_like(x[:, :3])
        if cfg.expr_dim > 0 and expr is None:
            raise ConfigError(f"this generator needs per-frame expression coefficients (expr_dim={cfg.expr_dim})")
        y = self.unet(x, expr if cfg.expr_dim > 0 else None).float()
        rgb = torch.sigmoid(y[:, :3])
        alpha = torch.sigmoid(y[:, 3:4])
        if cfg.context:
            holef = hole.float()
            alpha = holef + (1 - holef) * alpha
        composite = alpha * rgb + (1 - alpha) * ctx.float()
        return GeneratorOutput(rgb=rgb, alpha=alpha, composite=composite, hole=hole.float(),
                               texture_rgb=tex_rgb.float())

    def num_parameters(self) -> dict[str, int]:
        def n(m: nn.Module | None) -> int:
            return 0 if m is None else sum(p.numel() for p in m.parameters())
        return {"texture": n(self.texture) + n(self.mouth_texture), "mlp": n(self.mlp),
                "unet": n(self.unet), "total": n(self)}
