"""Drive-file landmark targets: the plate's measured landmarks moved by what the drive changes."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.demo import demo_frames
from engine.drive.drive_file import write_drive
from engine.drive.transfer import DriveResult
from engine.face.params import FrameParams
from engine.face.track import track_media
from engine.qc.measure import LIPS
from engine.qc.targets import drive_targets, projected_landmarks


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> tuple[Path, object]:
    folder = tmp_path_factory.mktemp("plate")
    for k, img in enumerate(demo_frames(12, 192)):
        cv2.imwrite(str(folder / f"p.{1001 + k:04d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    res = track_media(folder / "p.%04d.png", Fraction(25))
    path = res.write(folder / "plate.tracking.npz")
    return path, res


def _drive(path: Path, params: FrameParams, tracking) -> Path:
    fm = {"id": tracking.face_model_id, "content_hash": tracking.face_model_hash, "exp_names": list(tracking.exp_names)}
    return write_drive(DriveResult(params, np.zeros(len(params), np.uint16), "none"), path, fps=Fraction(25),
                       inputs={}, face_model=fm, config={})


def test_projection_matches_the_trackers_own(tracked) -> None:
    path, res = tracked
    params = FrameParams.from_tracking(res)
    ok = np.flatnonzero(params.usable)
    assert ok.size >= 10
    uv = projected_landmarks(res.face_model(), params, ok)
    ref = np.asarray(res.fit.landmarks_2d)[ok]
    both = np.isfinite(uv).all(-1) & np.isfinite(ref).all(-1)
    assert both.sum() > 100 * ok.size
    assert np.abs(uv[both] - ref[both]).max() < 0.05      # same camera convention, same pixels


def test_targets_are_the_plate_unless_the_drive_moves_the_mouth(tracked, tmp_path: Path) -> None:
    path, res = tracked
    params = FrameParams.from_tracking(res)
    plate_pts = np.asarray(res.landmarks.points, np.float32)
    same, _ = drive_targets(_drive(tmp_path / "same.drive.npz", params, res), path, res.frame_numbers, plate_pts)
    ok = params.usable
    assert np.allclose(same[ok][..., :2], plate_pts[ok][..., :2], atol=1e-3)
    model = res.face_model()
    k = next(i for i, n in enumerate(model.exp_names) if "jaw" in n.lower() or "mouth_open" in n.lower())
    exp = params.expression.copy()
    exp[:, k] += 0.5 * max(float(model.exp_range[k, 1]) if np.ndim(model.exp_range) == 2 else 1.0, 0.5)
    moved, info = drive_targets(_drive(tmp_path / "open.drive.npz", params.with_(expression=exp), res), path,
                                res.frame_numbers, plate_pts)
    d = np.linalg.norm(moved[ok][..., :2] - plate_pts[ok][..., :2], axis=-1)
    assert np.nanmean(d[:, LIPS]) > 1.0 and np.nanmean(d[:, LIPS]) > 3 * np.nanmean(d[:, [33, 263, 1, 168]])
    assert info["frames_with_target"] == int(ok.sum())
