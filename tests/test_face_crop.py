"""Face crops: the similarity transform, its pixel-centre handling, warps and the crop track."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.errors import ConfigError
from engine.face import crop as C
from engine.face import landmarks as L
from engine.face.smoothing import SmoothingConfig, mean_acceleration

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ACTOR = SHARED / "media" / "actor" / "EDTalk__pose_source2.mp4"
NONE = SmoothingConfig(kind="none")


def ramp_image(width=160, height=120, channels=None, dtype=np.float64):
    """f(u, v) = 0.37 u + 0.61 v + 5 sampled at pixel centres (u, v) = (j + .5, i + .5)."""
    v, u = np.mgrid[0:height, 0:width] + 0.5
    img = 0.37 * u + 0.61 * v + 5.0
    if channels:
        img = np.stack([img * (k + 1) for k in range(channels)], -1)
    return img.astype(dtype)


def ramp(points):
    return 0.37 * points[..., 0] + 0.61 * points[..., 1] + 5.0


def crop_pixel_centres(size):
    j, i = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
    return np.stack([j, i], -1).reshape(-1, 2)


# --------------------------------------------------------------------------------------
# The transform
# --------------------------------------------------------------------------------------
def test_affine_maps_the_square_onto_the_crop():
    a = C.crop_affine([100.3, 80.7], 50.0, 0.0, 64)
    got = C.plate_to_crop(np.array([[75.3, 55.7], [125.3, 105.7], [100.3, 80.7]]), a)
    np.testing.assert_allclose(got, [[0, 0], [64, 64], [32, 32]], atol=1e-12)
    # rolled: the face's horizontal axis (cos t, sin t) becomes the crop's +u
    t = 0.3
    a = C.crop_affine([100.0, 80.0], 50.0, t, 64)
    p = np.array([[100 + 10 * np.cos(t), 80 + 10 * np.sin(t)]])
    np.testing.assert_allclose(C.plate_to_crop(p, a), [[32 + 10 * 64 / 50, 32]], atol=1e-12)


def test_points_round_trip_exactly():
    rng = np.random.default_rng(0)
    n = 7
    aff = C.crop_affine(rng.uniform(0, 500, (n, 2)), rng.uniform(20, 400, n), rng.uniform(-1, 1, n), 256)
    pts = rng.uniform(-50, 600, (n, 478, 3))
    back = C.crop_to_plate(C.plate_to_crop(pts, aff), aff)
    np.testing.assert_allclose(back, pts[..., :2], rtol=0, atol=1e-9)
    inv = C.invert_affine(aff)
    np.testing.assert_allclose(C.apply_affine(C.apply_affine(pts, inv), aff), pts[..., :2], atol=1e-9)


@pytest.mark.parametrize("center,side,angle,size", [
    ((80.0, 60.0), 40.0, 0.0, 64),     # zoom in
    ((70.2, 55.9), 50.0, 0.3, 64),     # rotated, sub-pixel centre
    ((80.0, 60.0), 100.0, 0.0, 32),    # downsample with the anti-alias blur
    ((81.0, 61.0), 64.0, 0.0, 64),     # 1:1, integer shift
])
def test_warp_honours_the_pixel_centre_convention(center, side, angle, size):
    """Bilinear sampling (and a symmetric blur) reproduce a linear image exactly, so every
    crop pixel must equal the ramp at the plate point its centre maps to. A half-pixel
    slip would be off by ~0.5 (0.37 + 0.61 per pixel)."""
    img = ramp_image()
    a = C.crop_affine(center, side, angle, size)
    out = C.warp_to_crop(img, a, size)
    assert out.shape == (size, size) and out.dtype == img.dtype
    src = C.crop_to_plate(crop_pixel_centres(size), a)
    expect = ramp(src).reshape(size, size)
    inside = ((src[:, 0] > 14) & (src[:, 0] < 146) & (src[:, 1] > 14) & (src[:, 1] < 106)).reshape(size, size)
    assert inside.mean() > 0.5
    # OpenCV quantises sample positions to 1/32 pixel: up to ~0.03 here, ~0 on average
    err = out[inside] - expect[inside]
    assert np.abs(err).max() < 0.04 and abs(err.mean()) < 0.005


def test_image_round_trip_matches_in_the_interior():
    rng = np.random.default_rng(1)
    plate = cv2.GaussianBlur(rng.uniform(0, 1, (120, 160, 3)).astype(np.float32), (0, 0), 3)
    plate = (plate - plate.min()) / (plate.max() - plate.min())
    a = C.crop_affine([78.0, 63.0], 70.0, 0.2, 128)
    crop = C.warp_to_crop(plate, a, 128)
    back, mask = C.inverse_warp(crop, a, (160, 120))
    assert back.shape == plate.shape and mask.shape == (120, 160) and mask.dtype == bool
    interior = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert interior.sum() > 0.8 * 70 * 70 * 0.8
    err = np.abs(back - plate)[interior]
    assert err.mean() < 0.005 and err.max() < 0.05
    # the mask is the crop's footprint: ~ (side * (S-1)/S)^2 pixels, nothing far outside it
    assert mask.sum() == pytest.approx((70 * 127 / 128) ** 2, rel=0.03)
    far = C.plate_to_crop(np.argwhere(mask)[:, ::-1] + 0.5, a)
    assert far.min() >= 0.5 - 1e-9 and far.max() <= 127.5 + 1e-9


def test_mask_of_a_crop_hanging_off_the_plate():
    a = C.crop_affine([10.0, 10.0], 40.0, 0.0, 64)
    mask = C.crop_mask(a, 64, (160, 120))
    # inside the plate only the quarter [0, 30)^2 less the crop's outer half-pixel rim
    assert mask[:29, :29].all() and not mask[31:].any() and not mask[:, 31:].any()
    img = ramp_image()
    crop = C.warp_to_crop(img, a, 64, border="constant", value=-1.0)
    assert (crop[:10, :10] == -1.0).all()          # outside the plate: the constant
    rep = C.warp_to_crop(img, a, 64, border="replicate")
    assert np.isfinite(rep).all() and rep.min() > 0


def test_paste_back_composites_and_keeps_dtype():
    rng = np.random.default_rng(2)
    plate = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    a = C.crop_affine([80.0, 60.0], 50.0, 0.0, 50)   # 1:1 and pixel aligned: exact
    crop = C.warp_to_crop(plate, a, 50)
    np.testing.assert_array_equal(C.paste_back(plate, crop, a), plate)
    white = np.full_like(crop, 255)
    out = C.paste_back(plate, white, a, matte=np.zeros((50, 50), np.float32))
    np.testing.assert_array_equal(out, plate)      # a zero matte changes nothing
    out = C.paste_back(plate, white, a)
    assert out.dtype == np.uint8 and (out[40:80, 60:100] == 255).all()
    assert (out[:30] == plate[:30]).all()


def test_warp_channels_and_dtypes():
    rng = np.random.default_rng(3)
    a = C.crop_affine([80.0, 60.0], 60.0, 0.1, 48)
    six = rng.uniform(0, 1, (120, 160, 6)).astype(np.float32)
    out = C.warp_to_crop(six, a, 48)
    assert out.shape == (48, 48, 6)
    for k in range(6):
        np.testing.assert_allclose(out[..., k], C.warp_to_crop(six[..., k], a, 48), atol=1e-6)
    assert C.warp_to_crop(six[..., :1], a, 48).shape == (48, 48, 1)
    assert C.warp_to_crop(six.astype(np.float16), a, 48).dtype == np.float16
    assert C.warp_to_crop((six * 255).astype(np.uint8), a, 48).dtype == np.uint8


# --------------------------------------------------------------------------------------
# Crop tracks from landmarks (synthetic)
# --------------------------------------------------------------------------------------
def synthetic_track(n=120, seed=0, noise=0.6, scale=1.0, roll=0.0):
    """Eye and mouth corners of a face moving slowly, with landmark jitter (pixels)."""
    rng = np.random.default_rng(seed)
    tmpl = np.zeros((478, 3))
    for idx, uv in {33: (110, 100), 133: (125, 100), 362: (135, 100), 263: (150, 100),
                    61: (115, 153), 291: (145, 153)}.items():
        tmpl[idx, :2] = uv
    c0 = np.array([130.0, 120.0])
    rot = np.array([[np.cos(roll), -np.sin(roll)], [np.sin(roll), np.cos(roll)]])
    tmpl[:, :2] = (tmpl[:, :2] - c0) @ rot.T + c0
    t = np.arange(n) / 25.0
    shift = np.stack([15 * np.sin(2 * np.pi * 0.2 * t), 8 * np.sin(2 * np.pi * 0.13 * t)], -1)
    pts = tmpl[None] + np.concatenate([shift, np.zeros((n, 1))], -1)[:, None]
    pts[..., :2] += rng.normal(0, noise, (n, 478, 2))
    return pts * scale


def test_unsmoothed_crop_is_centred_on_the_face_frame():
    pts = synthetic_track(n=10, noise=0.0)
    cfg = C.CropConfig(size=256, smoothing=NONE)
    ct = C.compute_crops(pts, (320, 240), cfg, 25)
    centre, extent, _ = C.face_frame(pts, cfg.center_offset)
    np.testing.assert_allclose(C.plate_to_crop(centre[:, None], ct.affine)[:, 0], 128.0, atol=1e-9)
    np.testing.assert_allclose(ct.side, cfg.scale * extent)
    assert extent[0] == pytest.approx(1.8 * 53)     # FFHQ: max(2 |e2e|, 1.8 |e2m|)
    np.testing.assert_allclose(ct.boxes[:, 2] - ct.boxes[:, 0], ct.side)
    assert ct.valid.all() and len(ct) == 10
    back = C.CropTrack.from_arrays(ct.to_arrays())
    np.testing.assert_array_equal(back.affine, ct.affine)
    assert back.size == 256 and back.plate_size == (320, 240)


def test_smoothing_steadies_the_crop():
    pts = synthetic_track()
    raw = C.compute_crops(pts, (320, 240), C.CropConfig(smoothing=NONE), 25)
    for sm in (C.CropConfig().smoothing, SmoothingConfig(kind="savgol", past=6, lookahead=1, order=2)):
        steady = C.compute_crops(pts, (320, 240), C.CropConfig(smoothing=sm), 25)
        assert mean_acceleration(steady.center) < 0.6 * mean_acceleration(raw.center)
        assert mean_acceleration(steady.side) < 0.6 * mean_acceleration(raw.side)
        # still follows the face: within a few pixels of the unsmoothed framing
        assert np.abs(steady.center - raw.center).max() < 6.0


def test_crop_smoothing_is_resolution_independent():
    small = C.compute_crops(synthetic_track(), (320, 240), C.CropConfig(), 25)
    big = C.compute_crops(synthetic_track(scale=4.0), (1280, 960), C.CropConfig(), 25)
    np.testing.assert_allclose(big.center, 4 * small.center, rtol=1e-9)
    np.testing.assert_allclose(big.side, 4 * small.side, rtol=1e-9)


def test_frames_without_a_face_hold_the_neighbouring_crop():
    pts = synthetic_track(n=40)
    pts[:3] = np.nan
    pts[20:25] = np.nan
    ct = C.compute_crops(pts, (320, 240), C.CropConfig(), 25)
    assert not ct.valid[:3].any() and not ct.valid[20:25].any() and ct.valid[3:20].all()
    for k in range(20, 25):
        np.testing.assert_array_equal(ct.affine[k], ct.affine[19])
    for k in range(3):
        np.testing.assert_array_equal(ct.affine[k], ct.affine[3])
    assert np.isfinite(ct.affine).all()
    # the filter restarts after the gap: the first frame back is the raw framing
    raw = C.compute_crops(pts, (320, 240), C.CropConfig(smoothing=NONE), 25)
    np.testing.assert_allclose(ct.center[25], raw.center[25], atol=1e-9)


def test_no_face_anywhere_gives_a_flagged_centre_crop():
    pts = np.full((5, 478, 3), np.nan)
    ct = C.compute_crops(pts, (320, 240), C.CropConfig(size=128), 25)
    assert not ct.valid.any()
    np.testing.assert_allclose(ct.center, [[160, 120]] * 5)
    np.testing.assert_allclose(ct.side, 240)


def test_border_modes():
    pts = synthetic_track(n=20, noise=0.0)
    pts[..., :2] -= (110, 90)                        # face near the top-left corner
    pad = C.compute_crops(pts, (320, 240), C.CropConfig(border="pad", smoothing=NONE), 25)
    assert (pad.boxes[:, :2] < 0).any()
    shift = C.compute_crops(pts, (320, 240), C.CropConfig(border="shift", smoothing=NONE), 25)
    b = shift.boxes
    assert (b[:, :2] >= -1e-9).all() and (b[:, 2] <= 320 + 1e-9).all() and (b[:, 3] <= 240 + 1e-9).all()
    np.testing.assert_allclose(shift.side, pad.side)   # it fits, so it only moves
    tiny = C.compute_crops(pts, (100, 80), C.CropConfig(border="shift", smoothing=NONE), 25)
    assert (tiny.side <= 80 + 1e-9).all()               # larger than the plate: shrunk to fit


def test_rotate_follows_head_roll():
    pts = synthetic_track(n=10, noise=0.0, roll=0.3)
    ct = C.compute_crops(pts, (320, 240), C.CropConfig(rotate=True, smoothing=NONE), 25)
    in_crop = C.plate_to_crop(pts, ct.affine)
    eyes = in_crop[:, [33, 263]]
    np.testing.assert_allclose(eyes[:, 0, 1], eyes[:, 1, 1], atol=0.5)   # eyes level in the crop
    assert ct.angle[0] == pytest.approx(0.3, abs=0.02)
    upright = C.compute_crops(pts, (320, 240), C.CropConfig(smoothing=NONE), 25)
    np.testing.assert_allclose(upright.angle, 0.0)


def test_config_errors():
    with pytest.raises(ConfigError):
        C.CropConfig(border="wrap").validate()
    with pytest.raises(ConfigError):
        C.CropConfig(scale=0).validate()
    with pytest.raises(ConfigError):
        C.compute_crops(np.zeros((3, 10, 2)), (64, 64), None, 25)
    with pytest.raises(ConfigError):
        C.warp_to_crop(ramp_image(), C.crop_affine([50, 50], 20, 0, 16), 16, border="wrap")


# --------------------------------------------------------------------------------------
# Real footage
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def actor():
    if not ACTOR.exists():
        pytest.skip(f"shared test media absent: {ACTOR}")
    cap = cv2.VideoCapture(str(ACTOR))
    frames = []
    while len(frames) < 60:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return frames, L.track_frames(frames)


@pytest.mark.shared
def test_real_crops_frame_the_face_steadily(actor):
    frames, track = actor
    cfg = C.CropConfig(size=256)
    ct = C.compute_crops(track, track.image_size, cfg, 25)
    raw = C.compute_crops(track, track.image_size, C.CropConfig(size=256, smoothing=NONE), 25)
    assert ct.valid.all()
    pts = C.plate_to_crop(track.points, ct.affine)
    lo, hi = pts.min(axis=1), pts.max(axis=1)
    assert (lo > 0).all() and (hi < 256).all()                 # whole mesh inside the crop
    centre = (lo + hi) / 2
    assert np.abs(centre - 128).max() < 0.15 * 256            # and roughly centred
    assert mean_acceleration(ct.center) < 0.6 * mean_acceleration(raw.center)


@pytest.mark.shared
def test_landmarks_redetected_in_the_crop_agree(actor):
    """Warp frames into their crops and run Face Mesh on the crops: the landmarks must land
    where the crop transform puts the plate's landmarks (same static mode on both sides, so
    only the warp differs)."""
    frames, _ = actor
    frames = frames[:10]
    plate = L.track_frames(frames, L.LandmarkConfig(static=True))
    ct = C.compute_crops(plate, plate.image_size, C.CropConfig(size=320, smoothing=NONE), 25)
    crops = [C.warp_to_crop(f, a, 320) for f, a in zip(frames, ct.affine)]
    in_crop = L.track_frames(crops, L.LandmarkConfig(static=True))
    assert in_crop.usable.all()
    d = in_crop.points[..., :2] - C.plate_to_crop(plate.points, ct.affine)
    assert np.linalg.norm(d, axis=-1).mean() < 2.0
    assert np.abs(d.mean(axis=(0, 1))).max() < 0.5
