"""The drive file portrait.drive/1, the drive stage and `portrait drive` (synthetic inputs)."""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from engine.drive import drive_file as df
from engine.drive.synthetic import synthetic_tracking
from engine.drive.transfer import VideoDriveConfig, transfer_video
from engine.errors import ConfigError, MediaError
from engine.face.model_builtin import load_builtin_model
from engine.face.tracking_file import sidecar_path
from engine.pipeline import ExecutorConfig, run_stages
from engine.stages.drive import DriveStage

FRONTAL = np.array([np.pi, 0.0, 0.0])


@pytest.fixture(scope="module")
def model():
    return load_builtin_model(None)


def _tracking(model, n, start, seed, fps=25, no_face=None):
    rng = np.random.default_rng(seed)
    e = 0.3 * np.sin(np.arange(n)[:, None] * rng.uniform(0.05, 0.3, (1, model.n_exp)))
    rot = np.tile(FRONTAL, (n, 1))
    trans = np.tile([0.0, 0.0, 60.0], (n, 1))
    return synthetic_tracking(model, e, rot, trans, start_frame=start, fps=fps, no_face=no_face,
                              media_sha256=f"{seed:064d}")


def _drive(model, n=20):
    no_face = np.zeros(n, bool)
    no_face[4] = True
    plate = _tracking(model, n, 1001, 1)
    driver = _tracking(model, n, 0, 2, fps=30, no_face=no_face)
    return transfer_video(plate, driver, np.arange(1001, 1001 + n), plate_start_frame=1001, plate_fps=Fraction(25),
                          config=VideoDriveConfig()), plate


def _write(res, path):
    return df.write_drive(res, path, fps=Fraction(25), inputs={"plate_tracking_sha256": "ab" * 32},
                          face_model={"id": "m", "content_hash": "c", "exp_names": ["a"]}, config={"mode": "video"})


def test_round_trip(model, tmp_path: Path) -> None:
    res, _ = _drive(model)
    path = _write(res, tmp_path / "shot.drive.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["shot.drive.npz"]      # atomic: no temp left
    got = df.load_drive(path)
    for k, v in res.params.to_arrays().items():
        assert np.array_equal(np.asarray(v), np.asarray(got.params.to_arrays()[k])), k
    assert np.array_equal(got.flags, res.flags) and np.array_equal(got.positions, res.positions)
    assert got.status == res.status and got.flag_counts() == res.flag_counts()
    h = got.header
    assert h["schema_label"] == "portrait.drive/1" and h["engine_version"] and h["fps"] == "25"
    assert (h["first_frame"], h["last_frame"], h["frame_count"]) == (1001, 1020, 20)
    assert h["inputs"]["plate_tracking_sha256"] == "ab" * 32 and h["info"]["method"] == "coefficients"
    assert got.fps == Fraction(25) and got.face_model_id == "m"


def _rewrite(path: Path, out: Path, header_update=None, drop=None) -> Path:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(str(arrays["header"]))
    header.update(header_update or {})
    arrays["header"] = np.array(json.dumps(header))
    if drop:
        arrays.pop(drop)
    with open(out, "wb") as fh:
        np.savez(fh, **arrays)
    return out


def test_versions_and_damage_are_one_line_errors(model, tmp_path: Path) -> None:
    res, _ = _drive(model)
    path = _write(res, tmp_path / "a.drive.npz")
    newer = _rewrite(path, tmp_path / "newer.drive.npz", {"schema_version": 2})
    with pytest.raises(MediaError, match="newer Portrait Engine"):
        df.load_drive(newer)
    old = _rewrite(path, tmp_path / "old.drive.npz", {"schema_version": 0, "legacy": True})
    with pytest.raises(MediaError, match="no upgrade from drive schema 0"):
        df.load_drive(old)

    def upgrade(header, arrays):
        header = dict(header, schema_version=1)
        header.pop("legacy")
        return header, arrays

    df.register_upgrade(0, upgrade)
    try:
        assert "legacy" not in df.load_drive(old).header
    finally:
        df.unregister_upgrade(0)
    junk = tmp_path / "junk.drive.npz"
    junk.write_bytes(b"not a zip")
    for bad, msg in ((junk, "cannot read drive file"), (tmp_path / "missing.drive.npz", "not found"),
                     (_rewrite(path, tmp_path / "noflags.drive.npz", drop="flags"), "flags"),
                     (_rewrite(path, tmp_path / "noexp.drive.npz", drop="params_expression"), "params_expression"),
                     (_rewrite(path, tmp_path / "other.drive.npz", {"schema": "portrait.tracking"}), "not a Portrait")):
        with pytest.raises(MediaError, match=msg) as info:
            df.load_drive(bad)
        assert "\n" not in str(info.value)
    with pytest.raises(MediaError, match="must end with"):
        _write(res, tmp_path / "x.npz")


def test_drive_stage_runs_caches_and_reruns_on_change(model, tmp_path: Path) -> None:
    n = 25
    plate = _tracking(model, n, 1001, 1)
    driver = _tracking(model, 40, 0, 2, fps=30)
    pp, dp = plate.write(tmp_path / "plate.tracking.npz"), driver.write(tmp_path / "drv.tracking.npz")
    out = tmp_path / "out" / "sh.drive.npz"
    stage = DriveStage(out, plate_tracking=pp, drive_tracking=dp, frames=(1001, 1020), fps=Fraction(25),
                       plate_start_frame=1001, offset=2, pose="relative", plate_sidecar=sidecar_path(pp),
                       drive_sidecar=sidecar_path(dp))
    [r] = run_stages([stage], ExecutorConfig(kind="debug"))
    assert r.state == "ran" and stage.is_up_to_date()
    got = df.load_drive(out)
    assert len(got) == 20 and got.flag_counts()["before_start"] == 2 and got.info["pose"] == "relative"
    assert got.header["inputs"]["driver_media_sha256"] == driver.media_sha256
    assert got.header["face_model"]["id"] == model.model_id()
    [r2] = run_stages([stage], ExecutorConfig(kind="debug"))
    assert r2.state == "skipped"
    _tracking(model, 40, 0, 3, fps=30).write(dp)                 # the driver was re-tracked
    assert stage.check().state == "stale"
    none = DriveStage(tmp_path / "out" / "none.drive.npz", plate_tracking=pp, frames=(1001, 1025), fps=Fraction(25),
                      plate_start_frame=1001, mode="none", plate_sidecar=sidecar_path(pp))
    run_stages([none], ExecutorConfig(kind="debug"))
    own = df.load_drive(none.out_path)
    assert own.mode == "none" and np.allclose(own.params.expression, plate.fit.expression)


def test_drive_stage_bad_settings(model, tmp_path: Path) -> None:
    kw = dict(plate_tracking=tmp_path / "p.tracking.npz", frames=(1001, 1010), fps=Fraction(25), plate_start_frame=1001)
    with pytest.raises(ConfigError, match="driving video's tracking"):
        DriveStage(tmp_path / "a.drive.npz", **kw)
    with pytest.raises(ConfigError, match="drive.mode must be"):
        DriveStage(tmp_path / "a.drive.npz", mode="dance", **kw)
    with pytest.raises(ConfigError, match="must end with"):
        DriveStage(tmp_path / "a.npz", mode="none", **kw)
    with pytest.raises(ConfigError, match="drive.sampling"):
        DriveStage(tmp_path / "a.drive.npz", mode="none", config=VideoDriveConfig(sampling="cubic"), **kw)


def test_cli_drive_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tools.cli import main

    assert main(["drive", str(tmp_path / "clip.mp4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: portrait drive takes a shot file")
    assert main(["drive", str(tmp_path / "missing.yaml")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
