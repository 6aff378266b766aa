"""Conditioning maps: the fitted face mesh rendered into per-pixel inputs for the neural renderer.

Rendering a tracked 3D face model into screen-aligned maps and letting an image-to-image
network translate them into the actor's photo is the deferred-neural-rendering idea
(Thies et al. 2019, "Deferred Neural Rendering"; Kim et al. 2018, "Deep Video Portraits",
which also feeds correspondence + geometry maps). The maps here:

* ``canonical`` (3): neutral-shape coordinates of the visible surface point (a dense
  correspondence code, stable under expression and pose: "which point of the face is this").
* ``normal`` (3): unit camera-space normal (area-weighted vertex normals, interpolated).
* ``depth`` (1): camera Z; ``depth_norm`` (1): ``(Z - Z_ref) / scale`` (distance-invariant).
* ``uv`` (2): texture coordinates (the neural texture lookup of Thies et al.).
* ``mask_face`` (1): any model surface visible; ``mask_mouth`` (1): mouth interior / teeth.
* ``region`` (num_regions): one-hot region codes; ``region_id`` (1, int64): the code, -1 off-mesh.

Every map is (B, C, H, W) (the float maps are channel slices of one buffer: concatenate with
:func:`stack_conditioning`); background is 0 (``region_id``: -1). Region lookups take, per
pixel, the region of the triangle vertex with the largest barycentric weight (crisp borders
in mid-triangle). Rendering is for one square crop whose intrinsics :func:`crop_intrinsics`
builds from the plate camera and the plate->crop similarity.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.errors import ConfigError
from engine.face.raster import (Fragments, Visible, interpolate_visible, rasterize_visible, scatter_visible,
                                visible)

# Region codes shared with the FaceModel's ``Region`` IntEnum (engine/face/model.py):
# OTHER=0, SKIN=1, LIPS=2, MOUTH_INTERIOR=3 (teeth, gums, tongue, cavity), EYES=4, HEAD=5.
# (Plain ints here so that rendering does not depend on the model module.)
REGION_MOUTH_INTERIOR = 3

MAP_CHANNELS: dict[str, int | None] = {
    "canonical": 3, "normal": 3, "depth": 1, "depth_norm": 1, "uv": 2,
    "mask_face": 1, "mask_mouth": 1, "region": None, "region_id": 1,
}
DEFAULT_MAPS = ("canonical", "normal", "depth", "depth_norm", "uv", "mask_face", "mask_mouth",
                "region")


@dataclass
class ConditioningConfig:
    """Which maps to render, and how.

    size: the square crop's side in pixels. maps: names from ``MAP_CHANNELS``.
    num_regions: channels of the one-hot ``region`` map (region codes must be below it).
    mouth_regions: region codes that make up ``mask_mouth``.
    depth_scale: model units per unit of ``depth_norm``; None = the mesh's RMS radius per frame.
    cull_backfaces: drop back faces (only safe for a mesh whose every visible part is
    outward-wound; the mouth cavity seen from inside is not, hence off by default).
    """

    size: int = 256
    maps: tuple[str, ...] = DEFAULT_MAPS
    num_regions: int = 8
    mouth_regions: tuple[int, ...] = (REGION_MOUTH_INTERIOR,)
    depth_scale: float | None = None
    cull_backfaces: bool = False
    near: float = 1e-3
    # Exact occlusion culling for dense meshes (ICT: ~40k triangles, about a third of them
    # mouth socket, teeth and eyeball backs that are nearly always hidden): triangles whose
    # three vertices are in these regions are drawn first (front faces only), and every other
    # triangle is drawn unless that z-buffer provably hides it. The maps are bit-identical
    # either way (see engine.face.raster._hidden); meshes with fewer than
    # ``occlusion_min_faces`` triangles skip it (the test costs more than it saves there).
    occluder_regions: tuple[int, ...] = (1, 2, 4)  # SKIN, LIPS, EYES
    occlusion_min_faces: int = 8192

    def validate(self) -> None:
        unknown = [m for m in self.maps if m not in MAP_CHANNELS]
        if unknown:
            raise ConfigError(f"unknown conditioning map(s) {unknown}; known: {sorted(MAP_CHANNELS)}")
        if self.size <= 0 or self.num_regions <= 0:
            raise ConfigError(f"conditioning size and num_regions must be positive "
                              f"(got size={self.size}, num_regions={self.num_regions})")
        if self.depth_scale is not None and not self.depth_scale > 0:
            raise ConfigError(f"conditioning depth_scale must be positive, got {self.depth_scale}")

    def channels(self, keys: tuple[str, ...] | None = None) -> int:
        """Channel count of :func:`stack_conditioning` over ``keys`` (default: all maps)."""
        keys = self.maps if keys is None else keys
        return sum(self.num_regions if MAP_CHANNELS[k] is None else MAP_CHANNELS[k] for k in keys)


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Area-weighted unit vertex normals, (B, V, 3) -> (B, V, 3).

    The face normal ``(v1-v0) x (v2-v0)`` has length twice the area, so summing it onto the
    three corners weights by area. Outward for counter-clockwise (outside view) winding.
    Vertices on no triangle get a zero normal.
    """
    faces = faces.to(device=verts.device, dtype=torch.int64)
    v0, v1, v2 = (verts.index_select(1, faces[:, k]) for k in range(3))
    a, b = v1 - v0, v2 - v0
    fn = torch.stack([a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1],
                      a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
                      a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]], -1)  # (B, F, 3)
    B, V = verts.shape[:2]
    # Flat 1-D index_add (fast path) of each face normal onto its three corners' x, y, z.
    off = (torch.arange(B, device=verts.device) * V)[:, None, None]
    comp = torch.arange(3, device=verts.device)
    src = fn.reshape(-1)
    vn = torch.zeros(B * V * 3, dtype=verts.dtype, device=verts.device)
    for k in range(3):
        vn.index_add_(0, ((faces[:, k][None, :, None] + off) * 3 + comp).reshape(-1), src)
    vn = vn.view(B, V, 3)
    length = (vn[..., 0] * vn[..., 0] + vn[..., 1] * vn[..., 1] + vn[..., 2] * vn[..., 2]).sqrt()
    return vn / length.clamp_min(eps)[..., None]


def normalise_canonical(neutral: torch.Tensor) -> torch.Tensor:
    """Map neutral-shape positions (V, 3) into the unit box [-1, 1]^3, preserving aspect.

    Centred on the bounding-box centre and scaled by the largest half-extent, so one model
    always gets the same code (the conditioning's ``canonical_verts``).
    """
    lo = neutral.amin(0)
    hi = neutral.amax(0)
    half = ((hi - lo) / 2).amax().clamp_min(1e-12)
    return (neutral - (hi + lo) / 2) / half


def crop_intrinsics(K_plate: torch.Tensor, affine_2x3: torch.Tensor) -> torch.Tensor:
    """Intrinsics of a crop: ``[[A], [0, 0, 1]] @ K_plate``, (..., 3, 3).

    ``affine_2x3`` (..., 2, 3) maps continuous plate pixel coordinates (u, v) to crop
    coordinates under the engine convention (pixel centres at +0.5 in both images; use
    :func:`affine_cv2_to_engine` for a matrix in OpenCV's integer-centre convention). Since
    projection is ``K @ X`` up to the division by Z, composing the affine into K is exact;
    the result generally has an in-plane rotation (``K[0, 1] != 0``), which
    :func:`engine.face.raster.project_points` and the rasteriser handle.
    """
    K_plate = torch.as_tensor(K_plate)
    A = torch.as_tensor(affine_2x3, dtype=K_plate.dtype, device=K_plate.device)
    last = torch.zeros(*A.shape[:-2], 1, 3, dtype=A.dtype, device=A.device)
    last[..., 0, 2] = 1
    return torch.cat([A, last], -2) @ K_plate


def affine_cv2_to_engine(M_cv: torch.Tensor) -> torch.Tensor:
    """OpenCV-convention affine (pixel centres at integers) -> engine convention (+0.5).

    With ``u = x + 0.5``: ``u' = L u + t'`` where ``t' = t + 0.5 - L @ [0.5, 0.5]``.
    """
    M_cv = torch.as_tensor(M_cv)
    L = M_cv[..., :2, :2]
    t = M_cv[..., :2, 2] + 0.5 - (L @ torch.full_like(M_cv[..., :2, 2:], 0.5))[..., 0]
    return torch.cat([L, t[..., None]], -1)


def affine_engine_to_cv2(M: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`affine_cv2_to_engine`, e.g. to warp the plate with cv2.warpAffine."""
    M = torch.as_tensor(M)
    L = M[..., :2, :2]
    t = M[..., :2, 2] - 0.5 + (L @ torch.full_like(M[..., :2, 2:], 0.5))[..., 0]
    return torch.cat([L, t[..., None]], -1)


def render_conditioning(verts_cam: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, *,
                        canonical_verts: torch.Tensor, uv: torch.Tensor,
                        vertex_region: torch.Tensor, config: ConditioningConfig | None = None,
                        fragments: Fragments | None = None) -> dict[str, torch.Tensor]:
    """Render the conditioning maps of ``config.maps`` for a batch of posed meshes.

    verts_cam (B, V, 3) camera space; faces (F, 3); K (3, 3) or (B, 3, 3) the *crop*
    intrinsics (:func:`crop_intrinsics`); canonical_verts (V, 3) (see
    :func:`normalise_canonical`); uv (V, 2); vertex_region (V,) integer codes. Pass
    ``fragments`` to reuse a rasterisation of the same inputs. Returns name -> (B, C, S, S).
    """
    cfg = config or ConditioningConfig()
    cfg.validate()
    device = verts_cam.device
    B, V, _ = verts_cam.shape
    faces = faces.to(device=device, dtype=torch.int64)
    S = cfg.size
    maps = cfg.maps
    if fragments is None:
        occluders = None
        if faces.shape[0] >= cfg.occlusion_min_faces and cfg.occluder_regions:
            corner = vertex_region.to(device=device, dtype=torch.int64)[faces]  # (F, 3)
            occ = torch.zeros_like(corner, dtype=torch.bool)
            for code in cfg.occluder_regions:
                occ |= corner == code
            occluders = occ.all(1)
        # Only the covered pixels are needed: skip the full-size fragment images.
        vis, depth_vis = rasterize_visible(verts_cam, faces, K, S, S, cull_backfaces=cfg.cull_backfaces,
                                           near=cfg.near, occluders=occluders)
    elif fragments.face_idx.shape != (B, S, S):
        raise ValueError(f"fragments are {tuple(fragments.face_idx.shape)}, expected {(B, S, S)}")
    else:
        vis = visible(fragments, faces)
        depth_vis = fragments.depth.reshape(-1).index_select(0, vis.pix)
    dtype = verts_cam.dtype
    if "region" in maps and V and int(vertex_region.max()) >= cfg.num_regions:
        raise ConfigError(f"face model has region code {int(vertex_region.max())} but the "
                          f"conditioning config has num_regions={cfg.num_regions}")
    N = vis.pix.shape[0]

    # Every map's values at the covered pixels, channels first (C, N), then ONE scatter into
    # a zeroed (B, C_total, H, W) buffer whose channel slices are the maps (writing each
    # full-size map separately costs several passes over mostly-background memory).
    attrs: list[torch.Tensor] = []
    slots: dict[str, slice] = {}
    for name, a in (("canonical", canonical_verts), ("normal", None), ("uv", uv)):
        if name not in maps:
            continue
        a = _visible_vertex_normals(verts_cam, faces, vis) if name == "normal" \
            else a.to(device=device, dtype=dtype)
        c0 = sum(x.shape[-1] for x in attrs)
        attrs.append(a if a.dim() == 3 else a.expand(B, *a.shape))
        slots[name] = slice(c0, c0 + a.shape[-1])
    cols: dict[str, torch.Tensor] = {}
    if attrs:
        vals = interpolate_visible(torch.cat(attrs, -1), vis)
        for name, sl in slots.items():
            cols[name] = vals[sl]
        if "normal" in cols:
            n = cols["normal"]
            length = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt()
            cols["normal"] = n / length.clamp_min(1e-12)
    if "depth" in maps or "depth_norm" in maps:
        depth = depth_vis.to(dtype)[None]
        cols["depth"] = depth
        if "depth_norm" in maps:
            centroid = verts_cam.mean(1)  # (B, 3)
            if cfg.depth_scale is None:
                scale = (verts_cam - centroid[:, None]).pow(2).sum(-1).mean(1).sqrt().clamp_min(1e-12)
            else:
                scale = torch.full((B,), float(cfg.depth_scale), device=device, dtype=dtype)
            cols["depth_norm"] = (depth - centroid[:, 2].index_select(0, vis.batch)) \
                / scale.index_select(0, vis.batch)
    if "mask_face" in maps:
        cols["mask_face"] = torch.ones(1, N, device=device, dtype=dtype)
    region = None
    if any(m in maps for m in ("region", "region_id", "mask_mouth")):
        region = _region_ids(vertex_region.to(device), vis)  # (N,) int64
        if "mask_mouth" in maps:
            mouth = torch.zeros_like(region, dtype=torch.bool)
            for code in cfg.mouth_regions:
                mouth |= region == code
            cols["mask_mouth"] = mouth.to(dtype)[None]
        if "region" in maps:
            cols["region"] = (torch.arange(cfg.num_regions, device=device)[:, None] == region).to(dtype)
    float_maps = [m for m in maps if m != "region_id"]
    out: dict[str, torch.Tensor] = {}
    if float_maps:
        buf = scatter_visible(torch.cat([cols[m] for m in float_maps], 0), vis, channels_first=True)
        c0 = 0
        for m in float_maps:
            c = cols[m].shape[0]
            out[m] = buf[:, c0:c0 + c]
            c0 += c
    if "region_id" in maps:
        out["region_id"] = torch.full((B * S * S,), -1, dtype=torch.int64, device=device).index_copy_(
            0, vis.pix, region).view(B, 1, S, S)
    return {m: out[m] for m in maps}


def _visible_vertex_normals(verts: torch.Tensor, faces: torch.Tensor, vis: Visible) -> torch.Tensor:
    """:func:`vertex_normals` at the corners of the visible triangles (zero elsewhere).

    Only the triangles touching such a vertex contribute, in their original order, so those
    normals are bit-identical to the full computation at a fraction of its cost on a dense
    mesh whose visible part is small (ICT: about a third of the triangles are needed).
    """
    B, V = verts.shape[:2]
    if vis.pix.numel() == 0 or faces.shape[0] == 0:
        return torch.zeros_like(verts)
    need = torch.zeros(V, dtype=torch.bool, device=verts.device)
    for v in vis.vid:
        need[v] = True
    used = need[faces].any(1)
    if bool(used.all()):
        return vertex_normals(verts, faces)
    return vertex_normals(verts, faces[used])


def _region_ids(vertex_region: torch.Tensor, vis: Visible) -> torch.Tensor:
    """(N,) int64 region code per covered pixel: that of the triangle vertex with the largest
    barycentric weight (the nearest corner; the first on ties)."""
    b0, b1, b2 = vis.bary
    v0, v1, v2 = vis.vid
    v = torch.where(b1 > b0, v1, v0)
    v = torch.where(b2 > torch.maximum(b0, b1), v2, v)
    return vertex_region.to(torch.int64).index_select(0, v)


def stack_conditioning(maps: dict[str, torch.Tensor], keys: tuple[str, ...] | list[str]) -> torch.Tensor:
    """Concatenate the named maps along channels into one float (B, C, H, W) network input."""
    missing = [k for k in keys if k not in maps]
    if missing:
        raise ConfigError(f"conditioning map(s) {missing} were not rendered; have {sorted(maps)}")
    return torch.cat([maps[k].float() for k in keys], 1)
