"""ICT (real files from ../shared, skipped when absent) and FLAME (synthetic file of the real
layout, pickled with fake chumpy objects) loaders, and the MediaPipe correspondence."""
from __future__ import annotations

import pickle
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from engine.errors import MediaError
from engine.face import landmarks as mp
from engine.face.model import Region, load_face_model, validate_face_model
from engine.face.model_builtin import semantic_measures

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ICT_NPZ = SHARED / "models" / "ict_facekit" / "ict_face_model_light_basis.npz"


# ------------------------------------------------------------------------------------------
# ICT


@pytest.fixture(scope="session")
def ict_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("ict_cache")


@pytest.fixture(scope="session")
def ict(ict_cache):
    if not ICT_NPZ.is_file():
        pytest.skip(f"ICT model not available at {ICT_NPZ} (../shared absent)")
    t0 = time.perf_counter()
    m = load_face_model("ict", ICT_NPZ, cache_dir=ict_cache)
    m.meta["test_first_load_s"] = time.perf_counter() - t0
    return m


def test_ict_arrays_and_conventions(ict):
    m = ict
    validate_face_model(m)
    assert m.neutral.shape == (26719, 3) and m.n_id == 100 and m.n_exp == 57
    assert m.triangles.shape == (2 * 26384 - 548, 3)
    assert "eyeBlinkLeft" in m.exp_names and "jawOpen" in m.exp_names and "mouthSmileRight" in m.exp_names
    assert (m.exp_range == [0, 1]).all() and (m.id_std == 1).all()
    counts = np.bincount(m.vertex_region, minlength=6)
    assert counts[Region.SKIN] > 5000 and counts[Region.LIPS] > 100 and counts[Region.MOUTH_INTERIOR] > 5000
    assert counts[Region.EYES] > 2000 and counts[Region.HEAD] > 3000
    # eyeBlinkLeft moves the subject's left (+X) eyelid down
    c = torch.zeros(1, m.n_exp)
    c[0, m.exp_index("eyeBlinkLeft")] = 1
    d = m.vertices(None, c)[0].numpy() - m.neutral
    moving = np.linalg.norm(d, axis=1) > 0.1
    assert m.neutral[moving, 0].mean() > 2 and d[moving, 1].mean() < 0
    assert m.uv.min() >= 0 and m.uv.max() <= 1 and m.uv_tile is not None
    face_tiles = m.uv_tile[m.region_mask([Region.SKIN, Region.LIPS])]
    assert (face_tiles == 0).mean() > 0.95


def test_ict_correspondence_quality(ict):
    rep = ict.meta["correspondence"]
    print("ICT correspondence:", rep)
    assert rep["nonrigid_residual_cm"] < 0.05
    assert rep["landmark_residual_mean_cm"] < 0.05
    assert rep["rigid_residual_cm"] < 0.6
    assert rep["lip_landmarks_on_lips"] >= 0.95
    # MediaPipe's inner contour is the visible lip-contact line; ICT's lips curl ~0.5 cm further
    # in to the edge of its face surface: near, but not on, that boundary
    assert rep["inner_lip_to_mouth_opening_cm"] < 0.8
    assert rep["eyelid_to_eyeball_cm"] < 0.6
    assert max(rep["semantic_point_error_cm"].values()) < 0.8
    w = ict.landmark_weight
    assert (w[468:] == 0).all() and (w[:468] > 0).mean() > 0.95
    assert (ict.landmark_tri >= 0).all()
    lm = ict.landmarks(torch.from_numpy(ict.neutral)[None])[0].numpy()
    # semantic points land where they should on ICT's surface
    assert lm[mp.LEFT_EYE_OUTER, 0] > 3 and lm[mp.RIGHT_EYE_OUTER, 0] < -3
    region_of = ict.vertex_region[ict.triangles[ict.landmark_tri]]
    lip_idx = list(mp.LIPS_OUTER) + list(mp.LIPS_INNER)
    assert (region_of[lip_idx] == Region.LIPS).any(1).mean() >= 0.95
    # irises sit on the eyeballs, left on +X
    assert (region_of[468:] == Region.EYES).all()
    assert lm[mp.LEFT_IRIS_CENTER, 0] > 2 and lm[mp.RIGHT_IRIS_CENTER, 0] < -2
    # the embedded landmarks follow the blendshapes: jawOpen opens MediaPipe's inner lips
    c = torch.zeros(1, ict.n_exp)
    c[0, ict.exp_index("jawOpen")] = 0.8
    lm_open = ict.landmarks(ict.vertices(None, c))[0].numpy()
    gap0 = semantic_measures(np.asarray(lm[:468]))["jawOpen"]
    gap1 = semantic_measures(np.asarray(lm_open[:468]))["jawOpen"]
    assert gap1 > gap0 + 1.0


def test_ict_second_load_is_cached_and_identical(ict, ict_cache):
    t0 = time.perf_counter()
    again = load_face_model("ict", ICT_NPZ, cache_dir=ict_cache)
    dt = time.perf_counter() - t0
    assert again.meta["correspondence"]["cache"] == "hit"
    assert ict.meta["correspondence"]["cache"] == "miss"
    assert again.model_id() == ict.model_id()
    np.testing.assert_array_equal(again.landmark_tri, ict.landmark_tri)
    np.testing.assert_array_equal(again.vertex_region, ict.vertex_region)
    print(f"ICT load: first {ict.meta['test_first_load_s']:.2f}s, cached {dt:.2f}s")
    assert dt < ict.meta["test_first_load_s"]


def test_ict_face_subset(ict):
    face = ict.face_only()
    assert 8000 < face.n_vertices < 20000
    assert set(np.unique(face.vertex_region)) <= {int(r) for r in (Region.SKIN, Region.LIPS, Region.MOUTH_INTERIOR,
                                                                      Region.EYES)}
    # landmarks survive the subset and evaluate identically
    full = ict.landmarks(torch.from_numpy(ict.neutral)[None])
    sub = face.landmarks(torch.from_numpy(face.neutral)[None])
    ok = face.landmark_tri >= 0
    assert ok[:468].all()
    torch.testing.assert_close(sub[0, ok], full[0, ok])


def test_ict_missing_obj_is_a_media_error(tmp_path):
    if not ICT_NPZ.is_file():
        pytest.skip("ICT model not available (../shared absent)")
    (tmp_path / ICT_NPZ.name).symlink_to(ICT_NPZ)
    with pytest.raises(MediaError, match="generic_neutral_mesh.obj"):
        load_face_model("ict", tmp_path / ICT_NPZ.name)


# ------------------------------------------------------------------------------------------
# FLAME (synthetic file of the real layout)


def _icosphere(radius: float, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = (1 + 5 ** 0.5) / 2
    v = np.array([[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
                  [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], float)
    f = np.array([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
                  [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5],
                  [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]])
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    return v * radius + centre, f


def _write_fake_flame(path: Path, rng) -> dict:
    """A FLAME-layout pickle whose head is the generic MediaPipe face moved by a known
    similarity, with two eyeball spheres, in metres; chumpy objects faked as 'chumpy.ch.Ch'."""
    from scipy.spatial.transform import Rotation

    g = load_face_model("builtin")
    face = g.neutral.astype(np.float64)
    rot = Rotation.from_euler("xyz", [3.0, -4.0, 2.0], degrees=True).as_matrix()
    scale, shift = 1.04, np.array([0.4, -0.6, 0.3])
    head = scale * face @ rot.T + shift
    verts, tris = [head], [g.triangles]
    n = len(head)
    for ring in (mp.RIGHT_EYE, mp.LEFT_EYE):
        c = head[list(ring)].mean(0) - np.array([0, 0, 1.3])
        sv, sf = _icosphere(1.2, c)
        verts.append(sv)
        tris.append(sf + n)
        n += len(sv)
    v = np.concatenate(verts) / 100.0  # metres
    f = np.concatenate(tris)
    nv = len(v)
    shapedirs = np.zeros((nv, 3, 400))
    for k in range(400):  # smooth random fields, unit-variance-scale like FLAME's (~mm)
        c = v[rng.integers(nv)]
        w = np.exp(-((v - c) ** 2).sum(1) / (2 * 0.03 ** 2))
        shapedirs[:, :, k] = w[:, None] * rng.normal(scale=0.002, size=3)
    mouth_y = head[list(mp.MOUTH_CORNERS), 1].mean() / 100
    jaw_w = np.clip((mouth_y - v[:, 1]) / 0.01 + 0.5, 0, 1)
    jaw_w[len(head):] = 0
    weights = np.zeros((nv, 5))
    weights[:, 2] = jaw_w
    weights[:, 0] = 1 - jaw_w
    oval = list(mp.FACE_OVAL)
    side = [i for i in oval if abs(head[i, 1] / 100 - mouth_y) < 0.015]
    jreg = np.zeros((5, nv))
    jreg[0, :len(head)] = 1.0 / len(head)
    jreg[1, :len(head)] = 1.0 / len(head)
    jreg[2, side] = 1.0 / len(side)
    jreg[3, len(head):len(head) + 12] = 1 / 12
    jreg[4, len(head) + 12:] = 1 / 12
    posedirs = rng.normal(scale=1e-5, size=(nv, 3, 36))

    chumpy = types.ModuleType("chumpy")
    chumpy_ch = types.ModuleType("chumpy.ch")

    class Ch:  # pickled as chumpy.ch.Ch with its value in the state's 'x', like chumpy
        def __init__(self, x):
            self.x = x
            self.label = "fake"

    Ch.__module__ = "chumpy.ch"
    Ch.__qualname__ = "Ch"
    chumpy_ch.Ch = Ch
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = chumpy, chumpy_ch
    try:
        data = {"v_template": Ch(v), "shapedirs": Ch(shapedirs), "posedirs": posedirs,
                "J_regressor": sp.csc_matrix(jreg), "weights": Ch(weights),
                "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.uint32),
                "f": f.astype(np.uint32), "bs_style": "lbs", "bs_type": "lrotmin"}
        with open(path, "wb") as fh:
            pickle.dump(data, fh, protocol=2)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]
    return {"head_cm": head, "n_head": len(head), "shapedirs": shapedirs, "v": v}


@pytest.fixture(scope="module")
def fake_flame(tmp_path_factory):
    d = tmp_path_factory.mktemp("flame")
    truth = _write_fake_flame(d / "generic_model.pkl", np.random.default_rng(7))
    return d / "generic_model.pkl", d / "cache", truth


def test_flame_synthetic_loads_without_chumpy(fake_flame):
    path, cache, truth = fake_flame
    assert "chumpy" not in sys.modules
    t0 = time.perf_counter()
    m = load_face_model("flame", path, cache_dir=cache, n_id=20, n_exp=10)
    first = time.perf_counter() - t0
    validate_face_model(m)
    nv = len(truth["v"])
    assert m.neutral.shape == (nv, 3) and m.n_id == 20 and m.n_exp == 11
    np.testing.assert_allclose(m.neutral, truth["v"] * 100, atol=1e-4)  # metres -> cm
    np.testing.assert_allclose(m.id_basis[3], truth["shapedirs"][:, :, 3] * 100, atol=1e-5)
    np.testing.assert_allclose(m.exp_basis[2], truth["shapedirs"][:, :, 302] * 100, atol=1e-5)
    assert m.exp_names[-1] == "jawOpen" and tuple(m.exp_range[-1]) == (0.0, 1.0)
    # jawOpen (LBS at a fixed angle, linearised) lowers the chin and leaves the forehead alone
    jaw = m.exp_basis[-1]
    head = truth["head_cm"]
    chin = mp.FACE_OVAL[len(mp.FACE_OVAL) // 2]
    assert jaw[chin, 1] < -1.0 and np.abs(jaw[mp.FACE_OVAL[0]]).max() < 1e-3
    # eyeballs are EYES; the face got SKIN and LIPS from the MediaPipe transfer
    assert (m.vertex_region[truth["n_head"]:] == Region.EYES).all()
    assert (m.vertex_region == Region.LIPS).sum() > 20 and (m.vertex_region == Region.SKIN).sum() > 300
    # the generic registration recovers the planted correspondence: landmark i -> vertex i
    lm = m.landmarks(torch.from_numpy(m.neutral)[None])[0].numpy()
    err = np.linalg.norm(lm[:468] - head, axis=1)
    rep = m.meta["correspondence"]
    print("FLAME-synthetic correspondence:", rep, "median landmark error", np.median(err))
    assert np.median(err) < 0.1 and np.mean(err) < 0.2
    assert rep["nonrigid_residual_cm"] < 0.05 and abs(rep["scale"] - 1.04) < 0.01
    # second load: cache hit, identical
    t0 = time.perf_counter()
    again = load_face_model("flame", path, cache_dir=cache, n_id=20, n_exp=10)
    assert again.meta["correspondence"]["cache"] == "hit" and again.model_id() == m.model_id()
    assert time.perf_counter() - t0 < first


def test_flame_rejects_non_flame_pickles(tmp_path):
    p = tmp_path / "x.pkl"
    with open(p, "wb") as fh:
        pickle.dump({"v_template": np.zeros((3, 3))}, fh)
    with pytest.raises(MediaError, match="missing"):
        load_face_model("flame", p)
    with open(p, "wb") as fh:
        pickle.dump([1, 2, 3], fh)
    with pytest.raises(MediaError, match="not a FLAME model"):
        load_face_model("flame", p)
