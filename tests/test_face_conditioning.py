"""Conditioning maps on synthetic meshes with analytic answers; crop intrinsics."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from engine.errors import ConfigError
from engine.face.camera import axis_angle_to_matrix
from engine.face.conditioning import (ConditioningConfig, affine_cv2_to_engine, affine_engine_to_cv2,
                                      crop_intrinsics, normalise_canonical, render_conditioning,
                                      stack_conditioning, vertex_normals)
from engine.face.raster import project_points, rasterize

SKIN, LIPS, MOUTH, EYES, OTHER = 1, 2, 3, 4, 0


def icosphere(subdiv: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = (1 + 5 ** 0.5) / 2
    verts = [torch.tensor(p, dtype=torch.float64) for p in
             [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t],
              [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]]]
    verts = [v / v.norm() for v in verts]
    f = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4],
         [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8],
         [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]]
    for _ in range(subdiv):
        cache: dict[tuple[int, int], int] = {}

        def mid(a: int, b: int) -> int:
            key = (min(a, b), max(a, b))
            if key not in cache:
                m = verts[a] + verts[b]
                verts.append(m / m.norm())
                cache[key] = len(verts) - 1
            return cache[key]
        f = [g for a, b, c in f for g in
             ([a, mid(a, b), mid(c, a)], [b, mid(b, c), mid(a, b)], [c, mid(c, a), mid(b, c)],
              [mid(a, b), mid(b, c), mid(c, a)])]
    v = torch.stack(verts).float()
    faces = torch.tensor(f)
    v0, v1, v2 = (v[faces[:, k]] for k in range(3))
    flip = (torch.linalg.cross(v1 - v0, v2 - v0, dim=-1) * v0).sum(-1) < 0
    faces[flip] = faces[flip][:, [0, 2, 1]]
    return v, faces


def sphere_regions(v: torch.Tensor) -> torch.Tensor:
    """Model space: the face looks along -Z (towards a camera at the origin with identity pose)."""
    reg = torch.full((v.shape[0],), SKIN, dtype=torch.uint8)
    reg[v[:, 2] > 0.2] = OTHER  # back of the head
    reg[(v[:, 2] < -0.6) & (v[:, 1] > 0.35)] = MOUTH  # lower front cap (+Y is down)
    reg[(v[:, 2] < -0.6) & (v[:, 1] < -0.35)] = EYES
    return reg


def sphere_scene(batch_poses: list[tuple[list[float], list[float]]], subdiv: int = 3):
    v, f = icosphere(subdiv)
    verts = []
    for aa, t in batch_poses:
        R = axis_angle_to_matrix(torch.tensor(aa))
        verts.append(v @ R.T + torch.tensor(t))
    return v, f, torch.stack(verts)


def pixel_rays(K: torch.Tensor, S: int) -> torch.Tensor:
    ii, jj = torch.meshgrid(torch.arange(S) + 0.5, torch.arange(S) + 0.5, indexing="ij")
    pix = torch.stack([jj, ii, torch.ones_like(ii)], -1).double()
    return pix @ torch.linalg.inv(K.double()).T  # rays with z = 1


def test_sphere_maps_match_analytic_geometry() -> None:
    S = 64
    K = torch.tensor([[120.0, 0, 32.0], [0, 120.0, 32.0], [0, 0, 1]])
    centre = torch.tensor([0.0, 0.0, 5.0])
    v, f, verts = sphere_scene([([0.0, 0.0, 0.0], centre.tolist())])
    maps = render_conditioning(verts, f, K, canonical_verts=normalise_canonical(v), uv=v[:, :2] * 0.5 + 0.5,
                               vertex_region=sphere_regions(v),
                               config=ConditioningConfig(size=S, maps=("canonical", "normal", "depth",
                                                                       "depth_norm", "uv", "mask_face",
                                                                       "mask_mouth", "region", "region_id")))
    for k, m in maps.items():
        assert m.shape[0] == 1 and m.shape[-2:] == (S, S), k
    # Analytic ray/sphere intersection (unit sphere at `centre`).
    d = pixel_rays(K, S)
    c = centre.double()
    b = (d * c).sum(-1)
    disc = b * b - (d * d).sum(-1) * ((c * c).sum() - 1)
    hit = disc > 0
    tz = (b - disc.clamp_min(0).sqrt()) / (d * d).sum(-1)  # z of the near hit (ray z = 1)
    P = d * tz[..., None]
    # Polygonal sphere (chord error < 1%): compare away from the silhouette.
    core = hit & ((P - c).mul(torch.tensor([0, 0, 1.0], dtype=torch.float64)).sum(-1) < -0.5)
    mask = maps["mask_face"][0, 0] > 0
    assert core.sum() > 300
    assert mask[core].all()
    assert not mask[~hit & (disc < -0.05)].any()
    depth = maps["depth"][0, 0].double()
    torch.testing.assert_close(depth[core], tz[core], atol=0.02, rtol=0)
    assert (depth[~mask] == 0).all()
    # Normals: unit, towards the camera on the front, close to the analytic sphere normal.
    n = maps["normal"][0].permute(1, 2, 0).double()
    torch.testing.assert_close(n[mask].norm(dim=-1), torch.ones(int(mask.sum()), dtype=torch.float64),
                               atol=1e-5, rtol=0)
    assert (n[mask][:, 2] < 0).all()
    assert ((n[core] * (P[core] - c)).sum(-1) > 0.99).all()
    assert (n[~mask] == 0).all()
    # Canonical = model-space position of the visible point (identity rotation; unit sphere).
    can = maps["canonical"][0].permute(1, 2, 0).double()
    torch.testing.assert_close(can[core], (P - c)[core] / (P - c)[core].norm(dim=-1, keepdim=True),
                               atol=0.03, rtol=0)
    # depth_norm: (Z - mean vertex Z) / RMS radius = (Z - 5) / 1 for a unit sphere.
    torch.testing.assert_close(maps["depth_norm"][0, 0].double()[core], tz[core] - 5.0, atol=0.02, rtol=0)
    # Regions: mouth cap below the centre, eyes above, skin elsewhere on the front.
    rid = maps["region_id"][0, 0]
    assert rid.dtype == torch.int64 and (rid[~mask] == -1).all()
    canz, cany = can[..., 2], can[..., 1]
    sure_mouth = core & (canz < -0.7) & (cany > 0.45)
    sure_eyes = core & (canz < -0.7) & (cany < -0.45)
    sure_skin = core & (cany.abs() < 0.25)
    assert sure_mouth.sum() > 10 and sure_eyes.sum() > 10 and sure_skin.sum() > 10
    assert (rid[sure_mouth] == MOUTH).all() and (rid[sure_eyes] == EYES).all() and (rid[sure_skin] == SKIN).all()
    mouth = maps["mask_mouth"][0, 0] > 0
    assert torch.equal(mouth, rid == MOUTH)
    onehot = maps["region"][0]
    assert onehot.shape[0] == 8
    assert torch.equal(onehot.sum(0), mask.float())
    assert torch.equal(onehot.argmax(0)[mask], rid[mask])
    # uv = affine in model x, y.
    uv = maps["uv"][0].permute(1, 2, 0).double()
    torch.testing.assert_close(uv[core], ((P - c)[core][:, :2] / (P - c)[core].norm(dim=-1, keepdim=True))
                               * 0.5 + 0.5, atol=0.02, rtol=0)


def test_uv_interpolation_is_exact_for_affine_uv_on_a_plane() -> None:
    S = 48
    K = torch.tensor([[60.0, 0, 24.0], [0, 60.0, 24.0], [0, 0, 1]])
    n = 2  # few, large triangles: perspective effects are large within each
    a, b = torch.meshgrid(torch.linspace(-1, 1, n + 1), torch.linspace(-1, 1, n + 1), indexing="xy")
    model = torch.stack([a, b, torch.zeros_like(a)], -1).reshape(-1, 3)
    faces = []
    for r in range(n):
        for q in range(n):
            p = r * (n + 1) + q
            faces += [[p, p + n + 2, p + 1], [p, p + n + 1, p + n + 2]]
    faces = torch.tensor(faces)
    uv = torch.stack([0.3 * model[:, 0] + 0.1 * model[:, 1] + 0.5, -0.2 * model[:, 0] + 0.35 * model[:, 1] + 0.45], -1)
    R = axis_angle_to_matrix(torch.tensor([0.5, -0.4, 0.1]))  # strongly slanted: perspective matters
    t = torch.tensor([0.1, -0.1, 3.0])
    verts = (model @ R.T + t)[None]
    maps = render_conditioning(verts, faces, K, canonical_verts=model, uv=uv,
                               vertex_region=torch.ones(model.shape[0], dtype=torch.uint8),
                               config=ConditioningConfig(size=S, maps=("uv", "mask_face", "canonical")))
    m = maps["mask_face"][0, 0] > 0
    assert m.sum() > 400
    # Ray / plane intersection -> model coordinates -> affine uv.
    d = pixel_rays(K, S)
    nrm = R[:, 2].double()
    tz = (nrm @ t.double()) / (d @ nrm)
    X = (d * tz[..., None] - t.double()) @ R.double()  # model coords
    uv_true = torch.stack([0.3 * X[..., 0] + 0.1 * X[..., 1] + 0.5, -0.2 * X[..., 0] + 0.35 * X[..., 1] + 0.45], -1)
    got = maps["uv"][0].permute(1, 2, 0).double()
    # Only fixed-point vertex snapping (<= 1/512 px) separates them.
    torch.testing.assert_close(got[m], uv_true[m], atol=2e-4, rtol=0)
    torch.testing.assert_close(maps["canonical"][0].permute(1, 2, 0).double()[m][:, :2], X[m][:, :2],
                               atol=5e-4, rtol=0)
    # Screen-space (non perspective-correct) interpolation would be far off on this slanted
    # plane, so the check above can tell: b_k ~ beta_k * Z_k recovers screen barycentrics.
    fr = rasterize(verts, faces, K, S, S)
    vid = faces[fr.face_idx[0].clamp_min(0)]
    zk = verts[0, :, 2][vid]
    b = fr.bary[0] * zk
    b = b / b.sum(-1, keepdim=True).clamp_min(1e-12)
    uv_affine = (uv[vid] * b[..., None]).sum(-2).double()
    assert (uv_affine[m] - uv_true[m]).abs().max() > 50 * 2e-4


def test_batch_of_two_equals_two_batches_of_one() -> None:
    poses = [([0.1, 0.3, 0.0], [0.05, 0.0, 4.0]), ([-0.2, -0.5, 0.2], [-0.1, 0.1, 5.0])]
    v, f, verts = sphere_scene(poses, subdiv=2)
    Ks = torch.stack([torch.tensor([[80.0, 0, 20.0], [0, 80.0, 21.0], [0, 0, 1]]),
                      torch.tensor([[95.0, 3.0, 18.0], [-3.0, 95.0, 19.0], [0, 0, 1]])])
    kw = dict(canonical_verts=normalise_canonical(v), uv=v[:, :2] * 0.5 + 0.5, vertex_region=sphere_regions(v),
              config=ConditioningConfig(size=40, maps=("canonical", "normal", "depth", "depth_norm", "uv",
                                                       "mask_face", "mask_mouth", "region", "region_id")))
    both = render_conditioning(verts, f, Ks, **kw)
    for b in range(2):
        one = render_conditioning(verts[b:b + 1], f, Ks[b], **kw)
        for k in both:
            assert torch.equal(both[k][b:b + 1], one[k]), k
    assert not torch.equal(both["depth"][0], both["depth"][1])


def test_occlusion_culling_gives_identical_maps() -> None:
    """Occlusion culling (occluder regions first, hidden triangles dropped) and the visible-only
    vertex normals are exact: every map equals the plain render, bit for bit."""
    poses = [([0.1, 0.3, 0.0], [0.05, 0.0, 4.0]), ([-0.2, -0.5, 0.2], [-0.1, 0.1, 5.0])]
    v, f, verts = sphere_scene(poses, subdiv=3)
    # Hidden interior geometry: a smaller copy inside, tagged as mouth interior.
    inner = verts * 0.0 + (verts - verts.mean(1, keepdim=True)) * 0.7 + verts.mean(1, keepdim=True)
    verts2 = torch.cat([verts, inner], 1)
    f2 = torch.cat([f, f + v.shape[0]])
    reg = torch.cat([sphere_regions(v), torch.full((v.shape[0],), MOUTH, dtype=torch.uint8)])
    canon = normalise_canonical(torch.cat([v, v * 0.7]))
    uv = torch.cat([v[:, :2], v[:, :2] * 0.5]) * 0.5 + 0.5
    K = torch.tensor([[70.0, 0, 24.0], [0, 70.0, 23.0], [0, 0, 1]])
    maps = ("canonical", "normal", "depth", "depth_norm", "uv", "mask_face", "mask_mouth", "region", "region_id")
    plain = render_conditioning(verts2, f2, K, canonical_verts=canon, uv=uv, vertex_region=reg,
                                config=ConditioningConfig(size=48, maps=maps, occluder_regions=()))
    culled = render_conditioning(verts2, f2, K, canonical_verts=canon, uv=uv, vertex_region=reg,
                                 config=ConditioningConfig(size=48, maps=maps, occlusion_min_faces=0))
    for k in maps:
        assert torch.equal(plain[k], culled[k]), k
    # The full normals agree with the visible-only ones wherever the face is drawn.
    n_full = vertex_normals(verts2, f2)
    fr = rasterize(verts2, f2, K, 48, 48)
    from engine.face.raster import interpolate
    ref = interpolate(n_full, f2, fr, channels_first=True)
    ref = ref / ref.norm(dim=1, keepdim=True).clamp_min(1e-12)
    assert torch.equal(ref, plain["normal"])
    assert plain["mask_face"].sum() > 500


def test_vertex_normals_are_area_weighted() -> None:
    # Vertex 0 shared by a big triangle in the z=0 plane and a small one in the x=0 plane.
    verts = torch.tensor([[[0.0, 0, 0], [4, 0, 0], [0, 4, 0], [0, 0, 1], [0, -1, 0]]])
    faces = torch.tensor([[0, 1, 2], [0, 3, 4]])
    n = vertex_normals(verts, faces)[0]
    big = torch.tensor([0.0, 0, 16])  # 2 * area 8, along +z
    small = torch.linalg.cross(verts[0, 3] - verts[0, 0], verts[0, 4] - verts[0, 0])  # 2 * area 0.5
    expect = (big + small) / (big + small).norm()
    torch.testing.assert_close(n[0], expect)
    torch.testing.assert_close(n[1], torch.tensor([0.0, 0, 1]))
    v, f = icosphere(2)
    vn = vertex_normals(torch.stack([v, 2 * v]), f)
    assert ((vn * v).sum(-1) > 0.99).all()  # outward on a sphere, scale-free


def test_crop_intrinsics_equal_projecting_then_warping() -> None:
    g = torch.Generator().manual_seed(0)
    K_plate = torch.tensor([[1500.0, 0, 960.0], [0, 1500.0, 540.0], [0, 0, 1]], dtype=torch.float64)
    pts = torch.randn(1, 50, 3, generator=g, dtype=torch.float64) * 5 + torch.tensor([0, 0, 60.0], dtype=torch.float64)
    s, ang = 0.37, math.radians(17.0)
    A = torch.tensor([[s * math.cos(ang), -s * math.sin(ang), -210.3],
                      [s * math.sin(ang), s * math.cos(ang), 55.7]], dtype=torch.float64)
    uv_plate = project_points(pts, K_plate)[0]
    warped = uv_plate @ A[:, :2].T + A[:, 2]
    Kc = crop_intrinsics(K_plate, A)
    torch.testing.assert_close(project_points(pts, Kc)[0], warped, atol=1e-9, rtol=0)
    # Batched form.
    Kb = crop_intrinsics(K_plate.expand(3, 3, 3), A.expand(3, 2, 3))
    torch.testing.assert_close(Kb[1], Kc)


def test_cv2_affine_conversion_matches_warpaffine() -> None:
    plate = np.zeros((120, 160), np.float32)
    i, j = 37, 91
    plate[i, j] = 1.0
    s, ang = 1.6, math.radians(25.0)
    M = torch.tensor([[s * math.cos(ang), -s * math.sin(ang), -40.0],
                      [s * math.sin(ang), s * math.cos(ang), -60.0]], dtype=torch.float64)
    M_cv = affine_engine_to_cv2(M).numpy()
    crop = cv2.warpAffine(plate, M_cv, (128, 128), flags=cv2.INTER_LINEAR)
    ys, xs = np.nonzero(crop)
    w = crop[ys, xs]
    centroid_uv = np.array([(xs * w).sum() / w.sum() + 0.5, (ys * w).sum() / w.sum() + 0.5])
    expect = M[:, :2].numpy() @ np.array([j + 0.5, i + 0.5]) + M[:, 2].numpy()
    np.testing.assert_allclose(centroid_uv, expect, atol=0.05)
    torch.testing.assert_close(affine_cv2_to_engine(affine_engine_to_cv2(M)), M)


def test_render_with_crop_intrinsics_matches_plate_render_warp() -> None:
    """Rendering with the composed crop K = rendering the plate and resampling (pure scale)."""
    v, f, verts = sphere_scene([([0.0, 0.4, 0.0], [0.3, -0.2, 6.0])], subdiv=2)
    K_plate = torch.tensor([[100.0, 0, 40.0], [0, 100.0, 32.0], [0, 0, 1]])
    # Crop = 2x upsample of the plate window starting at plate pixel (8, 4): u' = 2u - 16, v' = 2v - 8.
    A = torch.tensor([[2.0, 0, -16.0], [0, 2.0, -8.0]])
    crop = rasterize(verts, f, crop_intrinsics(K_plate, A), 96, 96)
    plate_hi = rasterize(verts, f, K_plate * torch.tensor([[2.0], [2.0], [1.0]]), 160, 192)
    # Scaling K's first two rows by 2 renders the plate at 2x; the crop is its window whose
    # top-left corner is at (u, v) = (16, 8) in that 2x image, i.e. rows 8.., columns 16...
    assert torch.equal(crop.face_idx[0], plate_hi.face_idx[0, 8:104, 16:112])


def test_stack_and_config_errors() -> None:
    v, f, verts = sphere_scene([([0.0, 0.0, 0.0], [0.0, 0.0, 4.0])], subdiv=1)
    cfg = ConditioningConfig(size=16)
    maps = render_conditioning(verts, f, torch.tensor([[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]),
                               canonical_verts=normalise_canonical(v), uv=v[:, :2],
                               vertex_region=sphere_regions(v), config=cfg)
    x = stack_conditioning(maps, cfg.maps)
    assert x.shape == (1, cfg.channels(), 16, 16) and x.dtype == torch.float32
    assert cfg.channels() == 3 + 3 + 1 + 1 + 2 + 1 + 1 + 8
    with pytest.raises(ConfigError):
        stack_conditioning(maps, ("region_id",))
    with pytest.raises(ConfigError):
        ConditioningConfig(maps=("albedo",)).validate()
    with pytest.raises(ConfigError):
        render_conditioning(verts, f, torch.eye(3), canonical_verts=v, uv=v[:, :2],
                            vertex_region=torch.full((v.shape[0],), 9, dtype=torch.uint8),
                            config=ConditioningConfig(size=8))


def test_normalise_canonical_unit_box() -> None:
    pts = torch.tensor([[0.0, 0, 0], [10, 2, 4], [3, 6, 1]])
    c = normalise_canonical(pts)
    # Centre of the bounding box (5, 3, 2) to 0, largest half-extent (5) to 1, one scale for all axes.
    torch.testing.assert_close(c, (pts - torch.tensor([5.0, 3, 2])) / 5)
