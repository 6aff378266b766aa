"""Video-driven expression transfer with known coefficients (engine.drive.transfer)."""
from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from engine.drive.geometry import LandmarkBasis, face_measures
from engine.drive.synthetic import synthetic_tracking
from engine.drive.transfer import VideoDriveConfig, fill_gaps, transfer_video
from engine.errors import ConfigError, MediaError
from engine.face.model_builtin import load_builtin_model

FRONTAL = np.array([np.pi, 0.0, 0.0])


@pytest.fixture(scope="module")
def model():
    return load_builtin_model(None)


def _pose(n: int, z: float = 60.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    head = np.cumsum(rng.normal(scale=0.01, size=(n, 3)), 0)
    rot = (Rotation.from_rotvec(head) * Rotation.from_rotvec(FRONTAL)).as_rotvec()
    trans = np.stack([np.cumsum(rng.normal(scale=0.05, size=n)), np.cumsum(rng.normal(scale=0.05, size=n)),
                      z + np.cumsum(rng.normal(scale=0.1, size=n))], 1)
    return rot, trans


def _expr(model, n: int, seed: int, amp: float = 0.4):
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    freq = rng.uniform(0.02, 0.2, size=(1, model.n_exp))
    return amp * np.sin(2 * np.pi * freq * t + rng.uniform(0, 6, size=(1, model.n_exp)))


def _drive(plate, driver, n, **kw):
    cfg = kw.pop("config", VideoDriveConfig(rest="zero"))
    return transfer_video(plate, driver, np.arange(1001, 1001 + n), plate_start_frame=1001,
                          plate_fps=Fraction(25), config=cfg, **kw)


def test_same_basis_transfers_coefficients_exactly(model) -> None:
    n = 40
    plate = synthetic_tracking(model, _expr(model, n, 1), *_pose(n), start_frame=1001)
    driver = synthetic_tracking(model, _expr(model, n, 2), *_pose(n, seed=3), start_frame=0)
    res = _drive(plate, driver, n)
    assert res.info["method"] == "coefficients"
    assert np.allclose(res.params.expression, driver.fit.expression, atol=1e-5)
    assert not res.flagged.any()
    # rest-relative: the actor's rest plus the driver's change from its own rest
    res = _drive(plate, driver, n, config=VideoDriveConfig(rest="quiet_frames"))
    ra, rd = np.array(res.info["rest_actor"]), np.array(res.info["rest_driver"])
    assert not np.allclose(ra, rd)
    assert np.allclose(res.params.expression - ra, driver.fit.expression - rd, atol=1e-4)


def test_30fps_driver_linear_in_time_lands_exactly_on_25fps_frames(model) -> None:
    n_d, n = 60, 40
    ramp = np.zeros((n_d, model.n_exp))
    ramp[:, 0] = np.arange(n_d) * 0.01                    # jawOpen grows 0.01 per driving frame
    plate = synthetic_tracking(model, _expr(model, n, 1), *_pose(n), start_frame=1001)
    driver = synthetic_tracking(model, ramp, *_pose(n_d), fps=30, start_frame=0)
    res = _drive(plate, driver, n, config=VideoDriveConfig(rest="zero", range_margin=None))
    assert np.allclose(res.params.expression[:, 0], 0.01 * np.arange(n) * 1.2, atol=1e-6)
    near = _drive(plate, driver, n, config=VideoDriveConfig(rest="zero", sampling="nearest", range_margin=None))
    assert np.allclose(near.params.expression[:, 0], 0.01 * np.floor(np.arange(n) * 1.2 + 0.5), atol=1e-6)
    assert [tuple(p) for p in res.positions[:3]] == [(0, 1), (6, 5), (12, 5)]


def test_offset_and_short_driver_hold_and_flag(model) -> None:
    n = 30
    plate = synthetic_tracking(model, _expr(model, n, 1), *_pose(n), start_frame=1001)
    e_d = _expr(model, 20, 2)
    driver = synthetic_tracking(model, e_d, *_pose(20), start_frame=0)
    res = _drive(plate, driver, n, offset=5)
    assert res.flag_counts()["before_start"] == 5 and res.flag_counts()["after_end"] == 5
    assert np.allclose(res.params.expression[5:25], e_d, atol=1e-5)
    assert np.allclose(res.params.expression[25:], e_d[-1], atol=1e-5)   # held last frame
    assert np.allclose(res.params.expression[:5], e_d[0], atol=1e-5)
    assert res.status[0] == "before_start" and res.status[-1] == "after_end"


def _remixed(model, seed: int = 5, scale: float = 1.0):
    """Same face, another expression basis (mixed components, optionally a scaled head):
    coefficients are no longer comparable, geometry is."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(model.n_exp, model.n_exp)))
    basis = np.einsum("jk,kvd->jvd", q, model.exp_basis).astype(np.float32)
    return dataclasses.replace(model, name="remixed", neutral=(model.neutral * scale).astype(np.float32),
                               exp_basis=basis * scale, exp_range=np.tile([[-3.0, 3.0]], (model.n_exp, 1)).astype(np.float32)), q


def test_geometry_transfer_across_bases_reproduces_the_displacements(model) -> None:
    n = 30
    other, q = _remixed(model)
    plate = synthetic_tracking(model, _expr(model, n, 1), *_pose(n), start_frame=1001)
    e_true = _expr(model, n, 2)                               # what the actor should do
    driver = synthetic_tracking(other, e_true @ np.linalg.inv(q), *_pose(n), start_frame=0)
    res = _drive(plate, driver, n, config=VideoDriveConfig(rest="zero", regularisation=1e-6, range_margin=None))
    assert res.info["method"] == "geometry"
    assert np.allclose(res.params.expression, e_true, atol=2e-3)
    with pytest.raises(ConfigError, match="one expression basis"):
        _drive(plate, driver, n, config=VideoDriveConfig(method="coefficients"))


def test_a_bigger_driver_face_gives_the_same_expression_on_the_actor(model) -> None:
    # Driver: the same face 25 % larger (so its mouth opens 25 % more in cm for the same
    # expression). Per-identity normalisation must hand the actor the same expression.
    n = 40
    big, q = _remixed(model, seed=7, scale=1.25)
    plate = synthetic_tracking(model, _expr(model, n, 1, 0.1), *_pose(n), start_frame=1001)
    e_true = _expr(model, n, 2)
    driver = synthetic_tracking(big, e_true @ np.linalg.inv(q), *_pose(n, z=75.0), start_frame=0)
    res = _drive(plate, driver, n, config=VideoDriveConfig(rest="zero", regularisation=1e-6, range_margin=None))
    assert res.info["map"]["scales"]["face_scale"] == pytest.approx(0.8, rel=1e-4)
    assert np.allclose(res.params.expression, e_true, atol=5e-3)
    lb_a, lb_d = LandmarkBasis.of(model, None), LandmarkBasis.of(big, None)
    mo_a = face_measures(lb_a.points(res.params.expression))["mouth_open"]
    mo_d = face_measures(lb_d.points(driver.fit.expression))["mouth_open"]
    assert np.allclose(mo_a, mo_d, atol=2e-3)                 # wide open stays wide open


def test_region_mouth_keeps_the_plates_eyes(model) -> None:
    n = 30
    other, q = _remixed(model)
    e_plate = _expr(model, n, 1)
    plate = synthetic_tracking(model, e_plate, *_pose(n), start_frame=1001)
    e_true = _expr(model, n, 2)
    driver = synthetic_tracking(other, e_true @ np.linalg.inv(q), *_pose(n), start_frame=0)
    res = _drive(plate, driver, n, region="mouth",
                 config=VideoDriveConfig(rest="zero", regularisation=1e-6, range_margin=None))
    lb = LandmarkBasis.of(model, None)
    got, want_eyes, want_mouth = (face_measures(lb.points(e)) for e in (res.params.expression, e_plate, e_true))
    for side in ("eye_left", "eye_right"):
        # the plate's eyes, up to what a global basis can separate (a few % of the aperture);
        # the driver's eyes would be off by far more
        err = np.abs(got[side] - want_eyes[side]).mean()
        assert err < 0.1 * np.ptp(want_eyes[side])
        assert err < 0.25 * np.abs(want_mouth[side] - want_eyes[side]).mean()
    assert np.corrcoef(got["mouth_open"], want_mouth["mouth_open"])[0, 1] > 0.97


def _rot_close(a, b, tol=1e-4) -> bool:
    d = Rotation.from_rotvec(np.asarray(a, np.float64)) * Rotation.from_rotvec(np.asarray(b, np.float64)).inv()
    return bool((d.magnitude() < tol).all())


def test_pose_modes(model) -> None:
    n = 30
    p_rot, p_trans = _pose(n, seed=1)
    d_rot, d_trans = _pose(n, z=90.0, seed=2)
    plate = synthetic_tracking(model, _expr(model, n, 1), p_rot, p_trans, start_frame=1001)
    driver = synthetic_tracking(model, _expr(model, n, 2), d_rot, d_trans, start_frame=0)
    keep = _drive(plate, driver, n, pose="plate")
    assert _rot_close(keep.params.rotation, p_rot) and np.allclose(keep.params.translation, p_trans, atol=1e-5)
    assert np.allclose(keep.params.crop_affine, plate.crops.affine)
    drv = _drive(plate, driver, n, pose="driving")
    assert _rot_close(drv.params.rotation, d_rot)
    t = drv.params.translation.astype(np.float64)
    # around the actor's mean position, depth changes by the driver's relative scale
    assert np.allclose(t[:, 2] / p_trans[:, 2].mean(), d_trans[:, 2] / d_trans[:, 2].mean(), atol=1e-5)
    # image-plane motion in face units equals the driver's (same face size here)
    off_a = t[:, :2] / t[:, 2:] * p_trans[:, 2].mean()
    off_d = d_trans[:, :2] / d_trans[:, 2:] * d_trans[:, 2].mean()
    assert np.allclose(off_a - off_a.mean(0), off_d - off_d.mean(0), atol=1e-3)
    assert not np.allclose(drv.params.crop_affine, plate.crops.affine)     # crops follow the new head
    rel = _drive(plate, driver, n, pose="relative")
    assert _rot_close(rel.params.rotation[:1], p_rot[:1]) and np.allclose(rel.params.translation[0], p_trans[0], atol=1e-4)
    r_rel = Rotation.from_rotvec(rel.params.rotation.astype(np.float64))
    d = Rotation.from_rotvec(d_rot)
    assert _rot_close((r_rel * r_rel[0].inv()).as_rotvec(), (d * d[0].inv()).as_rotvec())


def test_no_face_frames_are_interpolated_or_fall_back_and_are_flagged(model) -> None:
    n = 60
    e_p, e_d = _expr(model, n, 1), _expr(model, n, 2)
    no_face_d = np.zeros(n, bool)
    no_face_d[10:13] = True          # short gap: interpolated
    no_face_d[30:50] = True          # 0.8 s: longer than max_gap_s 0.5 -> plate's own
    no_face_p = np.zeros(n, bool)
    no_face_p[55] = True
    plate = synthetic_tracking(model, e_p, *_pose(n), start_frame=1001, no_face=no_face_p)
    driver = synthetic_tracking(model, e_d, *_pose(n), start_frame=0, no_face=no_face_d)
    res = _drive(plate, driver, n, config=VideoDriveConfig(rest="zero", range_margin=None))
    counts = res.flag_counts()
    assert counts["driver_interpolated"] == 3 and counts["driver_fallback_plate"] == 20
    assert counts["plate_no_face"] == 1 and not res.params.usable[55] and res.params.usable.sum() == n - 1
    w = np.array([1, 2, 3])[:, None] / 4.0
    assert np.allclose(res.params.expression[10:13], (1 - w) * e_d[9] + w * e_d[13], atol=1e-5)
    assert np.allclose(res.params.expression[30:50], e_p[30:50], atol=1e-5)
    assert res.status[11] == "driver_interpolated" and res.status[40] == "driver_fallback_plate"
    assert res.status[55] == "plate_no_face" and res.status[0] == "ok"


def test_fill_gaps_ends() -> None:
    valid = np.array([False, True, True, False, False, True, False])
    left, right, w, kind = fill_gaps(valid, 2)
    assert kind.tolist() == [1, 0, 0, 1, 1, 0, 1]
    assert (left[0], right[0]) == (1, 1) and (left[6], right[6]) == (5, 5)
    assert w[3] == pytest.approx(1 / 3) and w[4] == pytest.approx(2 / 3)
    assert fill_gaps(valid, 1)[3].tolist() == [1, 0, 0, 2, 2, 0, 1]


def test_bad_input_is_one_line(model) -> None:
    n = 10
    plate = synthetic_tracking(model, _expr(model, n, 1), *_pose(n), start_frame=1001)
    faceless = synthetic_tracking(model, _expr(model, n, 2), *_pose(n), no_face=np.ones(n, bool))
    with pytest.raises(MediaError, match="no usable face"):
        _drive(plate, faceless, n)
    driver = synthetic_tracking(model, _expr(model, n, 2), *_pose(n))
    with pytest.raises(ConfigError, match="drive.pose"):
        _drive(plate, driver, n, pose="sideways")
    with pytest.raises(ConfigError, match="lacks frame 1011"):
        _drive(plate, driver, n + 1)
    with pytest.raises(ConfigError, match="drive.gain"):
        VideoDriveConfig(gain=-1).validate()
    for exc in (MediaError, ConfigError):
        try:
            _drive(plate, faceless if exc is MediaError else driver, n, pose="plate" if exc is MediaError else "x")
        except exc as e:
            assert "\n" not in str(e)


def test_expressions_beyond_the_actors_range_are_limited_and_flagged(model) -> None:
    n = 20
    plate = synthetic_tracking(model, _expr(model, n, 1, 0.1), *_pose(n), start_frame=1001)
    e = _expr(model, n, 2, 0.1)
    j = model.exp_names.index("jawOpen")
    lo, hi = model.exp_range[j]
    e[10:, j] = 3.0 * hi                                       # far beyond what the actor can do
    driver = synthetic_tracking(model, e, *_pose(n), start_frame=0)
    res = _drive(plate, driver, n, config=VideoDriveConfig(rest="zero", range_margin=0.5))
    top = hi + 0.5 * (hi - lo)
    assert np.all(res.params.expression[:, j] <= top + 1e-5)
    assert res.flag_counts()["clamped"] == 10 and res.status[15] == "clamped"
    # geometry (bounded least squares, not clipping): still within range, same frames flagged
    other, q = _remixed(model)
    driver2 = synthetic_tracking(other, e @ np.linalg.inv(q), *_pose(n), start_frame=0)
    res2 = _drive(plate, driver2, n, config=VideoDriveConfig(rest="zero", range_margin=0.5))
    r = np.asarray(model.exp_range, np.float64)
    assert np.all(res2.params.expression <= r[:, 1] + 0.5 * (r[:, 1] - r[:, 0]) + 1e-4)
    assert res2.flagged[10:].all()
