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
  rasterisers do) and edge functions are evaluated *exactly* in integers at pixel centres. Exact
  arithmetic is what makes the fill rule watertight: two triangles sharing an edge see the same
  integer edge function with opposite sign.
* **Fill rule** (top-left, generalised): a pixel centre on an edge belongs to the triangle whose
  inward edge normal ``(a, b)`` has ``a > 0`` or ``a == 0 and b > 0``. The neighbour across a
  shared edge has the negated normal, so every pixel centre of a tiled surface is covered
  exactly once (no cracks, no double cover).
* **Depth test**: inverse depth is affine in the image, ``1/Z = 1/Z_0 + ga (x - x_0) + gb (y - y_0)``
  relative to the snapped vertex 0, evaluated in float32 (in a fixed operation order); the
  nearer surface wins, ties go to the smaller face index. The vectorised path packs
  ``(bits(+inf) - bits(1/Z)) << 32 | face index`` into an int64 and keeps the minimum per
  pixel with ``scatter_reduce('amin')``: non-negative float32 bit patterns order like the
  floats, so the comparison is exact on those floats (not quantised).
* **Outputs**: for the winning triangle, perspective-correct barycentrics
  ``(b_k / Z_k) / sum_j (b_j / Z_j)`` from the exact integer edge values ``b_k = e_k / tot``
  and the depth ``Z = tot / sum_k (e_k / Z_k)``, in float32.
* **Dropped triangles** (documented limitations, no clipping): a triangle is not drawn if any
  vertex has ``Z < near`` (behind or too close to the camera) or a non-finite coordinate, if
  its projection leaves the guard band (|u| or |v| beyond 2**21 pixels), or if its snapped
  area is zero (degenerate). With ``cull_backfaces`` back faces are dropped too: a *front*
  face is counter-clockwise as seen in the image, i.e. its normal ``(v1-v0) x (v2-v0)``
  points towards the camera (the usual outward winding of a closed mesh).

The vectorised path (no Python loop over triangles or pixels):

1. per-triangle set-up for all B*F triangles at once (structure of arrays): snapped
   vertices, signed area, clipped pixel box; unusable triangles drop; edge functions,
   fill-rule thresholds and the 1/Z plane are then built only for the triangles drawn;
   with ``occluders`` (a speed hint, e.g. the skin of a dense face model) their front faces
   are drawn first and every other triangle is dropped when the z-buffer so far provably
   hides it (hierarchical-z test with an exact box minimum and a float-error margin, see
   :func:`_hidden`), which leaves the result bit-identical;
2. triangles whose box fits in 4 x 4 pixels (most of a dense mesh) test a fixed candidate
   grid per size class, built by broadcasting a per-column and a per-row term of the edge
   functions (int32 when the values provably fit, else int64);
3. larger triangles are scan-converted: per covered row, the exact span of inside columns
   follows from the three edge functions by integer floor division, and only inside pixels
   are generated (so a full-screen triangle costs its area, not its box);
4. every inside fragment's key goes through ``scatter_reduce('amin')``, in memory-bounded
   batches;
5. the winners' barycentrics and depth are recomputed exactly from the integer edge values.

Background pixels: ``face_idx = -1``, ``depth = +inf``, ``bary = 0``.
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
_INF_BITS = 0x7F800000


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

    Returns ``(xy, z, ok)``: xy (B, V, 2) int32 positions in 1/256 pixel units (``u * 256``
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
    xy = torch.stack([uf, vf], -1).to(torch.int32)
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
    """Stage 1 for all B*F triangles: snapped corners, signed area, clipped pixel box, validity.

    Stored as structure-of-arrays (1-D gathers are several times faster than row gathers):
    X, Y, z lists of three (T,) corner coordinates (int32 sub-pixel units) and depths, dx, dy
    the edge vectors (edge k is opposite corner k), cross the signed 2*area (int64), front,
    valid (bool), the clipped pixel box i0, j0, h, w (int64) and B, F, H, W. The edge
    functions and the 1/Z plane (:func:`_triangle_edges`) are only built for the triangles
    that are actually drawn.
    """
    B, V = xy.shape[:2]
    # Flat vertex index of corner k of every triangle of every batch element: (B*F,).
    off = (torch.arange(B, device=xy.device) * V)[:, None]
    gk = [(faces[:, k][None, :] + off).reshape(-1) for k in range(3)]
    xs, ys = xy[..., 0].reshape(-1), xy[..., 1].reshape(-1)
    X = [xs.index_select(0, g) for g in gk]  # int32, (T,)
    Y = [ys.index_select(0, g) for g in gk]
    zf, okf = z.reshape(-1), ok.reshape(-1)
    zt = [zf.index_select(0, g) for g in gk]
    okt = okf.index_select(0, gk[0]) & okf.index_select(0, gk[1]) & okf.index_select(0, gk[2])
    # Edge k is opposite vertex k: (a, b) = (v1, v2), (v2, v0), (v0, v1). Coordinates are
    # within +-2**29, so differences fit int32; products need int64.
    dx = [X[(k + 2) % 3] - X[(k + 1) % 3] for k in range(3)]
    dy = [Y[(k + 2) % 3] - Y[(k + 1) % 3] for k in range(3)]
    # Signed 2*area: (v1-v0) x (v2-v0).
    cross = dx[2].long() * (Y[2] - Y[0]).long() - dy[2].long() * (X[2] - X[0]).long()
    # Pixel-centre box: columns j with j*SUB + HALF in [xmin, xmax], clipped to the image.
    j0 = _ceil_div(_min3(*X) - _HALF, _SUB).clamp_min(0)
    j1 = torch.div(_max3(*X) - _HALF, _SUB, rounding_mode="floor").clamp_max(width - 1)
    i0 = _ceil_div(_min3(*Y) - _HALF, _SUB).clamp_min(0)
    i1 = torch.div(_max3(*Y) - _HALF, _SUB, rounding_mode="floor").clamp_max(height - 1)
    # Front face = counter-clockwise in the (y-down) image = negative cross: cross has the
    # sign of n . v0 for n = (v1-v0) x (v2-v0), with the camera at the origin.
    front = cross < 0
    valid = okt & (front if cull_backfaces else (cross != 0)) & (j0 <= j1) & (i0 <= i1)
    return {"X": X, "Y": Y, "z": zt, "dx": dx, "dy": dy, "cross": cross, "front": front, "valid": valid,
            "i0": i0.long(), "j0": j0.long(), "w": (j1 - j0 + 1).long(), "h": (i1 - i0 + 1).long(),
            "F": faces.shape[0], "HW": height * width}


def _triangle_edges(t: dict, tri: torch.Tensor) -> dict[str, torch.Tensor]:
    """Stage 2 for the triangles ``tri`` (indices into stage 1), renumbered 0..n-1.

    A, B int32 and C int64 lists with e_k(p) = A_k p.x + B_k p.y + C_k >= 0 inside (p in
    sub-pixel units), thr int32 fill-rule thresholds (inside iff e_k >= thr_k), z vertex
    depths, tot (n,) float32 = sum_k e_k = |2 area|, the 1/Z plane (w0, ga, gb about the
    snapped vertex x0, y0), the pixel box, the face index and the batch element's pixel base.
    """
    def g(x: torch.Tensor) -> torch.Tensor:
        return x.index_select(0, tri)
    X, Y, zt = [g(x) for x in t["X"]], [g(y) for y in t["Y"]], [g(z) for z in t["z"]]
    dx, dy = [g(d) for d in t["dx"]], [g(d) for d in t["dy"]]
    cross = g(t["cross"])
    s64 = torch.sign(cross)
    s32 = s64.to(torch.int32)
    A = [-dy[k] * s32 for k in range(3)]
    Bc = [dx[k] * s32 for k in range(3)]
    # e_k(p) = s * ((b-a) x (p-a)) = A p.x + B p.y + C.
    C = [(dy[k].long() * X[(k + 1) % 3] - dx[k].long() * Y[(k + 1) % 3]) * s64 for k in range(3)]
    # Fill rule: an edge owns its pixel centres iff its inward normal (A, B) has A > 0 or
    # (A == 0 and B > 0); the neighbour across the edge has (-A, -B) and does not.
    thr = [((A[k] < 0) | ((A[k] == 0) & (Bc[k] <= 0))).to(torch.int32) for k in range(3)]
    # Inverse depth is affine in the image: 1/Z(p) = sum_k e_k(p) / (tot Z_k). Relative to the
    # snapped vertex 0 (where e_0 = tot, e_1 = e_2 = 0) that is
    #   1/Z = 1/Z_0 + ga (p.x - x_0) + gb (p.y - y_0),  ga = sum_k A_k / Z_k / tot, ...
    # evaluated in float32 in this fixed order (the reference repeats it) for the z-test keys.
    tot = cross.abs().to(torch.float32)
    Af, Bf = [a.to(torch.float32) for a in A], [b.to(torch.float32) for b in Bc]
    ga = ((Af[0] / zt[0] + Af[1] / zt[1]) + Af[2] / zt[2]) / tot
    gb = ((Bf[0] / zt[0] + Bf[1] / zt[1]) + Bf[2] / zt[2]) / tot
    w0 = 1.0 / zt[0]
    F = t["F"]
    b = torch.div(tri, F, rounding_mode="floor")
    return {"A": A, "B": Bc, "C": C, "thr": thr, "z": zt, "tot": tot,
            "i0": g(t["i0"]), "j0": g(t["j0"]), "w": g(t["w"]), "h": g(t["h"]),
            "face": tri - b * F, "base": b * t["HW"],
            "ga": ga, "gb": gb, "w0": w0, "x0": X[0].long(), "y0": Y[0].long()}


def _zkey(invz: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
    """int64 z-buffer key, smaller = nearer: (bits of +inf - bits of 1/Z) << 32 | face.

    Non-negative float32 bit patterns order like the floats, so this is an exact comparison of
    the float 1/Z values (clamped at 0 against rounding), ties going to the smaller face index.
    """
    bits = invz.clamp_min(0).view(torch.int32).to(torch.int64)
    return ((_INF_BITS - bits) << 32) | face


def _depth_and_bary(e: list[torch.Tensor], z: list[torch.Tensor], tot: torch.Tensor
                    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Perspective-correct depth and barycentrics from exact edge values.

    e: three (N,) integer edge values (>= 0), z: three (N,) float32 vertex depths, tot (N,)
    float32 (= sum e). With screen barycentrics b_k = e_k / tot: 1/Z = sum_k b_k / Z_k and the
    perspective-correct weights are (b_k / Z_k) * Z. The operation order is fixed (the
    reference repeats it), so both rasterisers get bit-identical floats.
    """
    q = [e[k].to(torch.float32) / z[k] for k in range(3)]
    s = q[0] + q[1] + q[2]
    return tot / s, [qk / s for qk in q]


# Items whose pixel box has both sides <= _GRID_MAX test a small candidate grid (cheap for the
# many tiny triangles of dense meshes); larger ones are scan-converted row by row (exact spans).
_GRID_MAX_LOG2 = 2
_GRID_MAX = 1 << _GRID_MAX_LOG2
_NBUCKET = _GRID_MAX_LOG2 + 1
_LOG2_LUT = [0, 0] + [int(np.ceil(np.log2(n))) for n in range(2, _GRID_MAX + 1)]
# int32 grid arithmetic when every edge value of an item's grid is below this.
_I32_SAFE = 1 << 30
_MASKED64 = -(1 << 62)


def _default_chunk(device: torch.device) -> int:
    return 1 << 24 if device.type == "cuda" else 1 << 20


def rasterize(verts_cam: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, height: int,
              width: int, *, cull_backfaces: bool = False, near: float = 1e-3,
              max_candidates: int | None = None, occluders: torch.Tensor | None = None) -> Fragments:
    """Z-buffer rasterise a batch of meshes sharing one topology.

    verts_cam (B, V, 3) camera-space vertices (float), faces (F, 3) int64, K (3, 3) or
    (B, 3, 3) intrinsics (last row [0, 0, 1]) for an image of ``height`` x ``width`` pixels.
    ``max_candidates`` bounds the pixels processed at once (a few tens of bytes each).
    ``occluders`` ((F,) or (B, F) bool) is a pure speed hint for dense meshes with hidden
    geometry (mouth socket, eyeball backs, far side): its front-facing triangles are drawn
    first, then every other triangle is drawn unless that z-buffer provably hides it (exact
    hierarchical-z culling, see :func:`_hidden`). The result is bit-identical for any mask.
    Runs on the device of ``verts_cam``; no Python loop over triangles or pixels (only over
    a few size classes and memory chunks). See the module doc for the fill, depth and
    dropping rules.
    """
    zbuf, u, _, B, F = _zbuffer(verts_cam, faces, K, height, width, cull_backfaces, near, max_candidates,
                                occluders)
    return _resolve(zbuf, u, B, F, int(height), int(width))


def rasterize_visible(verts_cam: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, height: int,
                      width: int, *, cull_backfaces: bool = False, near: float = 1e-3,
                      max_candidates: int | None = None, occluders: torch.Tensor | None = None
                      ) -> tuple["Visible", torch.Tensor]:
    """:func:`rasterize` reduced to its covered pixels: ``(vis, depth)``.

    Bit-identical to ``visible(rasterize(...), faces)`` and the fragments' depth at
    ``vis.pix`` ((N,) float32), without building the full-size face-index, barycentric and
    depth images (the conditioning maps only need the covered pixels).
    """
    zbuf, u, faces, B, F = _zbuffer(verts_cam, faces, K, height, width, cull_backfaces, near, max_candidates,
                                    occluders)
    H, W = int(height), int(width)
    pix, f, b, depth, bary = _winners(zbuf, u, B, F, H, W)
    vid = tuple(faces[:, k].index_select(0, f) for k in range(3))
    batch = b if B > 1 else torch.zeros_like(pix)
    return Visible(pix, batch, vid, tuple(bary), (B, H, W)), depth


def _zbuffer(verts_cam: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, height: int, width: int,
             cull_backfaces: bool, near: float, max_candidates: int | None, occluders: torch.Tensor | None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, int, int]:
    """Validate, set up and z-test every triangle: (z-buffer keys, triangle set-up, faces, B, F)."""
    if verts_cam.dim() != 3 or verts_cam.shape[-1] != 3:
        raise ValueError(f"verts_cam must be (B,V,3), got {tuple(verts_cam.shape)}")
    device = verts_cam.device
    faces = faces.to(device=device, dtype=torch.int64)
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must be (F,3), got {tuple(faces.shape)}")
    B, V = verts_cam.shape[:2]
    F = faces.shape[0]
    if F and (int(faces.min()) < 0 or int(faces.max()) >= V):
        raise ValueError(f"faces index vertices outside [0, {V})")
    H, W = int(height), int(width)
    cap = max(int(max_candidates or _default_chunk(device)), 4 * W)
    with torch.no_grad():
        xy, z, ok = project_fixed(verts_cam, K, near)
        t = _triangle_setup(xy, z, ok, faces, H, W, cull_backfaces)
        zbuf = torch.full((B * H * W,), _KEY_EMPTY, dtype=torch.int64, device=device)
        tri = t["valid"].nonzero().squeeze(1)
        drawn, parts = [tri], []
        if tri.numel():
            sink = _ZSink(zbuf, cap)
            if occluders is not None:
                occ = torch.as_tensor(occluders, device=device).to(torch.bool)
                if occ.shape not in ((F,), (B, F)):
                    raise ValueError(f"occluders must be ({F},) or ({B},{F}), got {tuple(occ.shape)}")
                occ = occ.reshape(-1) if occ.dim() == 2 else occ.repeat(B)
                first = occ.index_select(0, tri) & t["front"].index_select(0, tri)
                # Pass 1: the likely-visible triangles fill the z-buffer; pass 2: every other
                # triangle is drawn unless the filled z-buffer provably hides it (exact culling).
                drawn = [tri[first]]
                parts = [_triangle_edges(t, drawn[0])]
                _draw(parts[0], sink, H, W, cap)
                sink.flush()
                rest = tri[~first]
                if rest.numel():
                    rest = rest[~_hidden(zbuf, t, rest, B, H, W)]
                drawn.append(rest)
                parts.append(_triangle_edges(t, rest))
                _draw(parts[1], sink, H, W, cap)
            else:
                parts = [_triangle_edges(t, tri)]
                _draw(parts[0], sink, H, W, cap)
            sink.flush()
        # The winners' edge data, for recomputing exact barycentrics and depth: the drawn
        # triangles' stage 2, with a map from stage-1 index (b * F + face) to its row.
        if len(parts) == 1:
            u = parts[0]
        elif parts:
            u = {k: [torch.cat([p[k][c] for p in parts]) for c in range(3)] for k in ("A", "B", "C", "z")}
            u["tot"] = torch.cat([p["tot"] for p in parts])
        else:
            u = _triangle_edges(t, tri)
        drawn_all = drawn[0] if len(drawn) == 1 else torch.cat(drawn)
        u["row"] = torch.full((B * F,), -1, dtype=torch.int64, device=device).index_copy_(
            0, drawn_all, torch.arange(drawn_all.numel(), device=device))
    return zbuf, u, faces, B, F


def _draw(u: dict[str, torch.Tensor], sink: "_ZSink", H: int, W: int, cap: int) -> None:
    """Every inside fragment of the triangles of stage-2 set ``u`` into the z-buffer sink."""
    n = u["h"].numel()
    if n == 0:
        return
    small = (u["h"] <= _GRID_MAX) & (u["w"] <= _GRID_MAX)
    _grid_items(u, small.nonzero().squeeze(1), sink, H, W, cap)
    _span_items(u, (~small).nonzero().squeeze(1), sink, W, cap)


# Relative bound on the float32 error of the rasteriser's 1/Z plane evaluation (a few float32
# roundings, ~1e-6 at most; see _hidden), with a wide safety factor.
_PLANE_REL_ERR = 1e-5
# Occlusion tests cover boxes up to this side (2**(_HIZ_LEVELS-1) <= _HIZ_MAX < 2**_HIZ_LEVELS).
_HIZ_LEVELS = 4
_HIZ_MAX = (1 << _HIZ_LEVELS) - 1
_FLOOR_LOG2_LUT = [0, 0] + [int(np.floor(np.log2(n))) for n in range(2, _HIZ_MAX + 1)]


def _hidden(zbuf: torch.Tensor, t: dict[str, torch.Tensor], tri: torch.Tensor, B: int, H: int,
            W: int) -> torch.Tensor:
    """(n,) bool: triangle ``tri`` cannot win any pixel against the current z-buffer.

    Hierarchical-z occlusion culling (Greene, Kass & Miller 1993, "Hierarchical Z-buffer
    visibility"), made exact: a triangle is hidden when an upper bound of the 1/Z its
    fragments can get is below the *smallest* 1/Z already stored over its whole pixel box
    (every box pixel covered). Fragments' 1/Z is a convex combination of the vertices' 1/Z
    on the snapped triangle, so it is at most ``1/min Z_k``, plus the float32 error of the
    plane evaluation ``(w0 + gb dy) + ga dx`` (bounded by a few ulps of
    ``w0 + |ga| |dx| + |gb| |dy|``, with |ga| <= sum |A_k|/Z_k/tot; we allow 1e-5 of that).
    Its z-keys are then strictly larger than the stored ones at every pixel it covers, so
    it would never be visible: dropping it leaves the result bit-identical.

    The box minimum is exact: a 2-D sparse table (range-minimum query) holds, per power-of-two
    window size (2**a rows, 2**b columns), the minimum over the window at every pixel, and
    a box of h x w pixels is the union of 4 such windows at its corners (2**a <= h < 2**(a+1)).
    Boxes longer than ``_HIZ_MAX`` pixels are never culled (few, and cheap to draw anyway).
    Returns False for every triangle it cannot prove hidden.
    """
    device = zbuf.device
    key = zbuf.view(B, H, W)
    hit = key != _KEY_EMPTY
    bits = (_INF_BITS - (key >> 32)).to(torch.int32)
    # Stored 1/Z per pixel (exactly the float the key was made from); -inf where empty, so an
    # uncovered pixel in the box never lets a triangle be culled.
    stored = torch.where(hit, bits.view(torch.float32), torch.tensor(float("-inf"), device=device))
    i0, j0, h, w = (t[k].index_select(0, tri) for k in ("i0", "j0", "h", "w"))
    lut = torch.tensor(_FLOOR_LOG2_LUT, device=device)
    ok = (h <= _HIZ_MAX) & (w <= _HIZ_MAX)
    h, w = h.clamp_max(_HIZ_MAX), w.clamp_max(_HIZ_MAX)
    a, b = lut.index_select(0, h), lut.index_select(0, w)
    na = min(_HIZ_LEVELS, int(a.max()) + 1)
    nb = min(_HIZ_LEVELS, int(b.max()) + 1)
    # tables[ai * nb + bi] = min over rows [i, i + 2**ai) and columns [j, j + 2**bi), built in
    # place (a window running past the image keeps the in-image part; never looked up there).
    tables = stored.new_empty((na * nb, B, H, W))
    for ai in range(na):
        row = tables[ai * nb]
        if ai == 0:
            row.copy_(stored)
        else:
            d = 1 << (ai - 1)
            prev = tables[(ai - 1) * nb]
            torch.minimum(prev[:, :-d], prev[:, d:], out=row[:, :-d])
            row[:, -d:] = prev[:, -d:]
        for bi in range(1, nb):
            d = 1 << (bi - 1)
            prev, cur = tables[ai * nb + bi - 1], tables[ai * nb + bi]
            torch.minimum(prev[:, :, :-d], prev[:, :, d:], out=cur[:, :, :-d])
            cur[:, :, -d:] = prev[:, :, -d:]
    flat = tables.view(-1)
    base = (a * nb + b) * (B * H * W) + torch.div(tri, t["F"], rounding_mode="floor") * (H * W)
    r0, c0 = base + i0 * W, j0
    r1, c1 = r0 + (h - (1 << a)) * W, j0 + w - (1 << b)
    m = torch.minimum(torch.minimum(flat.index_select(0, r0 + c0), flat.index_select(0, r0 + c1)),
                      torch.minimum(flat.index_select(0, r1 + c0), flat.index_select(0, r1 + c1)))
    # Upper bound of the triangle's fragment 1/Z (see above); |A_k| = |dy_k|, |B_k| = |dx_k|.
    z = [t["z"][k].index_select(0, tri) for k in range(3)]
    tot = t["cross"].index_select(0, tri).abs().to(torch.float32)
    sa = ((t["dy"][0].index_select(0, tri).abs().to(torch.float32) / z[0]
           + t["dy"][1].index_select(0, tri).abs().to(torch.float32) / z[1])
          + t["dy"][2].index_select(0, tri).abs().to(torch.float32) / z[2]) / tot
    sb = ((t["dx"][0].index_select(0, tri).abs().to(torch.float32) / z[0]
           + t["dx"][1].index_select(0, tri).abs().to(torch.float32) / z[1])
          + t["dx"][2].index_select(0, tri).abs().to(torch.float32) / z[2]) / tot
    x0, y0 = t["X"][0].index_select(0, tri).long(), t["Y"][0].index_select(0, tri).long()
    dxm = torch.maximum((j0 * _SUB + _HALF - x0).abs(), ((j0 + w - 1) * _SUB + _HALF - x0).abs())
    dym = torch.maximum((i0 * _SUB + _HALF - y0).abs(), ((i0 + h - 1) * _SUB + _HALF - y0).abs())
    near = 1.0 / _min3(*z)
    err = _PLANE_REL_ERR * (near + sa * dxm.to(torch.float32) + sb * dym.to(torch.float32))
    bound = (near * (1 + _PLANE_REL_ERR) + err).clamp_min(0)
    return ok & (bound < m)


class _ZSink:
    """Collects (pixel, key) fragments and z-tests them in batches of bounded size: per pixel
    the minimum key (nearest, then smallest face index) stays in the z-buffer."""

    def __init__(self, zbuf: torch.Tensor, cap: int) -> None:
        self.zbuf, self.cap = zbuf, cap
        self.pix: list[torch.Tensor] = []
        self.key: list[torch.Tensor] = []
        self.count = 0

    def add(self, pix: torch.Tensor, key: torch.Tensor) -> None:
        self.pix.append(pix)
        self.key.append(key)
        self.count += pix.numel()
        if self.count >= self.cap:
            self.flush()

    def flush(self) -> None:
        if not self.pix:
            return
        pix = self.pix[0] if len(self.pix) == 1 else torch.cat(self.pix)
        key = self.key[0] if len(self.key) == 1 else torch.cat(self.key)
        self.pix, self.key, self.count = [], [], 0
        self.zbuf.scatter_reduce_(0, pix, key, reduce="amin", include_self=True)


def _grid_items(t: dict[str, torch.Tensor], tri: torch.Tensor, sink: _ZSink, H: int, W: int,
                cap: int) -> None:
    """Small boxes: test a fixed (2**lh x 2**lw) candidate grid per triangle, by size class."""
    if tri.numel() == 0:
        return
    device = tri.device
    i0, j0, h, w = (t[k].index_select(0, tri) for k in ("i0", "j0", "h", "w"))
    # Size classes: the longer side rounded up to 2**m, the shorter to 2**m or 2**(m-1).
    lut = torch.tensor(_LOG2_LUT, device=device)
    lw, lh = lut[w], lut[h]
    lm = torch.maximum(lw, lh)
    lw = torch.where(lw < lm, lm - 1, lm)
    lh = torch.where(lh < lm, lm - 1, lm)
    sw, sh = 1 << lw, 1 << lh
    # Normal items: shift the grid left/up so that it stays inside the image; its extra
    # pixels are then outside the triangle's box and fail the edge test, so no bounds mask is
    # needed. Special items (grid larger than the image, or edge values beyond int32) take a
    # masked int64 path.
    special = (sw > W) | (sh > H)
    j0 = torch.where(special, j0, torch.minimum(j0, W - sw).clamp_min(0))
    i0 = torch.where(special, i0, torch.minimum(i0, H - sh).clamp_min(0))
    # Edge functions relative to the grid's first pixel centre, biased by the fill-rule
    # threshold so that "inside" is simply e >= 0 on all three edges:
    # e_k(r, c) = A'_k c + B'_k r + C'_k with A' = A * SUB, B' = B * SUB.
    px0 = j0 * _SUB + _HALF
    py0 = i0 * _SUB + _HALF
    A = [t["A"][k].index_select(0, tri).long() for k in range(3)]
    Bc = [t["B"][k].index_select(0, tri).long() for k in range(3)]
    thr = [t["thr"][k].index_select(0, tri) for k in range(3)]
    C0 = [A[k] * px0 + Bc[k] * py0 + t["C"][k].index_select(0, tri) - thr[k] for k in range(3)]
    A = [a * _SUB for a in A]
    Bc = [b * _SUB for b in Bc]
    mag = [C0[k].abs() + A[k].abs() * (sw - 1) + Bc[k].abs() * (sh - 1) for k in range(3)]
    special = special | (_max3(*mag) >= _I32_SAFE)
    key = lw * _NBUCKET + lh + special * (_NBUCKET * _NBUCKET)
    counts = torch.bincount(key, minlength=2 * _NBUCKET * _NBUCKET).tolist()
    pix0 = t["base"].index_select(0, tri) + i0 * W + j0
    dx0 = px0 - t["x0"].index_select(0, tri)  # pixel-centre offset from vertex 0, for 1/Z
    dy0 = py0 - t["y0"].index_select(0, tri)
    ar = torch.arange(_GRID_MAX, device=device)
    one_class = sum(1 for c in counts if c) == 1
    for cls, n_c in enumerate(counts):
        if n_c == 0:
            continue
        is_special, rest = divmod(cls, _NBUCKET * _NBUCKET)
        lw_b, lh_b = divmod(rest, _NBUCKET)
        idx = None if one_class else (key == cls).nonzero().squeeze(1)

        def sel(x: torch.Tensor) -> torch.Tensor:
            return x if idx is None else x.index_select(0, idx)
        dtype = torch.int64 if is_special else torch.int32
        Ac = torch.stack([sel(x) for x in A]).to(dtype)  # (3, n_c)
        Bcc = torch.stack([sel(x) for x in Bc]).to(dtype)
        Cc = torch.stack([sel(x) for x in C0]).to(dtype)
        tri_c, pix0_c, dx0_c, dy0_c = sel(tri), sel(pix0), sel(dx0), sel(dy0)
        ga, gb, w0, face = (t[k].index_select(0, tri_c) for k in ("ga", "gb", "w0", "face"))
        w_c, h_c = (sel(w), sel(h)) if is_special else (None, None)
        cols, rows = ar[:1 << lw_b], ar[:1 << lh_b]
        offsets = (rows[:, None] * W + cols[None, :]).reshape(-1)
        per_chunk = max(1, cap >> (lw_b + lh_b))
        for s in range(0, n_c, per_chunk):
            e = min(s + per_chunk, n_c)
            if is_special:
                E = _grid_masked(Ac[:, s:e], Bcc[:, s:e], Cc[:, s:e], w_c[s:e], h_c[s:e], cols, rows)
            else:
                E = _grid(Ac[:, s:e], Bcc[:, s:e], Cc[:, s:e], cols, rows)
            m = E[0] | E[1]  # sign bit set iff some edge value is negative
            m |= E[2]
            # E is laid out (3, sh, sw, n); 2-D nonzero gives (r * sw + c, item) directly.
            nz = (m >= 0).view(-1, e - s).nonzero()
            if nz.shape[0] == 0:
                continue
            rc, item = nz[:, 0], nz[:, 1] + s
            # 1/Z plane at the pixel: dx, dy relative to the snapped vertex 0, exact integers.
            dx = dx0_c.index_select(0, item) + (rc & ((1 << lw_b) - 1)) * _SUB
            dy = dy0_c.index_select(0, item) + (rc >> lw_b) * _SUB
            invz = (w0.index_select(0, item) + gb.index_select(0, item) * dy.to(torch.float32)) \
                + ga.index_select(0, item) * dx.to(torch.float32)
            sink.add(pix0_c.index_select(0, item) + offsets.index_select(0, rc),
                     _zkey(invz, face.index_select(0, item)))


def _grid(A: torch.Tensor, Bc: torch.Tensor, C: torch.Tensor, cols: torch.Tensor,
          rows: torch.Tensor) -> torch.Tensor:
    """(3, sh, sw, n) biased edge values of n items' candidate grids, by broadcasting one
    per-column and one per-row term (no per-candidate gathers). Items are the innermost,
    contiguous dimension so the broadcast adds vectorise even for 1-pixel grids."""
    col = cols.to(A.dtype)[None, :, None] * A[:, None, :] + C[:, None, :]  # (3, sw, n)
    row = rows.to(A.dtype)[None, :, None] * Bc[:, None, :]  # (3, sh, n)
    return col[:, None, :, :] + row[:, :, None, :]


def _grid_masked(A: torch.Tensor, Bc: torch.Tensor, C: torch.Tensor, w: torch.Tensor,
                 h: torch.Tensor, cols: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Like :func:`_grid` in int64, with grid columns/rows beyond the item's box forced out
    (a sentinel below -max|term| that cannot overflow int64)."""
    col = cols[None, :, None] * A[:, None, :] + C[:, None, :]
    row = rows[None, :, None] * Bc[:, None, :]
    col[0] = torch.where(cols[:, None] < w[None, :], col[0], torch.full_like(col[0], _MASKED64))
    row[1] = torch.where(rows[:, None] < h[None, :], row[1], torch.full_like(row[1], _MASKED64))
    return col[:, None, :, :] + row[:, :, None, :]


def _span_items(t: dict[str, torch.Tensor], tri: torch.Tensor, sink: _ZSink, W: int, cap: int) -> None:
    """Larger boxes: exact per-row spans (scan conversion), then only inside pixels.

    On row i the biased edge function is affine in the column j: e_k(j) = a_k j + g_k with
    a_k = A_k * SUB, so "e_k >= 0" is j >= ceil(-g_k / a_k) (a_k > 0) or j <= floor(g_k / -a_k)
    (a_k < 0), computed with exact integer floor division.
    """
    if tri.numel() == 0:
        return
    device = tri.device
    h = t["h"].index_select(0, tri)
    R = int(h.sum())
    row_item = torch.repeat_interleave(torch.arange(tri.numel(), device=device), h, output_size=R)
    first = torch.repeat_interleave(torch.cumsum(h, 0) - h, h, output_size=R)
    ti_rows = tri.index_select(0, row_item)
    i_rows = t["i0"].index_select(0, ti_rows) + torch.arange(R, device=device) - first
    width = t["w"].index_select(0, ti_rows)
    # Chunks of rows whose boxes hold at most ~cap pixels (a row holds at most W).
    cum = torch.cumsum(width, 0)
    ends = torch.searchsorted(cum, torch.arange(cap, int(cum[-1]) + cap, cap, device=device), right=True)
    bounds = sorted(set([0] + [min(max(int(x), 1), R) for x in ends.tolist()] + [R]))
    for a, b in zip(bounds[:-1], bounds[1:]):
        ti = ti_rows[a:b]
        i = i_rows[a:b]
        lo = t["j0"].index_select(0, ti)
        hi = lo + width[a:b] - 1
        py = i * _SUB + _HALF
        for k in range(3):
            A = t["A"][k].index_select(0, ti).long()
            thr = t["thr"][k].index_select(0, ti)
            g = A * _HALF + t["B"][k].index_select(0, ti).long() * py + t["C"][k].index_select(0, ti) - thr
            s = A * _SUB
            d = torch.div(g, s.abs().clamp_min(1), rounding_mode="floor")
            lo = torch.where(s > 0, torch.maximum(lo, -d), lo)
            hi = torch.where(s < 0, torch.minimum(hi, d), hi)
            hi = torch.where((s == 0) & (g < 0), lo - 1, hi)
        cnt = (hi - lo + 1).clamp_min(0)
        N = int(cnt.sum())
        if N == 0:
            continue
        # Per row: 1/Z plane up to the column term, and the pixel index of column 0.
        row_invz = t["w0"].index_select(0, ti) + t["gb"].index_select(0, ti) \
            * (py - t["y0"].index_select(0, ti)).to(torch.float32)
        row_ga = t["ga"].index_select(0, ti)
        row_x0 = _HALF - t["x0"].index_select(0, ti)
        row_pix = t["base"].index_select(0, ti) + i * W
        row_face = t["face"].index_select(0, ti)
        prow = torch.repeat_interleave(torch.arange(b - a, device=device), cnt, output_size=N)
        j = torch.arange(N, device=device) + torch.repeat_interleave(lo - (torch.cumsum(cnt, 0) - cnt), cnt,
                                                                     output_size=N)
        dx = (j * _SUB + row_x0.index_select(0, prow)).to(torch.float32)
        invz = row_invz.index_select(0, prow) + row_ga.index_select(0, prow) * dx
        sink.add(row_pix.index_select(0, prow) + j, _zkey(invz, row_face.index_select(0, prow)))


def _winners(zbuf: torch.Tensor, t: dict[str, torch.Tensor], B: int, F: int, H: int, W: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Covered pixels of the z-buffer: (pix, face, batch, depth, [bary_0, bary_1, bary_2]), (N,)
    each, with depth and barycentrics recomputed exactly from the winners' integer edges."""
    pix = (zbuf != _KEY_EMPTY).nonzero().squeeze(1)
    f = zbuf.index_select(0, pix) & _LOW32
    b = torch.div(pix, H * W, rounding_mode="floor")
    rem = pix - b * (H * W)
    i = torch.div(rem, W, rounding_mode="floor")
    j = rem - i * W
    ti = t["row"].index_select(0, b * F + f)
    px = j * _SUB + _HALF
    py = i * _SUB + _HALF
    e = [t["A"][k].index_select(0, ti) * px + t["B"][k].index_select(0, ti) * py
         + t["C"][k].index_select(0, ti) for k in range(3)]
    z = [t["z"][k].index_select(0, ti) for k in range(3)]
    d, bc = _depth_and_bary(e, z, t["tot"].index_select(0, ti))
    return pix, f, b, d, bc


def _resolve(zbuf: torch.Tensor, t: dict[str, torch.Tensor], B: int, F: int, H: int, W: int
             ) -> Fragments:
    """Z-buffer keys -> face index, and depth/barycentrics recomputed exactly for the winners."""
    device = zbuf.device
    hit = zbuf != _KEY_EMPTY
    face_idx = torch.where(hit, zbuf & _LOW32, torch.full_like(zbuf, -1))
    depth = torch.full((B * H * W,), float("inf"), dtype=torch.float32, device=device)
    bary = torch.zeros((B * H * W, 3), dtype=torch.float32, device=device)
    if bool(hit.any()):
        pix, _, _, d, bc = _winners(zbuf, t, B, F, H, W)
        depth.index_copy_(0, pix, d)
        bary.index_copy_(0, pix, torch.stack(bc, 1))
    return Fragments(face_idx.view(B, H, W), bary.view(B, H, W, 3), depth.view(B, H, W))


@dataclass
class Visible:
    """The covered pixels of :class:`Fragments` as flat lists, structure-of-arrays.

    pix: (N,) flat index into B*H*W; batch: (N,) batch element; vid: three (N,) vertex ids of
    the visible triangle's corners; bary: three (N,) barycentric weights. Build once with
    :func:`visible` and share between interpolations.
    """

    pix: torch.Tensor
    batch: torch.Tensor
    vid: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    bary: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    shape: tuple[int, int, int]


def visible(fragments: Fragments, faces: torch.Tensor) -> Visible:
    fi = fragments.face_idx
    B, H, W = fi.shape
    flat = fi.reshape(-1)
    pix = (flat >= 0).nonzero().squeeze(1)
    f = flat.index_select(0, pix)
    faces = faces.to(device=fi.device, dtype=torch.int64)
    vid = tuple(faces[:, k].index_select(0, f) for k in range(3))
    batch = torch.div(pix, H * W, rounding_mode="floor") if B > 1 else torch.zeros_like(pix)
    bary = fragments.bary.reshape(-1, 3).index_select(0, pix)
    return Visible(pix, batch, vid, tuple(bary.unbind(1)), (B, H, W))


def interpolate(attrs: torch.Tensor, faces: torch.Tensor, fragments: Fragments,
                bary: torch.Tensor | None = None, *, channels_first: bool = False,
                vis: Visible | None = None) -> torch.Tensor:
    """Perspective-correct per-pixel interpolation of per-vertex attributes.

    attrs (B, V, C) or (V, C) -> (B, H, W, C), or (B, C, H, W) with ``channels_first``;
    background pixels are zero. Differentiable with respect to ``attrs`` (and to ``bary``
    when given, e.g. from :func:`differentiable_bary`). Work is proportional to the covered
    pixels only; pass ``vis`` (from :func:`visible`) to share that set-up between calls.
    """
    vis = vis if vis is not None else visible(fragments, faces)
    if bary is not None:
        b = bary.reshape(-1, 3).index_select(0, vis.pix)
        vis = Visible(vis.pix, vis.batch, vis.vid, tuple(b.unbind(1)), vis.shape)
    return scatter_visible(interpolate_visible(attrs, vis), vis, channels_first=channels_first)


def interpolate_visible(attrs: torch.Tensor, vis: Visible) -> torch.Tensor:
    """Interpolated attributes of the covered pixels only, channels first: (C, N).

    Channels-first keeps the N pixels innermost, so the gathers and the weighting vectorise.
    """
    B = vis.shape[0]
    if attrs.dim() == 2:
        table, gid = attrs.t(), vis.vid
    else:
        if attrs.shape[0] != B:
            raise ValueError(f"attrs batch {attrs.shape[0]} != fragments batch {B}")
        V = attrs.shape[1]
        table = attrs.reshape(B * V, -1).t()
        off = vis.batch * V
        gid = tuple(v + off for v in vis.vid)
    table = table.contiguous()  # (C, V or B*V)
    w = [b.to(table.dtype) for b in vis.bary]
    vals = table.index_select(1, gid[0]) * w[0]
    vals = vals + table.index_select(1, gid[1]) * w[1]
    return vals + table.index_select(1, gid[2]) * w[2]


def scatter_visible(vals: torch.Tensor, vis: Visible, *, channels_first: bool = False) -> torch.Tensor:
    """(C, N) per covered pixel -> (B, H, W, C) (or (B, C, H, W)) image, zero elsewhere."""
    B, H, W = vis.shape
    C = vals.shape[0]
    HW = H * W
    if channels_first and not vals.requires_grad:
        # Column copies per batch element (pix is sorted, so each element is one segment).
        out = vals.new_zeros(B, C, HW)
        if B == 1:
            out[0].index_copy_(1, vis.pix, vals)
        else:
            seg = torch.searchsorted(vis.pix, torch.arange(B + 1, device=vals.device) * HW).tolist()
            for b in range(B):
                if seg[b + 1] > seg[b]:
                    out[b].index_copy_(1, vis.pix[seg[b]:seg[b + 1]] - b * HW, vals[:, seg[b]:seg[b + 1]])
        return out.view(B, C, H, W)
    if channels_first:
        # Flat destination (b * C + c) * HW + hw = pix + b * (C - 1) * HW + c * HW.
        base = vis.pix + vis.batch * ((C - 1) * HW) if B > 1 else vis.pix
        idx = (base[None, :] + (torch.arange(C, device=vals.device) * HW)[:, None]).reshape(-1)
        out, src, shape = vals.new_zeros(B * C * HW), vals.reshape(-1), (B, C, H, W)
    else:
        idx, out, src, shape = vis.pix, vals.new_zeros(B * H * W, C), vals.t(), (B, H, W, C)
    # In place unless autograd must see the copy (the out-of-place form clones the zeros).
    out = out.index_copy(0, idx, src) if src.requires_grad else out.index_copy_(0, idx, src)
    return out.view(shape)


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

    Integer edge functions use Python ints; the z-test's 1/Z plane and the output depth and
    barycentrics use numpy float32 scalars in the same operation order as the vectorised path,
    so results are expected to be identical. Slow: for tests on small images only.
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
    best = np.full((B, H, W), np.iinfo(np.int64).max, np.int64)  # z-test keys
    f32 = np.float32

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
            # 1/Z = 1/Z_0 + ga (p.x - x_0) + gb (p.y - y_0), with ga = sum_k A_k / Z_k / tot
            # where e_k = A_k p.x + B_k p.y + C_k, A_k = -sg (b.y - a.y), B_k = sg (b.x - a.x).
            tot = f32(np.int64(abs(area)))
            Ak = [f32(-sg * (b[1] - a[1])) for a, b in edges]
            Bk = [f32(sg * (b[0] - a[0])) for a, b in edges]
            ga = ((Ak[0] / zv[0] + Ak[1] / zv[1]) + Ak[2] / zv[2]) / tot
            gb = ((Bk[0] / zv[0] + Bk[1] / zv[1]) + Bk[2] / zv[2]) / tot
            w0 = f32(1.0) / zv[0]
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
                    invz = (w0 + gb * f32(p[1] - v[0][1])) + ga * f32(p[0] - v[0][0])
                    bits = int(np.array(max(invz, f32(0)), np.float32).view(np.int32))
                    key = ((_INF_BITS - bits) << 32) | f
                    if key < best[bi, i, j]:
                        best[bi, i, j] = key
                        q = [f32(np.int64(ek)) / zk for ek, zk in zip(e, zv)]
                        s = (q[0] + q[1]) + q[2]
                        depth[bi, i, j] = tot / s
                        face_idx[bi, i, j] = f
                        bary[bi, i, j] = [q[0] / s, q[1] / s, q[2] / s]
    dev = verts_cam.device
    return Fragments(torch.from_numpy(face_idx).to(dev), torch.from_numpy(bary).to(dev),
                     torch.from_numpy(depth).to(dev))
