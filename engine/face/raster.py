"""Vectorised z-buffer triangle rasteriser (pure torch, CPU or CUDA) and its naive reference.

It renders the fitted face mesh into per-pixel fragments (which triangle, perspective-correct
barycentrics, camera depth) from which :mod:`engine.face.conditioning` builds the neural
renderer's input maps. The camera and pixel convention is :mod:`engine.face.camera`'s: OpenCV
axes (+Z forward), pixel (row i, column j) has its centre at ``(u, v) = (j + 0.5, i + 0.5)``.

How it rasterises (the rules both implementations share; they give bit-identical results):

* **Projection**: ``[u, v] = K[:2, :2] @ [X/Z, Y/Z] + K[:2, 2]`` in float32, so any ``K`` whose
  last row is ``[0, 0, 1]`` works, including a crop intrinsics with an in-plane rotation
  (see :func:`engine.face.conditioning.crop_intrinsics`).
* **Fixed point**: projected vertices snap to a 1/256-pixel grid (8 sub-pixel bits, as GPU
  rasterisers do) and edge functions are evaluated *exactly* in int64 at pixel centres. Exact
  arithmetic is what makes the fill rule watertight: two triangles sharing an edge see the same
  integer edge function with opposite sign.
* **Fill rule** (top-left, generalised): a pixel centre on an edge belongs to the triangle whose
  inward edge normal ``(a, b)`` has ``a > 0`` or ``a == 0 and b > 0``. The neighbour across a
  shared edge has the negated normal, so every pixel centre of a tiled surface is covered
  exactly once (no cracks, no double cover).
* **Depth test**: perspective-correct depth ``Z = 1 / sum_k(b_k / Z_k)`` (``b`` the screen-space
  barycentrics) in float32; smaller Z wins, ties go to the smaller face index. The vectorised
  path packs ``(float bits of Z) << 32 | face index`` into an int64 and keeps the minimum per
  pixel with ``scatter_reduce('amin')``: positive float32 bit patterns order like the floats,
  so this is an exact z-test, not a quantised one.
* **Dropped triangles** (documented limitations, no clipping): a triangle is not drawn if any
  vertex has ``Z < near`` (behind or too close to the camera) or a non-finite coordinate, if
  its projection leaves the guard band (|u| or |v| beyond 2**21 pixels), or if its snapped
  area is zero (degenerate). With ``cull_backfaces`` back faces are dropped too: a *front*
  face is counter-clockwise as seen in the image, i.e. its normal ``(v1-v0) x (v2-v0)``
  points towards the camera (the usual outward winding of a closed mesh).

The vectorised path enumerates each triangle's pixel bounding box exactly (no padding to
bucket sizes): candidates are generated with ``repeat_interleave`` over per-triangle pixel
counts, in chunks of bounded size; a triangle bigger than one chunk is split into strips of
rows, so full-screen triangles need no special case.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SUBPIXEL_BITS = 8
_SUB = 1 << SUBPIXEL_BITS
_HALF = _SUB // 2
# |snapped coordinate| limit in sub-pixel units. Keeps every edge-function product below
# 2**61, so int64 arithmetic cannot overflow (differences < 2**30, products < 2**60).
_GUARD = 1 << 29
_KEY_EMPTY = torch.iinfo(torch.int64).max
_LOW32 = 0xFFFFFFFF


@dataclass
class Fragments:
    """Rasteriser output, one fragment per pixel.

    face_idx: (B, H, W) int64, index into ``faces`` of the visible triangle; -1 = background.
    bary:     (B, H, W, 3) float32 perspective-correct barycentrics of the pixel centre with
              respect to that triangle's vertices ``faces[f, 0..2]``; zeros on background.
    depth:    (B, H, W) float32 camera-space Z of the visible surface; +inf on background.
    """

    face_idx: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """(B, H, W) bool: a triangle covers the pixel."""
        return self.face_idx >= 0


def _as_batched_k(K: torch.Tensor, batch: int, device: torch.device,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    K = torch.as_tensor(K, device=device, dtype=dtype)
    if K.dim() == 2:
        K = K.expand(batch, 3, 3)
    if K.shape != (batch, 3, 3):
        raise ValueError(f"K must be (3,3) or ({batch},3,3), got {tuple(K.shape)}")
    return K


def project_points(verts_cam: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Pinhole projection with a general intrinsics: (B, V, 3) -> (B, V, 2) pixel (u, v).

    ``[u, v] = K[:2, :2] @ [X/Z, Y/Z] + K[:2, 2]``: equals :func:`engine.face.camera.project`
    for ``K = [[f, 0, cx], [0, f, cy], [0, 0, 1]]`` and also handles ``fx != fy``, skew and the
    in-plane rotation of a crop intrinsics. No clamping of Z (callers decide what is visible).
    """
    B = verts_cam.shape[0]
    K = _as_batched_k(K, B, verts_cam.device, verts_cam.dtype)[:, None]  # (B, 1, 3, 3)
    x = verts_cam[..., 0] / verts_cam[..., 2]
    y = verts_cam[..., 1] / verts_cam[..., 2]
    u = K[..., 0, 0] * x + K[..., 0, 1] * y + K[..., 0, 2]
    v = K[..., 1, 0] * x + K[..., 1, 1] * y + K[..., 1, 2]
    return torch.stack([u, v], -1)


def project_fixed(verts_cam: torch.Tensor, K: torch.Tensor, near: float = 1e-3
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Project camera-space vertices to the fixed-point image grid.

    Returns ``(xy, z, ok)``: xy (B, V, 2) int64 positions in 1/256 pixel units (``u * 256``
    rounded half-to-even), z (B, V) float32 camera Z, ok (B, V) bool: vertex usable (finite,
    ``Z >= near``, inside the guard band). Shared by both rasterisers so that they start from
    the same integers.
    """
    v = verts_cam.to(torch.float32)
    Z = v[..., 2]
    uv = project_points(v, K)
    uf = torch.round(uv[..., 0] * _SUB)
    vf = torch.round(uv[..., 1] * _SUB)
    ok = (Z >= near) & torch.isfinite(Z) & (uf.abs() <= _GUARD) & (vf.abs() <= _GUARD)
    # abs() of NaN compares False, so non-finite u/v are already excluded by the guard test.
    uf = torch.where(ok, uf, torch.zeros_like(uf))
    vf = torch.where(ok, vf, torch.zeros_like(vf))
    xy = torch.stack([uf, vf], -1).to(torch.int64)
    return xy, Z, ok


def _min3(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    # Elementwise; much faster than amin over a trailing dimension of size 3.
    return torch.minimum(torch.minimum(a, b), c)


def _max3(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return torch.maximum(torch.maximum(a, b), c)


def _ceil_div(a: torch.Tensor, d: int) -> torch.Tensor:
    return -torch.div(-a, d, rounding_mode="floor")


def _triangle_setup(xy: torch.Tensor, z: torch.Tensor, ok: torch.Tensor, faces: torch.Tensor,
                    height: int, width: int, cull_backfaces: bool) -> dict[str, torch.Tensor]:
    """Per-triangle edge functions, fill-rule thresholds and pixel bounding boxes, all (B*F, ...)."""
    B = xy.shape[0]
    F = faces.shape[0]
    BF = B * F
    P = xy[:, faces].reshape(BF, 3, 2)  # int64
    zt = z[:, faces].reshape(BF, 3)
    okt = ok[:, faces].reshape(BF, 3).all(1)
    x = P[..., 0]
    y = P[..., 1]
    # Edge k is opposite vertex k: (a, b) = (v1, v2), (v2, v0), (v0, v1).
    ax, ay = x[:, [1, 2, 0]], y[:, [1, 2, 0]]
    dx = x[:, [2, 0, 1]] - ax
    dy = y[:, [2, 0, 1]] - ay
    # Signed 2*area: (v1-v0) x (v2-v0) = edge function of edge 2 at v2.
    cross = dx[:, 2] * (y[:, 2] - y[:, 0]) - dy[:, 2] * (x[:, 2] - x[:, 0])
    s = torch.sign(cross)[:, None]
    # e_k(p) = s * ((b-a) x (p-a)) = A p.x + B p.y + C, >= 0 inside, sum_k e_k = |cross|.
    A = -dy * s
    Bc = dx * s
    C = (dy * ax - dx * ay) * s
    top_left = (A > 0) | ((A == 0) & (Bc > 0))
    thr = (~top_left).to(torch.int64)  # inside iff e_k >= thr_k
    # Pixel-centre bounding box: columns j with j*SUB + HALF in [xmin, xmax], clipped.
    j0 = _ceil_div(_min3(x[:, 0], x[:, 1], x[:, 2]) - _HALF, _SUB).clamp_min(0)
    j1 = torch.div(_max3(x[:, 0], x[:, 1], x[:, 2]) - _HALF, _SUB, rounding_mode="floor").clamp_max(width - 1)
    i0 = _ceil_div(_min3(y[:, 0], y[:, 1], y[:, 2]) - _HALF, _SUB).clamp_min(0)
    i1 = torch.div(_max3(y[:, 0], y[:, 1], y[:, 2]) - _HALF, _SUB, rounding_mode="floor").clamp_max(height - 1)
    # Front face = counter-clockwise in the (y-down) image = negative cross: cross has the
    # sign of n . v0 for n = (v1-v0) x (v2-v0), with the camera at the origin.
    valid = okt & ((cross < 0) if cull_backfaces else (cross != 0)) & (j0 <= j1) & (i0 <= i1)
    return {"A": A, "B": Bc, "C": C, "thr": thr, "z": zt, "tot": cross.abs(), "valid": valid,
            "i0": i0, "j0": j0, "w": j1 - j0 + 1, "h": i1 - i0 + 1}


def _depth_and_bary(e: torch.Tensor, z: torch.Tensor, tot: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Perspective-correct depth and barycentrics from exact edge values.

    e (N,3) int64 edge values (>= 0), z (N,3) float32 vertex depths, tot (N,) int64 (= sum e).
    With screen barycentrics b_k = e_k / tot: 1/Z = sum_k b_k / Z_k and the perspective-correct
    weights are (b_k / Z_k) * Z. The operation order is fixed (the reference repeats it).
    """
    q = e.to(torch.float32) / z
    s = q[:, 0] + q[:, 1] + q[:, 2]
    depth = tot.to(torch.float32) / s
    return depth, q / s[:, None]


# Candidate grids are (2**lh, 2**lw) pixels per item; bigger bounding boxes are cut into
# tiles of _TILE x _TILE first.
_TILE_LOG2 = 6
_TILE = 1 << _TILE_LOG2
_NBUCKET = _TILE_LOG2 + 1
# int32 candidate arithmetic when every edge value of the grid is below this (the sentinel
# that masks padding columns/rows, -2**30, then cannot overflow either).
_I32_SAFE = 1 << 29
_MASKED = -(1 << 30)
_MASKED64 = -(1 << 62)
_LOG2_LUT = [0, 0] + [int(np.ceil(np.log2(n))) for n in range(2, _TILE + 1)]


def _default_chunk(device: torch.device) -> int:
    return 1 << 24 if device.type == "cuda" else 1 << 20


def rasterize(verts_cam: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, height: int,
              width: int, *, cull_backfaces: bool = False, near: float = 1e-3,
              max_candidates: int | None = None) -> Fragments:
    """Z-buffer rasterise a batch of meshes sharing one topology.

    verts_cam (B, V, 3) camera-space vertices (float), faces (F, 3) int64, K (3, 3) or
    (B, 3, 3) intrinsics (last row [0, 0, 1]) for an image of ``height`` x ``width`` pixels.
    ``max_candidates`` bounds the candidate pixels tested at once (a few tens of bytes each).
    Runs on the device of ``verts_cam``; no Python loop over triangles or pixels (only over
    at most 49 bounding-box size classes and memory chunks). See the module doc for the fill,
    depth and dropping rules.
    """
    if verts_cam.dim() != 3 or verts_cam.shape[-1] != 3:
        raise ValueError(f"verts_cam must be (B,V,3), got {tuple(verts_cam.shape)}")
    device = verts_cam.device
    faces = faces.to(device=device, dtype=torch.int64)
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must be (F,3), got {tuple(faces.shape)}")
    B = verts_cam.shape[0]
    F = faces.shape[0]
    H, W = int(height), int(width)
    cap = max(int(max_candidates or _default_chunk(device)), _TILE * _TILE)
    with torch.no_grad():
        xy, z, ok = project_fixed(verts_cam, K, near)
        t = _triangle_setup(xy, z, ok, faces, H, W, cull_backfaces)
        zbuf = torch.full((B * H * W,), _KEY_EMPTY, dtype=torch.int64, device=device)
        if F:
            _fill_zbuffer(t, zbuf, F, H, W, cap)
        return _resolve(zbuf, t, B, F, H, W)


def _make_items(t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Work items (triangle, i0, j0, h, w) with h, w <= _TILE: big boxes are cut into tiles."""
    tri = t["valid"].nonzero().squeeze(1)
    i0, j0, h, w = t["i0"][tri], t["j0"][tri], t["h"][tri], t["w"][tri]
    big = (h > _TILE) | (w > _TILE)
    if bool(big.any()):
        device = tri.device
        bt = big.nonzero().squeeze(1)
        bh, bw = h[bt], w[bt]
        nty = _ceil_div(bh, _TILE)
        ntx = _ceil_div(bw, _TILE)
        sid = torch.repeat_interleave(bt, nty * ntx)
        first = torch.cumsum(nty * ntx, 0) - nty * ntx
        k = torch.arange(sid.numel(), device=device) - torch.repeat_interleave(first, nty * ntx)
        nx = ntx[torch.repeat_interleave(torch.arange(bt.numel(), device=device), nty * ntx)]
        ty = torch.div(k, nx, rounding_mode="floor")
        tx = k - ty * nx
        small = (~big).nonzero().squeeze(1)
        ti0 = i0[sid] + ty * _TILE
        tj0 = j0[sid] + tx * _TILE
        th = torch.clamp(h[sid] - ty * _TILE, max=_TILE)
        tw = torch.clamp(w[sid] - tx * _TILE, max=_TILE)
        tri = torch.cat([tri[small], tri[sid]])
        i0 = torch.cat([i0[small], ti0])
        j0 = torch.cat([j0[small], tj0])
        h = torch.cat([h[small], th])
        w = torch.cat([w[small], tw])
    return tri, i0, j0, h, w


def _fill_zbuffer(t: dict[str, torch.Tensor], zbuf: torch.Tensor, F: int, H: int, W: int,
                  cap: int) -> None:
    device = zbuf.device
    tri, i0, j0, h, w = _make_items(t)
    if tri.numel() == 0:
        return
    # Per-item edge functions relative to the item's first pixel centre, biased by the fill
    # rule threshold so that "inside" is simply e >= 0 on all three edges.
    A = t["A"].index_select(0, tri)
    Bc = t["B"].index_select(0, tri)
    thr = t["thr"].index_select(0, tri)
    C0 = A * (j0 * _SUB + _HALF)[:, None] + Bc * (i0 * _SUB + _HALF)[:, None] + t["C"].index_select(0, tri) - thr
    A = A * _SUB
    Bc = Bc * _SUB
    # Size class ceil(log2(side)) via a lookup table; items whose grid could overflow int32
    # (huge or far off-screen triangles) get their own int64 classes.
    lut = torch.tensor(_LOG2_LUT, device=device)
    lw, lh = lut[w], lut[h]
    mag = C0.abs() + A.abs() * ((1 << lw) - 1)[:, None] + Bc.abs() * ((1 << lh) - 1)[:, None]
    wide = _max3(mag[:, 0], mag[:, 1], mag[:, 2]) >= _I32_SAFE
    key = lw * _NBUCKET + lh + wide * (_NBUCKET * _NBUCKET)
    order = torch.argsort(key)
    counts = torch.bincount(key, minlength=2 * _NBUCKET * _NBUCKET).tolist()
    pix0 = torch.div(tri, F, rounding_mode="floor") * (H * W) + i0 * W + j0
    tri, thr, w, h, pix0 = tri[order], thr[order], w[order], h[order], pix0[order]
    A, Bc, C0 = A[order], Bc[order], C0[order]
    ar = torch.arange(_TILE, device=device)
    pending: list[tuple[torch.Tensor, ...]] = []
    n_pending = 0
    start = 0
    for bucket, n_b in enumerate(counts):
        if n_b == 0:
            continue
        wide_b, rest = divmod(bucket, _NBUCKET * _NBUCKET)
        lw_b, lh_b = divmod(rest, _NBUCKET)
        per_chunk = max(1, cap >> (lw_b + lh_b))
        for s in range(start, start + n_b, per_chunk):
            e = min(s + per_chunk, start + n_b)
            hit = _bucket_candidates(A[s:e], Bc[s:e], C0[s:e], w[s:e], h[s:e], lw_b, lh_b,
                                     ar, torch.int64 if wide_b else torch.int32)
            if hit is None:
                continue
            pending.append((hit[0] + s, *hit[1:]))
            n_pending += hit[0].numel()
            if n_pending >= cap:
                _depth_test(pending, tri, thr, pix0, t, zbuf, F, W)
                pending, n_pending = [], 0
        start += n_b
    if pending:
        _depth_test(pending, tri, thr, pix0, t, zbuf, F, W)


def _bucket_candidates(A: torch.Tensor, Bc: torch.Tensor, C0: torch.Tensor, w: torch.Tensor,
                       h: torch.Tensor, lw: int, lh: int, ar: torch.Tensor, dtype: torch.dtype):
    """Test the (2**lh x 2**lw) candidate grid of every item; return the inside pixels.

    Returns (item, row, col, biased edge values (3, N)) or None when nothing is inside.
    The grid is built by broadcasting a per-column and a per-row term, so no per-candidate
    gathers are needed; ``dtype`` is int32 when the caller proved it cannot overflow.
    """
    sw, sh = 1 << lw, 1 << lh
    cols, rows = ar[:sw], ar[:sh]
    colterm = (A[:, :, None] * cols + C0[:, :, None]).to(dtype)  # (n, 3, sw)
    rowterm = (Bc[:, :, None] * rows).to(dtype)  # (n, 3, sh)
    # Padding columns / rows beyond the item's box fail edge 0 / edge 1 outright.
    # (A sentinel below -max|term|, and far enough from the type's minimum not to overflow.)
    masked = torch.tensor(_MASKED if dtype == torch.int32 else _MASKED64, dtype=dtype, device=A.device)
    ct0 = torch.where(cols < w[:, None], colterm[:, 0], masked)
    rt1 = torch.where(rows < h[:, None], rowterm[:, 1], masked)
    n = A.shape[0]
    E = torch.empty((3, n, sh, sw), dtype=dtype, device=A.device)
    torch.add(ct0[:, None, :], rowterm[:, 0, :, None], out=E[0])
    torch.add(colterm[:, 1, None, :], rt1[:, :, None], out=E[1])
    torch.add(colterm[:, 2, None, :], rowterm[:, 2, :, None], out=E[2])
    m = torch.minimum(E[0], E[1])
    torch.minimum(m, E[2], out=m)
    flat = (m >= 0).view(-1).nonzero().squeeze(1)
    if flat.numel() == 0:
        return None
    item = flat >> (lw + lh)
    r = (flat >> lw) & (sh - 1)
    c = flat & (sw - 1)
    return item, r, c, E.view(3, -1)[:, flat]


def _depth_test(pending: list[tuple[torch.Tensor, ...]], tri: torch.Tensor, thr: torch.Tensor,
                pix0: torch.Tensor, t: dict[str, torch.Tensor], zbuf: torch.Tensor, F: int,
                W: int) -> None:
    """Z-test inside fragments: keep per pixel the min of (depth bits << 32 | face index)."""
    if len(pending) == 1:
        item, r, c, eb = pending[0]
    else:
        item, r, c, eb = (torch.cat(x, -1) for x in zip(*pending))
    ti = tri.index_select(0, item)
    pix = pix0.index_select(0, item) + r * W + c
    e3 = eb.t().to(torch.int64) + thr.index_select(0, item)
    depth, _ = _depth_and_bary(e3, t["z"].index_select(0, ti), t["tot"].index_select(0, ti))
    face = ti - torch.div(ti, F, rounding_mode="floor") * F
    key = (depth.view(torch.int32).to(torch.int64) << 32) | face
    zbuf.scatter_reduce_(0, pix, key, reduce="amin", include_self=True)


def _resolve(zbuf: torch.Tensor, t: dict[str, torch.Tensor], B: int, F: int, H: int, W: int
             ) -> Fragments:
    """Z-buffer keys -> face index, and depth/barycentrics recomputed exactly for the winners."""
    device = zbuf.device
    hit = zbuf != _KEY_EMPTY
    face_idx = torch.where(hit, zbuf & _LOW32, torch.full_like(zbuf, -1))
    depth = torch.full((B * H * W,), float("inf"), dtype=torch.float32, device=device)
    bary = torch.zeros((B * H * W, 3), dtype=torch.float32, device=device)
    pix = hit.nonzero().squeeze(1)
    if pix.numel():
        b = torch.div(pix, H * W, rounding_mode="floor")
        rem = pix - b * (H * W)
        i = torch.div(rem, W, rounding_mode="floor")
        j = rem - i * W
        ti = b * F + face_idx[pix]
        px = (j * _SUB + _HALF)[:, None]
        py = (i * _SUB + _HALF)[:, None]
        e3 = t["A"].index_select(0, ti) * px + t["B"].index_select(0, ti) * py + t["C"].index_select(0, ti)
        d, bc = _depth_and_bary(e3, t["z"].index_select(0, ti), t["tot"].index_select(0, ti))
        depth[pix] = d
        bary[pix] = bc
    return Fragments(face_idx.view(B, H, W), bary.view(B, H, W, 3), depth.view(B, H, W))


def interpolate(attrs: torch.Tensor, faces: torch.Tensor, fragments: Fragments,
                bary: torch.Tensor | None = None) -> torch.Tensor:
    """Perspective-correct per-pixel interpolation of per-vertex attributes.

    attrs (B, V, C) or (V, C) -> (B, H, W, C); background pixels are zero. Differentiable with
    respect to ``attrs`` (and to ``bary`` when given, e.g. from :func:`differentiable_bary`).
    """
    fi = fragments.face_idx
    B, H, W = fi.shape
    faces = faces.to(device=fi.device, dtype=torch.int64)
    if bary is None:
        bary = fragments.bary
    if attrs.dim() == 2:
        attrs = attrs.unsqueeze(0).expand(B, *attrs.shape)
    if attrs.shape[0] != B:
        raise ValueError(f"attrs batch {attrs.shape[0]} != fragments batch {B}")
    C = attrs.shape[-1]
    fg = fi >= 0
    vid = faces[fi.clamp_min(0)]  # (B, H, W, 3)
    bidx = torch.arange(B, device=fi.device).view(B, 1, 1, 1)
    vals = attrs[bidx, vid]  # (B, H, W, 3, C)
    w = (bary * fg[..., None]).to(vals.dtype)
    return (vals * w[..., None]).sum(-2).reshape(B, H, W, C)


def differentiable_bary(verts_cam: torch.Tensor, faces: torch.Tensor, K: torch.Tensor,
                        fragments: Fragments) -> torch.Tensor:
    """Perspective-correct barycentrics of the visible triangles, differentiable in the vertices.

    Recomputes ``fragments.bary`` in floating point from ``verts_cam`` (no snapping) for the
    triangles the rasteriser chose, so gradients flow into vertex positions through the
    interior of triangles (no silhouette/visibility gradients, as in a plain differentiable
    rasteriser without anti-aliasing). Background pixels are zero.
    """
    fi = fragments.face_idx
    B, H, W = fi.shape
    faces = faces.to(device=fi.device, dtype=torch.int64)
    Z = verts_cam[..., 2:3]
    uv = project_points(verts_cam, K)  # (B, V, 2), differentiable
    fg = fi >= 0
    vid = faces[fi.clamp_min(0)]
    bidx = torch.arange(B, device=fi.device).view(B, 1, 1, 1)
    p = uv[bidx, vid]  # (B, H, W, 3, 2)
    z = Z[..., 0][bidx, vid]  # (B, H, W, 3)
    jj = torch.arange(W, device=fi.device, dtype=uv.dtype) + 0.5
    ii = torch.arange(H, device=fi.device, dtype=uv.dtype) + 0.5
    pc = torch.stack(torch.broadcast_tensors(jj[None, :], ii[:, None]), -1)  # (H, W, 2)
    a = p[..., [1, 2, 0], :]
    b = p[..., [2, 0, 1], :]
    d = pc[None, :, :, None, :] - a
    e = (b[..., 0] - a[..., 0]) * d[..., 1] - (b[..., 1] - a[..., 1]) * d[..., 0]
    q = e / z
    s = q.sum(-1, keepdim=True)
    s = torch.where(fg[..., None], s, torch.ones_like(s))
    return (q / s) * fg[..., None]


# --------------------------------------------------------------------------------------------
# Naive reference: plain Python loops over triangles and their bounding-box pixels.
# --------------------------------------------------------------------------------------------

def rasterize_naive(verts_cam: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, height: int,
                    width: int, *, cull_backfaces: bool = False, near: float = 1e-3) -> Fragments:
    """Reference rasteriser: same rules as :func:`rasterize`, written as obvious scalar loops.

    Integer edge functions use Python ints, depth uses numpy float32 scalars in the same
    operation order as the vectorised path, so results are expected to be identical. Slow:
    for tests on small images only.
    """
    xy_t, z_t, ok_t = project_fixed(verts_cam, K, near)
    xy = xy_t.cpu().numpy()
    zs = z_t.cpu().numpy().astype(np.float32)
    ok = ok_t.cpu().numpy()
    fc = faces.cpu().numpy().astype(np.int64)
    B = xy.shape[0]
    H, W = int(height), int(width)
    face_idx = np.full((B, H, W), -1, np.int64)
    depth = np.full((B, H, W), np.inf, np.float32)
    bary = np.zeros((B, H, W, 3), np.float32)

    def edge(a, b, p):
        return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])

    for bi in range(B):
        for f, (ia, ib, ic) in enumerate(fc.tolist()):
            if not (ok[bi, ia] and ok[bi, ib] and ok[bi, ic]):
                continue
            v = [tuple(int(c) for c in xy[bi, k]) for k in (ia, ib, ic)]
            zv = [zs[bi, k] for k in (ia, ib, ic)]
            area = edge(v[0], v[1], v[2])
            if area == 0 or (cull_backfaces and area > 0):
                continue
            sg = 1 if area > 0 else -1
            edges = [(v[1], v[2]), (v[2], v[0]), (v[0], v[1])]
            # Inward normal of edge (a, b) after orientation: sg * (-(b.y - a.y), b.x - a.x).
            tl = []
            for a, b in edges:
                nx, ny = -sg * (b[1] - a[1]), sg * (b[0] - a[0])
                tl.append(nx > 0 or (nx == 0 and ny > 0))
            xmin, xmax = min(p[0] for p in v), max(p[0] for p in v)
            ymin, ymax = min(p[1] for p in v), max(p[1] for p in v)
            # Pixel j's centre is j*SUB + HALF; ceil/floor with Python's exact integer division.
            jlo = max(0, -((-(xmin - _HALF)) // _SUB))
            jhi = min(W - 1, (xmax - _HALF) // _SUB)
            ilo = max(0, -((-(ymin - _HALF)) // _SUB))
            ihi = min(H - 1, (ymax - _HALF) // _SUB)
            for i in range(ilo, ihi + 1):
                for j in range(jlo, jhi + 1):
                    p = (j * _SUB + _HALF, i * _SUB + _HALF)
                    e = [sg * edge(a, b, p) for a, b in edges]
                    if not all(ek > 0 or (ek == 0 and tk) for ek, tk in zip(e, tl)):
                        continue
                    q = [np.float32(np.int64(ek)) / zk for ek, zk in zip(e, zv)]
                    s = (q[0] + q[1]) + q[2]
                    d = np.float32(np.int64(abs(area))) / s
                    if d < depth[bi, i, j]:
                        depth[bi, i, j] = d
                        face_idx[bi, i, j] = f
                        bary[bi, i, j] = [q[0] / s, q[1] / s, q[2] / s]
    dev = verts_cam.device
    return Fragments(torch.from_numpy(face_idx).to(dev), torch.from_numpy(bary).to(dev),
                     torch.from_numpy(depth).to(dev))
