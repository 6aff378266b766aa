"""Video drive on real faces: a short piece of the actor plate driven by another person's clip
(../shared media; skipped when absent)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PLATE = SHARED / "media" / "actor" / "EDTalk__pose_source2.mp4"
DRIVER = SHARED / "media" / "driving" / "EDTalk__expression_source.mp4"   # 30 fps


@pytest.mark.slow
def test_real_driver_mouth_and_eyes_follow(tmp_path: Path) -> None:
    if not (PLATE.is_file() and DRIVER.is_file()):
        pytest.skip("../shared media not available (internal test data)")
    from engine.drive.drive_file import load_drive
    from engine.drive.metrics import transfer_statistics
    from engine.face.track import track_media
    from engine.stages.drive import DriveStage
    from engine.pipeline import ExecutorConfig, run_stages
    from engine.face.tracking_file import sidecar_path

    plate = track_media(PLATE, Fraction(25), start_frame=1001, frames=(1001, 1100))
    driver = track_media(DRIVER, None, start_frame=0, frames=(0, 119))
    pp, dp = plate.write(tmp_path / "p.tracking.npz"), driver.write(tmp_path / "d.tracking.npz")
    stage = DriveStage(tmp_path / "sh.drive.npz", plate_tracking=pp, drive_tracking=dp, frames=(1001, 1100),
                       fps=Fraction(25), plate_start_frame=1001, plate_sidecar=sidecar_path(pp),
                       drive_sidecar=sidecar_path(dp))
    run_stages([stage], ExecutorConfig(kind="debug"))
    drive = load_drive(stage.out_path)
    assert drive.info["method"] == "geometry"          # two built-in models learned per media
    stats = transfer_statistics(drive, driver, plate.model, driver.model, plate.fit.identity, driver.fit.identity)
    assert stats["flag_counts"]["after_end"] == 0 and stats["flagged_fraction_face_or_time"] == 0.0
    assert stats["mouth_open"]["correlation"] > 0.8
    assert 0.5 < stats["mouth_open"]["gain"] < 1.5
    assert np.isfinite(drive.params.expression).all()
