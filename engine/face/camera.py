"""The one camera and geometry convention of Portrait Engine.

* Camera space (OpenCV convention): the camera sits at the origin, +X points right, +Y
  points down, +Z points forward into the scene; a visible point has Z > 0. Units are the
  face model's units (centimetres for ICT and the built-in model).
* Head pose maps model space to camera space: ``x_cam = R @ x_model + t``. ``R`` is
  parameterised by an axis-angle vector (3,) and ``t`` is (3,).
* Intrinsics are a pinhole ``K = [[f, 0, cx], [0, f, cy], [0, 0, 1]]`` (square pixels).
* Image coordinates are continuous pixels: ``u`` right, ``v`` down; the *centre* of pixel
  (row i, column j) is at ``(u, v) = (j + 0.5, i + 0.5)``. So ``u = f X / Z + cx`` lands in
  pixel column ``floor(u)``; an image of width W spans ``u`` in [0, W].
* Landmark arrays are (..., N, 2) in (u, v) under this convention, in the pixels of the
  image they were detected on (full plate or a crop; the crop transform maps between).

``tests/test_camera.py`` checks this with a round trip.
"""
from __future__ import annotations

import torch


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula, batched: (..., 3) -> (..., 3, 3). Stable near zero angle."""
    theta2 = (aa * aa).sum(-1, keepdim=True)
    theta = torch.sqrt(theta2 + 1e-12)
    k = aa / theta
    kx, ky, kz = k.unbind(-1)
    zero = torch.zeros_like(kx)
    kmat = torch.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], -1).reshape(*aa.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(kmat)
    s = torch.sin(theta)[..., None]
    c = torch.cos(theta)[..., None]
    # For tiny angles sin(t)/t -> 1 and (1-cos t)/t^2 -> 1/2; use the series to keep gradients finite.
    small = (theta2 < 1e-8)[..., None]
    a_mat = torch.where(small, aa.new_ones(()).expand_as(s), s)
    rot_big = eye + a_mat * kmat + (1 - c) * (kmat @ kmat)
    ax, ay, az = aa.unbind(-1)
    amat = torch.stack([zero, -az, ay, az, zero, -ax, -ay, ax, zero], -1).reshape(*aa.shape[:-1], 3, 3)
    rot_small = eye + amat + 0.5 * (amat @ amat)
    return torch.where(small, rot_small, rot_big)


def intrinsics(focal: torch.Tensor, cx: torch.Tensor | float, cy: torch.Tensor | float) -> torch.Tensor:
    """Build (..., 3, 3) pinhole intrinsics from focal length(s) in pixels and the principal point."""
    focal = torch.as_tensor(focal, dtype=torch.float32)
    cx = torch.as_tensor(cx, dtype=focal.dtype).expand_as(focal)
    cy = torch.as_tensor(cy, dtype=focal.dtype).expand_as(focal)
    zero = torch.zeros_like(focal)
    one = torch.ones_like(focal)
    return torch.stack([focal, zero, cx, zero, focal, cy, zero, zero, one], -1).reshape(*focal.shape, 3, 3)


def transform(points: torch.Tensor, rot: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
    """Model -> camera space. points (..., N, 3), rot (..., 3, 3), trans (..., 3)."""
    return points @ rot.transpose(-1, -2) + trans[..., None, :]


def project(points_cam: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Camera space (..., N, 3) -> pixel (u, v) (..., N, 2) under the convention above."""
    z = points_cam[..., 2:3].clamp_min(1e-6)
    xy = points_cam[..., :2] / z
    f = K[..., 0, 0][..., None, None]
    c = torch.stack([K[..., 0, 2], K[..., 1, 2]], -1)[..., None, :]
    return xy * f + c


def unproject(uv: torch.Tensor, depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`project` for points with known camera-space depth Z."""
    f = K[..., 0, 0][..., None, None]
    c = torch.stack([K[..., 0, 2], K[..., 1, 2]], -1)[..., None, :]
    xy = (uv - c) / f * depth[..., None]
    return torch.cat([xy, depth[..., None]], -1)
