"""Landmark fitting of the morphable face model (engine.face.fit).

Round trips: landmarks synthesised from a face model with known identity, expressions,
poses and focal length (plus noise) must be fitted back: reprojection error below 1% of the
inter-ocular distance, focal within a few percent, coefficients close. A small random
synthetic FaceModel (same interface as engine.face.model.FaceModel) keeps the unit tests
independent of the model loaders; the real ICT model is used when it and ../shared exist.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import ConfigError, MediaError
from engine.face import fit as F
from engine.face.fit import (FACE_OVAL_INDICES, IRIS_INDICES, FitConfig, OnlineFitter, fit_frames_online,
                             fit_sequence, head_to_camera_rotation, matrix_to_axis_angle, project_landmarks)
from engine.face.camera import axis_angle_to_matrix

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ICT_PATH = SHARED / "models" / "ict_facekit" / "ict_face_model_light_basis.npz"


# ---------------------------------------------------------------------------------------
# synthetic face model and sequences


@dataclass(frozen=True, eq=False)
class SyntheticFaceModel:
    """A random low-poly face-like surface with random smooth identity and local expression
    bases; satisfies the FaceModel interface the fit uses."""

    neutral: np.ndarray
    id_basis: np.ndarray
    exp_basis: np.ndarray
    id_names: tuple
    exp_names: tuple
    exp_range: np.ndarray
    id_std: np.ndarray
    triangles: np.ndarray
    uv: np.ndarray
    vertex_region: np.ndarray
    landmark_tri: np.ndarray
    landmark_bary: np.ndarray
    landmark_weight: np.ndarray

    def vertices(self, id_coeffs, exp_coeffs):
        idc = torch.as_tensor(id_coeffs, dtype=torch.float32)
        exc = torch.as_tensor(exp_coeffs, dtype=torch.float32)
        return (torch.from_numpy(self.neutral)[None]
                + torch.einsum("bk,kvc->bvc", idc, torch.from_numpy(self.id_basis))
                + torch.einsum("bk,kvc->bvc", exc, torch.from_numpy(self.exp_basis)))

    def landmarks(self, verts):
        tri = torch.from_numpy(self.triangles[np.maximum(self.landmark_tri, 0)])
        out = (verts[:, tri] * torch.from_numpy(self.landmark_bary)[None, :, :, None]).sum(2)
        out[:, torch.from_numpy(self.landmark_tri < 0)] = float("nan")
        return out

    def model_id(self):
        return "synthetic-test"


def make_model(seed: int = 0, n: int = 24, k_id: int = 10, k_exp: int = 12) -> SyntheticFaceModel:
    rng = np.random.default_rng(seed)
    u, v = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n))
    X, Y = 7.5 * np.sin(1.2 * u), 10.0 * v
    Z = 6.0 * np.cos(1.2 * u) * np.sqrt(1 - 0.5 * v ** 2) + 2.5 * np.exp(-((X / 1.5) ** 2 + ((Y + 0.5) / 3) ** 2))
    verts = np.stack([X, Y, Z], -1).reshape(-1, 3)
    tris = []
    for i in range(n - 1):
        for j in range(n - 1):
            a = i * n + j
            tris += [(a, a + 1, a + n + 1), (a, a + n + 1, a + n)]
    tris = np.asarray(tris, np.int64)

    def bumps(count: int, amp: float, width: float) -> np.ndarray:
        out = np.zeros_like(verts)
        for _ in range(count):
            c = verts[rng.integers(len(verts))]
            w = np.exp(-((verts - c) ** 2).sum(-1) / (2 * width ** 2))
            out += w[:, None] * rng.normal(size=3) * amp
        return out

    id_b = np.stack([bumps(3, 0.8 / np.sqrt(k + 1), 4.0) for k in range(k_id)]) if k_id else np.zeros((0, *verts.shape))
    ex_b = np.stack([bumps(2, 1.2, 2.5) for _ in range(k_exp)])
    centres = verts[tris].mean(1)
    front = np.nonzero(np.abs(centres[:, 0]) < 6.5)[0]
    lt = rng.choice(front, 478)
    lb = rng.dirichlet(np.ones(3), 478)
    for idx, x in ((33, -4.5), (263, 4.5)):  # outer eye corners, for the inter-ocular distance
        lt[idx] = np.argmin(((centres[:, :2] - [x, 2.5]) ** 2).sum(-1))
        lb[idx] = 1 / 3
    lt[rng.choice(np.setdiff1d(np.arange(478), [33, 263]), 8, replace=False)] = -1
    lw = np.ones(478)
    lw[list(IRIS_INDICES)] = 0.3
    lw[list(FACE_OVAL_INDICES)] = 0.5
    lw[lt < 0] = 0
    return SyntheticFaceModel(
        verts.astype(np.float32), id_b.astype(np.float32), ex_b.astype(np.float32),
        tuple(f"id{k}" for k in range(k_id)), tuple(f"exp{k}" for k in range(k_exp)),
        np.tile([0.0, 1.0], (k_exp, 1)).astype(np.float32), np.ones(k_id, np.float32), tris,
        (verts[:, :2] / 20 + 0.5).astype(np.float32), np.zeros(len(verts), np.uint8), lt.astype(np.int64),
        lb.astype(np.float32), lw.astype(np.float32))


def make_sequence(model, n: int = 120, seed: int = 1, focal: float = 480.0, size=(256, 256),
                  noise: float = 0.3, id_scale: float = 0.8, active_exp: np.ndarray | None = None,
                  depth: float = 60.0) -> dict:
    """Smooth random expressions and head motion (yaw +-30 deg), projected with noise."""
    rng = np.random.default_rng(seed)
    k_id, k_exp = model.id_basis.shape[0], model.exp_basis.shape[0]
    ident = rng.normal(size=k_id) * id_scale * np.asarray(getattr(model, "id_std", np.ones(k_id)))
    tt = np.arange(n) / 25.0
    exp = np.zeros((n, k_exp))
    active = np.arange(k_exp) if active_exp is None else active_exp
    for k in active:
        lo, hi = model.exp_range[k]
        freq, ph = rng.uniform(0.2, 1.0), rng.uniform(0, 6.3)
        exp[:, k] = lo + (hi - lo) * np.clip(0.7 * np.sin(2 * np.pi * freq * tt + ph) + rng.uniform(-0.4, 0.2), 0, 1)
    head = np.stack([np.radians(12) * np.sin(2 * np.pi * 0.21 * tt + 1),
                     np.radians(30) * np.sin(2 * np.pi * 0.3 * tt),
                     np.radians(8) * np.sin(2 * np.pi * 0.17 * tt + 2)], -1)
    rot = head_to_camera_rotation(torch.tensor(head, dtype=torch.float32)).numpy()
    trans = np.stack([2 * np.sin(tt), 1.5 * np.cos(0.7 * tt), depth + 8 * np.sin(0.5 * tt)], -1)
    pp = np.array(size, np.float32) / 2
    clean = project_landmarks(model, ident, exp, rot, trans, focal, pp)
    lm = clean + rng.normal(size=clean.shape) * noise
    lm3 = np.concatenate([lm, np.zeros(lm.shape[:2] + (1,))], -1)
    return dict(landmarks=lm3, clean=clean, identity=ident, expression=exp, head=head, rotation=rot,
                translation=trans, focal=focal, size=size)


def _nme_against(result, landmarks: np.ndarray, model) -> np.ndarray:
    """Mean reprojection error / IOD against given (e.g. noise-free) landmarks, per fitted frame."""
    w = np.asarray(model.landmark_weight) > 0
    d = np.linalg.norm(result.landmarks_2d[:, w] - landmarks[:, w, :2], axis=-1).mean(-1)
    return (d / result.iod)[result.fitted]


@pytest.fixture(scope="module")
def model():
    return make_model()


# ---------------------------------------------------------------------------------------
# geometry helpers


def test_matrix_to_axis_angle_round_trip_including_pi():
    g = torch.Generator().manual_seed(0)
    aa = torch.randn(200, 3, generator=g)
    aa = aa / aa.norm(dim=-1, keepdim=True) * torch.rand(200, 1, generator=g) * math.pi
    aa = torch.cat([aa, torch.tensor([[math.pi, 0, 0], [0, 0, 1e-9], [0, 0, 0], [0, math.pi - 1e-4, 0]])])
    rot = axis_angle_to_matrix(aa)
    back = matrix_to_axis_angle(rot)
    assert torch.allclose(axis_angle_to_matrix(back), rot, atol=2e-5)
    assert float((back.norm(dim=-1) - math.pi).max()) <= 1e-5


def test_head_rotation_is_relative_to_frontal():
    frontal = head_to_camera_rotation(torch.zeros(1, 3))
    assert torch.allclose(axis_angle_to_matrix(frontal), axis_angle_to_matrix(torch.tensor([[math.pi, 0.0, 0.0]])),
                          atol=1e-6)
    head = torch.tensor([[0.1, -0.3, 0.05]])
    back = F.camera_to_head_rotation(head_to_camera_rotation(head))
    assert torch.allclose(back, head, atol=1e-5)


def test_linearisation_matches_autograd(model):
    """The analytic Gauss-Newton gradient is half the autograd gradient of the energy (L2)."""
    seq = make_sequence(model, n=4, seed=3)
    cfg = FitConfig(robust_loss="l2")
    basis = F.LandmarkBasis(model, cfg)
    obs = torch.as_tensor(seq["landmarks"][:, basis.index, :2], dtype=torch.float32)
    iod = torch.as_tensor(F._interocular(seq["landmarks"]), dtype=torch.float32)
    sv = F._Solver(basis, obs, torch.ones(obs.shape[:2], dtype=torch.bool), iod, torch.tensor([128.0, 128.0]), cfg)
    st = F._State(torch.tensor(seq["head"], dtype=torch.float32) + 0.05,
                  torch.tensor(seq["translation"], dtype=torch.float32) + 0.5,
                  torch.tensor(seq["expression"], dtype=torch.float32).clamp(0.1, 0.9),
                  torch.tensor(seq["identity"], dtype=torch.float32) * 0.5, torch.tensor(math.log(470.0)))
    _, A, g, B, Hs, gs = sv._frame_system(st, cfg.robust_scale, n_shared_id=basis.n_id, with_focal=True)
    theta = st.frame_params.clone().requires_grad_(True)
    ident = st.ident.clone().requires_grad_(True)
    phi = st.phi.clone().requires_grad_(True)
    st2 = F._State(theta[:, :3], theta[:, 3:6], theta[:, 6:], ident, phi)
    energy = sv.frame_energy(st2, cfg.robust_scale).sum()
    energy.backward()
    assert torch.allclose(g, theta.grad / 2, rtol=2e-3, atol=1e-3 * float(g.abs().max()))
    assert torch.allclose(gs[:-1], ident.grad / 2, rtol=2e-3, atol=1e-3 * float(gs.abs().max()))
    # the focal column is the "dolly zoom" direction: focal and every translation scale together
    dolly = float(phi.grad) + float((theta.grad[:, 3:6] * st.t).sum())
    assert math.isclose(float(gs[-1]), dolly / 2, rel_tol=2e-3, abs_tol=1e-3 * float(gs.abs().max()))
    # and A is the Gauss-Newton (J^T J) matrix: symmetric positive definite
    assert torch.allclose(A, A.transpose(1, 2), atol=1e-3 * float(A.abs().max()))
    assert bool((torch.linalg.eigvalsh(A.double()) > 0).all())


# ---------------------------------------------------------------------------------------
# round trips


def test_synthetic_round_trip(model):
    seq = make_sequence(model, n=120, seed=1)
    lm = seq["landmarks"].copy()
    valid = np.ones(120, bool)
    bad = [0, 30, 31, 32, 77]
    valid[bad] = False
    lm[[30, 31, 32]] = np.nan  # no face: NaN rows, as the tracker writes them
    res = fit_sequence(model, lm, valid, seq["size"], FitConfig())
    ok = res.fitted
    assert not ok[bad].any() and ok.sum() == 115
    # reprojection error against the tracked (noisy) landmarks and against the clean ones
    assert np.nanmean(res.nme) < 0.01
    assert _nme_against(res, seq["clean"], model).mean() < 0.005
    assert abs(res.focal / seq["focal"] - 1) < 0.05, res.focal
    exp_err = np.abs(res.expression[ok] - seq["expression"][ok]).mean()
    id_err = np.abs(res.identity - seq["identity"]).mean()
    rot_err = np.degrees(np.abs(res.head_rotation[ok] - seq["head"][ok])).mean()
    print(f"\nsynthetic: nme {np.nanmean(res.nme):.4f} focal {res.focal:.1f}/{seq['focal']:.0f} "
          f"identity MAE {id_err:.3f} expression MAE {exp_err:.4f} rotation MAE {rot_err:.3f} deg")
    assert exp_err < 0.03 and id_err < 0.15 and rot_err < 0.5
    # unfitted frames: flagged, interpolated between neighbours, errors NaN, reprojected
    assert np.isnan(res.nme[bad]).all() and np.isnan(res.error_px[bad]).all()
    assert np.isfinite(res.expression).all() and np.isfinite(res.rotation).all()
    np.testing.assert_allclose(res.expression[31], (res.expression[29] + res.expression[33]) / 2, atol=1e-5)
    np.testing.assert_allclose(res.translation[0], res.translation[1], atol=1e-6)  # held at the start
    assert np.isfinite(res.landmarks_2d[31][model.landmark_tri >= 0]).all()
    assert np.isnan(res.landmarks_2d[:, model.landmark_tri < 0]).all()
    # the camera rotation reproduces the head pose convention
    R = res.rotation_matrices()[ok]
    R_head = axis_angle_to_matrix(torch.tensor(res.head_rotation[ok])).numpy()
    np.testing.assert_allclose(R, R_head * np.array([1, -1, -1], np.float32), atol=1e-5)
    assert res.converged
    assert res.timings["total_s"] > 0


def test_known_identity_and_focal_skip_to_frames(model):
    seq = make_sequence(model, n=60, seed=5)
    res = fit_sequence(model, seq["landmarks"], np.ones(60, bool), seq["size"], FitConfig(),
                       identity=seq["identity"], focal=seq["focal"])
    assert "identity_s" not in res.timings and "focal_sweep_s" not in res.timings
    np.testing.assert_allclose(res.identity, seq["identity"], atol=1e-6)
    assert res.focal == pytest.approx(seq["focal"], rel=1e-5)
    assert _nme_against(res, seq["clean"], model).mean() < 0.004
    np.testing.assert_allclose(res.translation, seq["translation"], atol=0.3)


def test_expressions_stay_in_range(model):
    seq = make_sequence(model, n=40, seed=7)
    # landmarks pushed beyond what the model's range can reach must not push coefficients out
    res = fit_sequence(model, seq["landmarks"], np.ones(40, bool), seq["size"],
                       FitConfig(expression_prior=0.0), identity=seq["identity"], focal=seq["focal"])
    assert (res.expression >= 0).all() and (res.expression <= 1).all()
    at_zero = (res.expression[:, :] == 0).mean()
    assert at_zero > 0.05  # the truth has many exact zeros: the bound is active, not approached


def test_robust_loss_resists_outlier_landmarks(model):
    seq = make_sequence(model, n=60, seed=11)
    rng = np.random.default_rng(0)
    lm = seq["landmarks"].copy()
    iod = F._interocular(lm)
    embedded = np.nonzero((model.landmark_tri >= 0) & (model.landmark_weight > 0))[0]
    embedded = np.setdiff1d(embedded, [33, 263])
    for i in range(60):  # 12 grossly wrong landmarks per frame (occlusion, tracker glitch)
        idx = rng.choice(embedded, 12, replace=False)
        ang = rng.uniform(0, 2 * np.pi, 12)
        lm[i, idx, :2] += 0.4 * iod[i] * np.stack([np.cos(ang), np.sin(ang)], -1)
    kw = dict(identity=seq["identity"], focal=seq["focal"])
    robust = fit_sequence(model, lm, np.ones(60, bool), seq["size"], FitConfig(), **kw)
    plain = fit_sequence(model, lm, np.ones(60, bool), seq["size"], FitConfig(robust_loss="l2"), **kw)
    err_r = _nme_against(robust, seq["clean"], model).mean()
    err_l2 = _nme_against(plain, seq["clean"], model).mean()
    print(f"\noutliers: clean-landmark NME robust {err_r:.4f} vs l2 {err_l2:.4f}")
    assert err_r < 0.007
    assert err_r < 0.5 * err_l2


def test_invalid_frames_never_crash(model):
    seq = make_sequence(model, n=12, seed=2)
    lm = seq["landmarks"].copy()
    lm[:] = np.nan
    with pytest.raises(MediaError):
        fit_sequence(model, lm, np.zeros(12, bool), seq["size"])
    res = fit_sequence(model, lm, np.zeros(12, bool), seq["size"], identity=seq["identity"], focal=480.0)
    assert not res.fitted.any() and np.isnan(res.expression).all()
    # one usable frame is enough (the priors carry the rest), and "nan" mode leaves gaps NaN
    valid = np.zeros(12, bool)
    valid[5] = True
    lm = seq["landmarks"].copy()
    res = fit_sequence(model, lm, valid, seq["size"], FitConfig(invalid_frames="nan"), focal=480.0)
    assert res.fitted.sum() == 1 and np.isnan(res.expression[[0, 11]]).all()
    assert res.nme[5] < 0.02
    # a "valid" frame whose landmarks are NaN is skipped, not fitted on garbage
    lm[3] = np.nan
    res = fit_sequence(model, lm, np.ones(12, bool), seq["size"], identity=seq["identity"], focal=480.0)
    assert not res.fitted[3] and res.fitted.sum() == 11


def test_bad_arguments_raise_config_errors(model):
    seq = make_sequence(model, n=5, seed=2)
    with pytest.raises(ConfigError):
        fit_sequence(model, seq["landmarks"][:, :100], np.ones(5, bool), seq["size"])
    with pytest.raises(ConfigError):
        fit_sequence(model, seq["landmarks"], np.ones(4, bool), seq["size"])
    with pytest.raises(ConfigError):
        fit_sequence(model, seq["landmarks"], np.ones(5, bool), seq["size"], FitConfig(robust_loss="cauchy"))
    with pytest.raises(ConfigError):
        fit_sequence(model, seq["landmarks"], np.ones(5, bool), seq["size"], identity=np.zeros(3))
    with pytest.raises(ConfigError):
        fit_sequence(model, seq["landmarks"], np.ones(5, bool), seq["size"], focal=-3.0)


def test_temporal_smoothness_reduces_jitter(model):
    seq = make_sequence(model, n=80, seed=4, noise=1.0)
    kw = dict(identity=seq["identity"], focal=seq["focal"])
    none = FitConfig(rotation_smooth=0, translation_smooth=0, expression_smooth=0)
    rough = fit_sequence(model, seq["landmarks"], np.ones(80, bool), seq["size"], none, **kw)
    smooth = fit_sequence(model, seq["landmarks"], np.ones(80, bool), seq["size"],
                          FitConfig(expression_smooth=2.0, translation_smooth=0.5), **kw)

    def jitter(x):
        return np.abs(np.diff(x, 2, axis=0)).mean()

    assert jitter(smooth.expression) < 0.7 * jitter(rough.expression)
    assert jitter(smooth.translation) < 0.8 * jitter(rough.translation)
    # smoothing must not cost accuracy against the truth
    e_s = np.abs(smooth.expression - seq["expression"]).mean()
    e_r = np.abs(rough.expression - seq["expression"]).mean()
    assert e_s < e_r * 1.05


def test_online_fitter(model):
    seq = make_sequence(model, n=60, seed=8)
    valid = np.ones(60, bool)
    valid[20] = False
    res = fit_frames_online(model, seq["landmarks"], valid, seq["size"],
                            identity=seq["identity"], focal=seq["focal"])
    assert res.fitted.sum() == 59 and not res.fitted[20]
    assert _nme_against(res, seq["clean"], model).mean() < 0.005
    assert np.abs(res.expression - seq["expression"])[res.fitted].mean() < 0.03
    fitter = OnlineFitter(model, seq["size"], identity=seq["identity"], focal=seq["focal"])
    frame = fitter.step(seq["landmarks"][0])
    assert frame.fitted and frame.nme < 0.01
    assert not fitter.step(np.full((478, 3), np.nan)).fitted


def test_postprocess_smoothing(model):
    smoothing = pytest.importorskip("engine.face.smoothing")
    seq = make_sequence(model, n=80, seed=9, noise=1.0)
    none = FitConfig(rotation_smooth=0, translation_smooth=0, expression_smooth=0)
    res = fit_sequence(model, seq["landmarks"], np.ones(80, bool), seq["size"], none,
                       identity=seq["identity"], focal=seq["focal"])
    out = F.postprocess(res, model, smoothing.SmoothingConfig(kind="savgol", past=4, lookahead=1, order=2), 25,
                        landmarks=seq["landmarks"])
    acc_in = smoothing.mean_acceleration(res.expression)
    acc_out = smoothing.mean_acceleration(out.expression)
    assert acc_out < 0.8 * acc_in
    # the filtered fit stays as close to the truth, and to the tracked landmarks, as the raw one
    assert _nme_against(out, seq["clean"], model).mean() < 1.1 * _nme_against(res, seq["clean"], model).mean()
    assert np.nanmean(out.nme) < 1.1 * np.nanmean(res.nme)
    assert (out.expression >= 0).all() and (out.expression <= 1).all()
    same = F.postprocess(res, model, None, 25)
    np.testing.assert_allclose(same.expression, res.expression)


def test_index_sets_match_landmarks_module():
    lmod = pytest.importorskip("engine.face.landmarks")
    assert set(FACE_OVAL_INDICES) == set(lmod.FACE_OVAL)
    assert set(IRIS_INDICES) == set(lmod.LEFT_IRIS) | set(lmod.RIGHT_IRIS)
    pts = np.random.default_rng(0).uniform(0, 256, (5, 478, 3))
    np.testing.assert_allclose(F._interocular(pts), lmod.interocular_distance(pts))


# ---------------------------------------------------------------------------------------
# the real ICT model


@pytest.fixture(scope="module")
def ict_model():
    if not ICT_PATH.exists():
        pytest.skip(f"ICT face model not available at {ICT_PATH}")
    model_mod = pytest.importorskip("engine.face.model")
    try:
        return model_mod.load_face_model("ict", ICT_PATH)
    except (MediaError, ConfigError) as exc:
        pytest.skip(f"ICT face model could not be loaded: {exc}")


@pytest.mark.shared
def test_ict_round_trip(ict_model):
    names = list(ict_model.exp_names)
    wanted = ("jawOpen", "mouthSmileLeft", "mouthSmileRight", "browInnerUpLeft", "browInnerUpRight",
              "eyeBlinkLeft", "eyeBlinkRight", "mouthPucker", "mouthFunnel", "browDownLeft")
    active = np.array([names.index(n) for n in wanted if n in names])
    assert active.size >= 8, names
    seq = make_sequence(ict_model, n=80, seed=21, focal=600.0, depth=70.0, id_scale=0.7, active_exp=active)
    res = fit_sequence(ict_model, seq["landmarks"], np.ones(80, bool), seq["size"], FitConfig())
    nme_clean = _nme_against(res, seq["clean"], ict_model).mean()
    exp_err = np.abs(res.expression - seq["expression"]).mean()
    exp_err_active = np.abs(res.expression - seq["expression"])[:, active].mean()
    print(f"\nICT: nme {np.nanmean(res.nme):.4f} (vs clean {nme_clean:.4f}) focal {res.focal:.0f}/600 "
          f"expression MAE {exp_err:.4f} (active {exp_err_active:.4f}) in {res.timings['total_s']:.1f}s")
    assert np.nanmean(res.nme) < 0.01
    assert nme_clean < 0.006
    assert abs(res.focal / 600.0 - 1) < 0.05
    assert exp_err_active < 0.08


def test_model_without_identity_basis():
    """The built-in generic model has no identity components: only focal and frames are fitted."""
    model0 = make_model(seed=3, k_id=0)
    seq = make_sequence(model0, n=40, seed=6)
    res = fit_sequence(model0, seq["landmarks"], np.ones(40, bool), seq["size"], FitConfig())
    assert res.identity.shape == (0,)
    assert _nme_against(res, seq["clean"], model0).mean() < 0.005
    assert abs(res.focal / seq["focal"] - 1) < 0.05


# ---------------------------------------------------------------------------------------
# real footage


PLATE = SHARED / "media" / "actor" / "EDTalk__pose_source2.mp4"


@pytest.fixture(scope="module")
def plate_landmarks():
    if not PLATE.exists():
        pytest.skip(f"actor plate not available at {PLATE}")
    cv2 = pytest.importorskip("cv2")
    landmarks = pytest.importorskip("engine.face.landmarks")
    cap = cv2.VideoCapture(str(PLATE))
    frames = []
    while len(frames) < 120:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    if len(frames) < 120:
        pytest.skip(f"could not decode 120 frames of {PLATE}")
    track = landmarks.track_frames(frames)
    return track.points, track.usable, track.image_size


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.parametrize("kind", ["builtin", "ict"])
def test_real_plate_fit(plate_landmarks, kind):
    """Fit to mediapipe's landmarks of real footage: mean NME <= 3% of the inter-ocular distance."""
    points, usable, size = plate_landmarks
    model_mod = pytest.importorskip("engine.face.model")
    if kind == "ict" and not ICT_PATH.exists():
        pytest.skip(f"ICT face model not available at {ICT_PATH}")
    try:
        model = model_mod.load_face_model(kind, ICT_PATH if kind == "ict" else None)
    except (MediaError, ConfigError) as exc:
        pytest.skip(f"{kind} face model could not be loaded: {exc}")
    res = fit_sequence(model, points, usable, size, FitConfig())
    s = res.summary()
    print(f"\nreal plate / {kind}: {s} timings {res.timings}")
    assert s["fitted"] == int(usable.sum()) >= 100
    assert s["nme_mean"] <= 0.03 and s["nme_p95"] <= 0.045
    assert res.converged
    if res.identity.size:
        assert np.abs(res.identity).max() < 5  # a plausible face, not an overfitted one
