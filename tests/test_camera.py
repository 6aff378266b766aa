"""Round trips of the one camera convention (engine/face/camera.py)."""
from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from engine.face.camera import axis_angle_to_matrix, intrinsics, project, transform, unproject
from engine.face.raster import project_points, rasterize


def test_axis_angle_to_matrix_is_a_rotation_and_matches_scipy() -> None:
    g = torch.Generator().manual_seed(0)
    aa = torch.randn(64, 3, generator=g, dtype=torch.float64) * 1.5
    aa[:4] *= 1e-9  # the small-angle branch
    aa[4] = 0.0
    R = axis_angle_to_matrix(aa)
    eye = torch.eye(3, dtype=torch.float64).expand(64, 3, 3)
    torch.testing.assert_close(R.transpose(1, 2) @ R, eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(64, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(R, torch.from_numpy(Rotation.from_rotvec(aa.numpy()).as_matrix()),
                               atol=1e-12, rtol=0)
    # Gradients stay finite at (and near) zero rotation.
    z = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    axis_angle_to_matrix(z).sum().backward()
    assert torch.isfinite(z.grad).all()


def test_project_unproject_round_trip() -> None:
    g = torch.Generator().manual_seed(1)
    K = intrinsics(torch.tensor(800.0), 320.5, 240.25)
    R = axis_angle_to_matrix(torch.tensor([0.2, -0.3, 0.1]))
    t = torch.tensor([1.0, -2.0, 50.0])
    model = torch.randn(1, 100, 3, generator=g) * 8
    cam = transform(model, R[None], t[None])
    torch.testing.assert_close(cam, model @ R.T + t)
    uv = project(cam, K)
    back = unproject(uv, cam[..., 2], K)
    torch.testing.assert_close(back, cam, atol=1e-4, rtol=1e-5)
    # The rasteriser's general projection agrees with the convention's for a square-pixel K.
    torch.testing.assert_close(project_points(cam, K), uv, atol=1e-4, rtol=0)


def test_optical_axis_lands_on_the_principal_point() -> None:
    K = intrinsics(torch.tensor(500.0), 128.0, 96.0)
    uv = project(torch.tensor([[[0.0, 0.0, 3.0], [0.0, 0.0, 70.0]]]), K)
    torch.testing.assert_close(uv, torch.tensor([[[128.0, 96.0], [128.0, 96.0]]]))
    # +X right, +Y down: a point right of and below the axis projects right of and below it.
    uv = project(torch.tensor([[[1.0, 1.0, 10.0]]]), K)[0, 0]
    assert uv[0] > 128 and uv[1] > 96


def test_pixel_centre_convention_through_the_rasteriser() -> None:
    """Pixel (row i, col j) has its centre at (j + 0.5, i + 0.5): a point unprojected from there
    lies in pixel column floor(u) = j, and a small triangle around it lights exactly that pixel."""
    H, W = 12, 16
    K = intrinsics(torch.tensor(30.0), W / 2, H / 2)
    for i, j in [(0, 0), (5, 11), (11, 15), (6, 8)]:
        centre = torch.tensor([[[j + 0.5, i + 0.5]]])
        P = unproject(centre, torch.tensor([[4.0]]), K)[0, 0]
        uv = project(P[None, None], K)[0, 0]
        assert int(np.floor(float(uv[0]))) == j and int(np.floor(float(uv[1]))) == i
        # A triangle of radius 0.3 px around the point (in the image plane at depth 4).
        r = 0.3 * 4.0 / 30.0
        tri = torch.stack([P + torch.tensor([0.0, -r, 0]), P + torch.tensor([r, r, 0]),
                           P + torch.tensor([-r, r, 0])])[None]
        fr = rasterize(tri, torch.tensor([[0, 1, 2]]), K, H, W)
        lit = fr.mask[0].nonzero().tolist()
        assert lit == [[i, j]], (i, j, lit)
