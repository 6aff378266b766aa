"""Paste-back pieces: matte geometry, segmentation gating, exact pass-through outside the
matte, normalised AOV resampling, and the OpenColorIO conversions."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.errors import ConfigError
from engine.face.crop import crop_affine
from engine.io import colour
from engine.render import ocio
from engine.render.composite import (MatteConfig, PlateBox, SelfieSegmenter, composite_over, face_matte,
                                     footprint_box, paste_aov, paste_image, paste_matte)

S = 64


def _disc(radius=0.35):
    px = (np.arange(S) + 0.5) / S
    yy, xx = np.meshgrid(px, px, indexing="ij")
    return (((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < radius ** 2).astype(np.float32)


def test_matte_is_zero_within_inset_and_one_inside():
    import cv2

    mask = _disc()
    cfg = MatteConfig(inset=0.05, feather=0.05, segmentation="none")
    m = face_matte(mask, cfg)
    dist = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    assert np.all(m[dist <= 0.05 * S] == 0)          # the seam sits inside the silhouette
    assert np.all(m[dist >= 0.1 * S] == 1)
    assert 0 < m[(dist > 0.06 * S) & (dist < 0.09 * S)].mean() < 1
    assert not face_matte(np.zeros((S, S), np.float32), cfg).any()


def test_segmentation_trims_edges_but_never_the_core():
    mask = _disc(0.45)
    cfg = MatteConfig(inset=0.02, feather=0.05, seg_core=0.06)
    person = np.zeros((S, S), np.float32)          # segmentation sees no person at all
    m = face_matte(mask, cfg, person)
    plain = face_matte(mask, cfg)
    assert m.sum() < 0.8 * plain.sum()             # the edge band is trimmed
    assert m[S // 2, S // 2] == 1.0                # the face's interior survives a miss
    assert np.array_equal(face_matte(mask, cfg, np.ones((S, S), np.float32)), plain)


def test_selfie_segmenter_runs_on_a_crop():
    img = np.zeros((S, S, 3), np.float32) + 0.3
    seg = SelfieSegmenter()
    try:
        p = seg(img)
    finally:
        seg.close()
    assert p.shape == (S, S) and p.dtype == np.float32 and 0 <= p.min() and p.max() <= 1


def test_selfie_segmenter_finds_a_real_person():
    media = Path(__file__).resolve().parents[1].parent / "shared" / "media" / "actor" / "EDTalk__pose_source2.mp4"
    if not media.exists():
        pytest.skip(f"shared media absent: {media}")
    from engine.io.video import VideoSource

    frame = next(iter(VideoSource(media).iter_frames(0, 1))).astype(np.float32) / 255
    seg = SelfieSegmenter()
    try:
        p = seg(frame)
    finally:
        seg.close()
    assert p[96:160, 96:160].mean() > 0.9 and p[:20, :20].mean() < 0.1   # face vs office background


def test_paste_back_exact_outside_matte_and_footprint():
    rng = np.random.default_rng(1)
    w, h = 120, 90
    plate = rng.random((h, w, 3)).astype(np.float32)
    aff = crop_affine(np.array([60.0, 40.0]), 50.0, 0.0, S)
    box = footprint_box(aff, S, (w, h))
    assert not box.empty and box.x0 > 0 and box.x1 < w
    render = np.ones((S, S, 3), np.float32)
    img, valid = paste_image(render, aff, box)
    matte = paste_matte(face_matte(_disc(), MatteConfig(segmentation="none")), aff, box)
    out = composite_over(plate, img, matte, box)
    full = np.zeros((h, w), np.float32)
    full[box.slices] = matte
    assert np.array_equal(out[full == 0].view(np.uint32), plate[full == 0].view(np.uint32))
    assert np.allclose(out[full == 1], 1.0)
    assert (full > 0).sum() > 300 and valid.any()
    # an empty box changes nothing
    assert np.array_equal(composite_over(plate, img[:0, :0], matte[:0, :0], PlateBox(0, 0, 0, 0)), plate)


def test_aov_normalised_interpolation_never_blends_with_background():
    aff = crop_affine(np.array([60.0, 45.0]), 40.0, 0.3, S)   # rotated, upsampled
    box = footprint_box(aff, S, (120, 90))
    mask = _disc()
    depth = np.where(mask > 0, 3.0, 0.0).astype(np.float32)
    out = paste_aov(depth, mask, aff, box)[:, :, 0]
    assert set(np.unique(np.round(out, 5))) <= {0.0, 3.0}   # 3 on the face, 0 off it, nothing between
    assert np.isclose(out, 3.0).sum() > 200


def test_ocio_conversions():
    rng = np.random.default_rng(2)
    disp = rng.random((16, 16, 3)).astype(np.float32)
    # video plates: OCIO's curves equal the engine's reference curves
    assert np.abs(ocio.plate_to_linear(disp, "sRGB") - colour.srgb_to_linear(disp)).max() < 2e-6
    assert np.abs(ocio.plate_to_linear(disp, "Rec.709") - disp ** 2.4).max() < 2e-6
    assert np.array_equal(ocio.plate_to_network(disp, "sRGB"), disp)
    # integer plates: the code-value table gives OCIO's own values
    u8 = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for space in ("sRGB", "Rec.709"):
        want = ocio.convert(u8.astype(np.float32) / 255, space, colour.linear_space_of(space))
        assert np.abs(ocio.plate_to_linear(u8, space) - want).max() <= 1e-6
    # ACEScg plate: EXR pixels pass through untouched; network round trip for in-gamut colour
    aces = (0.05 + 0.4 * rng.random((16, 16, 3))).astype(np.float32)
    aces[..., :] = aces.mean(-1, keepdims=True) * np.array([1.0, 0.9, 0.8], np.float32)   # in Rec.709 gamut
    assert np.array_equal(ocio.plate_to_linear(aces, "ACEScg"), aces)
    net = ocio.plate_to_network(aces, "ACEScg")
    assert np.allclose(net, colour.to_display(aces, "ACEScg"), atol=2e-3)      # what training used
    assert np.abs(ocio.network_to_linear(net, "ACEScg") - aces).max() < 1e-4
    # review views: video plates come back exactly; ACES plates are tone mapped
    for space in ("sRGB", "Rec.709"):
        lin = ocio.plate_to_linear(disp, space)
        assert np.abs(ocio.view_transform(lin, colour.linear_space_of(space), plate_space=space) - disp).max() < 1e-5
    v = ocio.view_transform(np.full((1, 1, 3), 0.18, np.float32), "ACEScg", plate_space="ACEScg")
    assert 0.3 < float(v.mean()) < 0.5 and ocio.default_view("ACEScg") == "ACES 1.0 - SDR Video"
    with pytest.raises(ConfigError):
        ocio.view_transform(disp, "ACEScg", view="no such view")
    with pytest.raises(ConfigError):
        ocio.ocio_name("XYZ-not-a-space")


def test_mouth_region_keeps_the_plate_eyes():
    face = _disc(0.45)
    px = (np.arange(S) + 0.5) / S
    yy, xx = np.meshgrid(px, px, indexing="ij")
    lips = ((((xx - 0.5) / 0.12) ** 2 + ((yy - 0.72) / 0.04) ** 2) < 1).astype(np.float32)
    full = face_matte(face, MatteConfig(segmentation="none"))
    mouth = face_matte(face, MatteConfig(segmentation="none", region="mouth"), lips=lips)
    eyes = (yy > 0.3) & (yy < 0.42) & (np.abs(xx - 0.5) < 0.2)
    assert full[eyes].min() > 0.99 and mouth[eyes].max() == 0.0       # eye line: plate
    assert mouth[lips > 0].min() > 0.99                               # lips: render
    chin = (yy > 0.85) & (np.abs(xx - 0.5) < 0.05)
    assert np.allclose(mouth[chin], full[chin])                       # jaw and chin: render
    # without a lips region (closed mouth, no region map) the ellipse sits on the lower face
    fallback = face_matte(face, MatteConfig(segmentation="none", region="mouth"))
    assert fallback[eyes].max() == 0.0 and fallback[(np.abs(yy - 0.75) < 0.03) & (np.abs(xx - 0.5) < 0.05)].min() > 0.99


def test_mesh_openings_eyes_and_mouth_are_in_the_matte():
    from engine.render.composite import fill_holes, mouth_matte

    face = _disc(0.45)
    px = (np.arange(S) + 0.5) / S
    yy, xx = np.meshgrid(px, px, indexing="ij")
    mouth_hole = (((xx - 0.5) / 0.1) ** 2 + ((yy - 0.7) / 0.03) ** 2) < 1
    eye_hole = (((xx - 0.35) / 0.06) ** 2 + ((yy - 0.4) / 0.03) ** 2) < 1
    mesh = face * ~(mouth_hole | eye_hole)                     # a mesh without eyes / mouth interior
    assert np.array_equal(fill_holes(mesh), face > 0)
    m = face_matte(mesh, MatteConfig(segmentation="none"))
    assert m[mouth_hole].min() == 1.0 and m[eye_hole].min() == 1.0
    lips = ((((xx - 0.5) / 0.13) ** 2 + ((yy - 0.7) / 0.06) ** 2) < 1) & ~mouth_hole
    mm = mouth_matte(np.zeros((S, S), np.float32), MatteConfig(mouth_feather=0), mesh, lips.astype(np.float32))
    assert mm[mouth_hole].min() == 1.0 and mm[eye_hole].max() == 0.0
