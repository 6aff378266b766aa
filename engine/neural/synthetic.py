"""Synthetic training data for tests and benchmarks: a textured, talking sphere (no faces).

Each frame renders (analytically, orthographic) a unit sphere that turns (yaw) and drifts
across the crop, with a procedural colour texture in UV space, Lambert shading and a
"mouth": an ellipse on the front of the sphere whose opening follows a per-frame ``jaw``
value, dark inside with a bright "teeth" band. The frames come with exactly the maps
:func:`engine.face.conditioning.render_conditioning` produces (canonical, normal, depth,
depth_norm, uv, mask_face, mask_mouth, region one-hot) so the whole neural pipeline can be
exercised -- and must genuinely learn a texture from UVs -- without a face tracker.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import torch

from engine.neural.data import FrameCache, FrameCacheWriter

__all__ = ["SYNTH_MAPS", "synthetic_frame", "synthetic_frames", "synthetic_cache"]

SYNTH_MAPS = {"canonical": 3, "normal": 3, "depth": 1, "depth_norm": 1, "uv": 2, "mask_face": 1,
              "mask_mouth": 1, "region": 8}
_SKIN, _LIPS, _MOUTH = 1, 2, 3


def _texture(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Procedural RGB in [0, 1] at texture coordinates (detail at several scales)."""
    r = 0.55 + 0.25 * torch.sin(2 * math.pi * 3 * u) * torch.cos(2 * math.pi * 2 * v)
    g = 0.45 + 0.2 * torch.sign(torch.sin(2 * math.pi * 8 * u) * torch.sin(2 * math.pi * 6 * v))
    b = 0.35 + 0.25 * torch.cos(2 * math.pi * (5 * u + 3 * v))
    return torch.stack([r, g, b], 0).clamp(0, 1)


def _background(S: int, t: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.linspace(0, 1, S), torch.linspace(0, 1, S), indexing="ij")
    r = 0.3 + 0.2 * xs
    g = 0.35 + 0.1 * torch.sin(2 * math.pi * (4 * ys + 0.02 * t))
    b = 0.5 - 0.2 * ys
    return torch.stack([r, g, b], 0)


def synthetic_frame(t: int, size: int, *, period: float = 40.0
                    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Frame ``t`` (0-based): (maps name -> (1, C, S, S), image (3, S, S) in [0, 1], expr (2,))."""
    S = size
    yaw = 0.5 * math.sin(2 * math.pi * t / (1.7 * period))
    jaw = 0.5 + 0.5 * math.sin(2 * math.pi * t / (0.45 * period))
    cx = 0.5 + 0.06 * math.sin(2 * math.pi * t / (2.3 * period))
    cy = 0.5 + 0.04 * math.cos(2 * math.pi * t / (3.1 * period))
    rad = 0.36
    px = (torch.arange(S, dtype=torch.float32) + 0.5) / S  # pixel centres (engine convention)
    yy, xx = torch.meshgrid(px, px, indexing="ij")
    dx, dy = (xx - cx) / rad, (yy - cy) / rad
    rr = dx * dx + dy * dy
    mask = rr < 1
    dz = -torch.sqrt((1 - rr).clamp_min(0))  # OpenCV axes: the visible hemisphere faces -Z
    n = torch.stack([dx, dy, dz], 0) * mask
    # Canonical (object) coordinates: undo the yaw about the vertical (Y) axis.
    c, s = math.cos(yaw), math.sin(yaw)
    X = c * n[0] - s * n[2]
    Z = s * n[0] + c * n[2]
    Y = n[1]
    canon = torch.stack([X, Y, Z], 0) * mask
    u = (torch.atan2(X, -Z) / (2 * math.pi) + 0.5) * mask
    v = (0.5 - torch.asin(Y.clamp(-1, 1)) / math.pi) * mask
    # Mouth: ellipse in (X, Y) on the front (Z < 0), opening with jaw.
    ex, ey = X / 0.35, (Y - 0.35) / (0.04 + 0.16 * jaw)
    in_mouth = mask & (Z < -0.3) & (ex * ex + ey * ey < 1)
    lips = mask & (Z < -0.3) & (ex * ex + ey * ey < 1.6) & ~in_mouth
    tex = _texture(u, v)
    light = torch.tensor([-0.3, -0.5, -0.8])
    light = light / light.norm()
    shade = (0.35 + 0.65 * (n * light[:, None, None]).sum(0).clamp_min(0))
    face_rgb = tex * shade
    face_rgb = torch.where(lips[None], torch.tensor([0.75, 0.3, 0.35])[:, None, None] * shade, face_rgb)
    teeth = in_mouth & ((Y - 0.35).abs() < 0.03 + 0.02 * jaw) & (ey < 0)
    mouth_rgb = torch.where(teeth[None], torch.tensor([0.92, 0.9, 0.85])[:, None, None],
                            torch.tensor([0.15, 0.05, 0.06])[:, None, None])
    face_rgb = torch.where(in_mouth[None], mouth_rgb, face_rgb)
    bg = _background(S, t)
    img = torch.where(mask[None], face_rgb, bg).clamp(0, 1)

    depth = (3.0 + rad * dz) * mask
    region_id = torch.where(in_mouth, _MOUTH, torch.where(lips, _LIPS, torch.where(mask, _SKIN, 0)))
    region = torch.nn.functional.one_hot(region_id, 8).permute(2, 0, 1).float() * mask
    maskf = mask.float()[None]
    maps = {
        "canonical": canon, "normal": n, "depth": depth[None], "depth_norm": (dz * maskf[0])[None],
        "uv": torch.stack([u, v], 0), "mask_face": maskf, "mask_mouth": in_mouth.float()[None], "region": region,
    }
    return {k: m[None].float() for k, m in maps.items()}, img, torch.tensor([jaw, yaw], dtype=torch.float32)


def synthetic_frames(n: int, size: int, first_frame: int = 1001
                     ) -> Iterator[tuple[int, dict, torch.Tensor, torch.Tensor]]:
    for t in range(n):
        maps, img, expr = synthetic_frame(t, size)
        yield first_frame + t, maps, img, expr


def synthetic_cache(n: int, size: int, path: str | Path | None = None, *, first_frame: int = 1001,
                    expr: bool = True) -> FrameCache:
    """A :class:`FrameCache` of ``n`` synthetic frames (in memory, or on disk at ``path``)."""
    w = FrameCacheWriter(path, range(first_frame, first_frame + n), size, SYNTH_MAPS, expr_dim=2 if expr else 0,
                         source={"synthetic": f"talking sphere n={n} size={size}"})
    for i, (_, maps, img, e) in enumerate(synthetic_frames(n, size, first_frame)):
        w.put(i, maps, img, expr=e if expr else None)
    return w.close()
