"""Face tracking pipeline: track_media, the tracking file, the overlay movie, the stage and the CLI.

The footage is the embedded demo plate (scikit-image's astronaut photo with a camera move,
engine/demo.py): a real face, no ../shared needed.
"""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ConfigError, MediaError
from engine.face import tracking_file as tf
from engine.face.model import FaceModelConfig
from engine.face.smoothing import SmoothingConfig
from engine.face.track import TrackConfig, estimate_lag_frames, media_sha256, track_media
from engine.util.hashing import file_sha256
from tools.cli import main

N_FRAMES = 30


@pytest.fixture(scope="module")
def demo_video(astronaut_video: Path) -> Path:
    return astronaut_video


@pytest.fixture(scope="module")
def tracked(demo_video: Path, tmp_path_factory: pytest.TempPathFactory) -> tf.TrackingResult:
    result = track_media(demo_video, Fraction(25))
    result.write(tmp_path_factory.mktemp("track") / f"demo{tf.SUFFIX}")
    return result


@pytest.fixture()
def no_face_video(tmp_path: Path) -> Path:
    from engine.io import ReviewMovieWriter

    path = tmp_path / "no_face.mp4"
    y, x = np.mgrid[0:96, 0:128]
    with ReviewMovieWriter(path, Fraction(25), (128, 96)) as mov:
        for i in range(12):
            mov.write(np.stack([(x * 2 + 5 * i) % 256, (y * 2) % 256, (x + y) % 256], -1).astype(np.uint8))
    return path


# ---------------------------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------------------------
def test_track_media_on_a_real_face(tracked: tf.TrackingResult, demo_video: Path) -> None:
    r = tracked
    assert len(r) == N_FRAMES
    assert r.frame_numbers.tolist() == list(range(1001, 1001 + N_FRAMES))
    assert r.status_counts()["ok"] == N_FRAMES and not r.flagged.any()
    assert r.fit.fitted.all()
    # fitted model vs MediaPipe: well inside the 3 % goal on a sharp, frontal face
    assert float(np.mean(r.fit.nme)) < 0.03
    assert r.crops.valid.all() and r.crops.size == 256
    h = r.header
    assert h["schema_label"] == "portrait.tracking/1" and h["schema_version"] == tf.SCHEMA_VERSION
    assert h["media"]["sha256"] == file_sha256(demo_video) == media_sha256(demo_video)
    assert h["fps"] == "25" and r.fps == Fraction(25) and r.image_size == (256, 256)
    fm = h["face_model"]
    # the built-in model's identity is learned from the media; the model is kept beside the file
    assert fm["derived_from_media"] and fm["sidecar"] and fm["base_id"] != fm["id"]
    assert r.face_model().content_hash() == fm["content_hash"]
    assert r.fit.expression.shape == (N_FRAMES, len(fm["exp_names"]))
    s = h["summary"]
    assert s["fitted"] == N_FRAMES and s["nme_mean"] < 0.03 and s["jitter_fit_px"] < s["jitter_raw_px"]


def test_tracking_file_round_trip(tracked: tf.TrackingResult) -> None:
    path = tracked.path
    assert path is not None and path.name.endswith(tf.SUFFIX)
    # atomic writes leave no temporary files behind
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, tf.sidecar_path(path).name])
    back = tf.load_tracking(path)
    assert back.header["media"] == tracked.header["media"]
    np.testing.assert_array_equal(back.frame_numbers, tracked.frame_numbers)
    np.testing.assert_array_equal(back.status, tracked.status)
    np.testing.assert_array_equal(back.landmarks.points, tracked.landmarks.points)
    np.testing.assert_array_equal(back.fit.expression, tracked.fit.expression)
    np.testing.assert_array_equal(back.fit.rotation, tracked.fit.rotation)
    np.testing.assert_array_equal(back.crops.affine, tracked.crops.affine)
    assert back.fit.focal == pytest.approx(tracked.fit.focal)
    # the model is found again from the file alone (sidecar) and checked against its hash
    assert back.face_model().model_id() == tracked.face_model_id
    assert tf.read_header(path)["frame_count"] == N_FRAMES


def _rewrite(path: Path, out: Path, header_update: dict | None = None, drop: str | None = None,
             arrays_update: dict | None = None) -> Path:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(str(arrays.pop("header")))
    header.update(header_update or {})
    arrays.update(arrays_update or {})
    if drop:
        arrays.pop(drop)
    np.savez(out, header=np.array(json.dumps(header)), **arrays)
    return out


def test_tracking_file_versions_and_damage(tracked: tf.TrackingResult, tmp_path: Path) -> None:
    src = tracked.path
    newer = _rewrite(src, tmp_path / f"newer{tf.SUFFIX}", {"schema_version": tf.SCHEMA_VERSION + 1})
    with pytest.raises(MediaError, match="newer Portrait Engine"):
        tf.load_tracking(newer)
    # an older version is upgraded in memory by the registered hook
    old = _rewrite(src, tmp_path / f"old{tf.SUFFIX}", {"schema_version": 0, "face_model": None},
                   drop="crop_angle")
    with pytest.raises(MediaError, match="no upgrade from tracking schema 0"):
        tf.load_tracking(old)

    def upgrade(header: dict, arrays: dict) -> tuple[dict, dict]:
        header = {**header, "schema_version": 1, "face_model": tracked.header["face_model"]}
        return header, {**arrays, "crop_angle": np.zeros(len(arrays["frame_numbers"]))}

    tf.register_upgrade(0, upgrade)
    try:
        up = tf.load_tracking(old)
    finally:
        tf.unregister_upgrade(0)
    assert up.header["schema_version"] == 1 and up.crops.angle.shape == (N_FRAMES,)
    # damage: one-line MediaErrors
    short = _rewrite(src, tmp_path / f"short{tf.SUFFIX}", arrays_update={"status": tracked.status[:-1]})
    bad_code = _rewrite(src, tmp_path / f"code{tf.SUFFIX}", arrays_update={"status": tracked.status + 9})
    junk = tmp_path / f"junk{tf.SUFFIX}"
    junk.write_bytes(b"not a zip at all" * 10)
    other = tmp_path / f"other{tf.SUFFIX}"
    np.savez(other, x=np.zeros(3))
    for path, words in ((short, "rows"), (bad_code, "status codes"), (junk, "cannot read"),
                        (other, "not a Portrait Engine tracking file"), (tmp_path / f"none{tf.SUFFIX}", "not found")):
        with pytest.raises(MediaError, match=words) as info:
            tf.load_tracking(path)
        assert "\n" not in str(info.value)


def test_no_face_media_is_flagged_not_fatal(no_face_video: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="engine.face.track"):
        r = track_media(no_face_video)
    assert r.status_counts()["no_face"] == len(r) == 12 and r.flagged.all() and not r.usable.any()
    assert np.isnan(r.fit.expression).all() and not r.fit.fitted.any()
    assert not r.crops.valid.any()
    assert any("no face found" in rec.getMessage() for rec in caplog.records)
    assert r.header["notes"]


def test_track_config_validation() -> None:
    with pytest.raises(ConfigError, match="builtin_identity"):
        TrackConfig(builtin_identity="actor").validate()
    with pytest.raises(ConfigError, match="max_nme"):
        TrackConfig(max_nme=0).validate()
    with pytest.raises(ConfigError, match="smoothing.kind"):
        track_media("unused.mp4", config=TrackConfig(smoothing=SmoothingConfig(kind="bogus")))


def test_estimate_lag_frames() -> None:
    rng = np.random.default_rng(3)
    x = np.cumsum(rng.normal(size=(400, 8, 2)), 0)
    assert estimate_lag_frames(x, x) == pytest.approx(0.0, abs=1e-6)
    assert estimate_lag_frames(x, np.roll(x, 2, 0)) == pytest.approx(2.0, abs=0.05)
    assert estimate_lag_frames(x, np.roll(x, -1, 0)) == pytest.approx(-1.0, abs=0.05)
    assert np.isnan(estimate_lag_frames(np.zeros((50, 3, 2)), np.zeros((50, 3, 2))))


# ---------------------------------------------------------------------------------------------
# overlay
# ---------------------------------------------------------------------------------------------
def test_overlay_draws_mesh_landmarks_and_flag_banner(tracked: tf.TrackingResult, demo_video: Path,
                                                      tmp_path: Path) -> None:
    from dataclasses import replace

    from engine.face.overlay import MeshProjector, OverlayConfig, draw_overlay, write_overlay_movie
    from engine.io import open_plate, probe

    with open_plate(demo_video, Fraction(25)) as plate:
        frame = plate.read(1005)
    proj = MeshProjector(tracked.face_model(), tracked.fit.identity)
    i = 4
    uv, vis = proj.project(tracked.fit.expression[i:i + 1], tracked.fit.rotation[i:i + 1],
                           tracked.fit.translation[i:i + 1], tracked.fit.intrinsics())
    assert vis.mean() > 0.5          # a frontal face shows most of its face-region edges
    kw = dict(scale=2, uv=uv[0], edges=proj.edges, edges_visible=vis[0])
    plain = draw_overlay(frame, tracked, i, scale=2, config=OverlayConfig(wireframe=False, landmarks=False,
                                                                            crop_box=False))
    wire = draw_overlay(frame, tracked, i, config=OverlayConfig(landmarks=False, crop_box=False), **kw)
    assert wire.shape == (512, 512, 3)
    changed = np.abs(wire.astype(int) - plain.astype(int)).sum(-1) > 30
    # the wireframe lies on the face: inside the landmarks' box, not outside it
    u0, v0, u1, v1 = (tracked.landmarks.bbox[i] * 2).astype(int)
    inside = changed[v0:v1, u0:u1].mean()
    outside = changed.mean() - changed[v0:v1, u0:u1].sum() / changed.size
    assert inside > 0.05 and outside < 0.01
    # a flagged frame gets a red banner across the top; an ok frame does not
    flagged = replace(tracked, status=np.full_like(tracked.status, tf.STATUS_LOW_CONFIDENCE))
    top_ok = plain[:20].reshape(-1, 3).mean(0)
    top_flag = draw_overlay(frame, flagged, i, config=OverlayConfig(wireframe=False), scale=2)[:20].reshape(-1, 3).mean(0)
    assert top_flag[0] > 150 and top_flag[0] > 2 * top_flag[2]
    assert not (top_ok[0] > 150 and top_ok[0] > 2 * top_ok[2])
    # the movie: one frame per tracked frame, upscaled to >= 512 px, with the plate's rate
    movie = write_overlay_movie(tracked, tmp_path / "overlay.mp4")
    info = probe(movie)
    assert info.frame_count == N_FRAMES and (info.width, info.height) == (512, 512) and info.fps == 25


# ---------------------------------------------------------------------------------------------
# stage, shot graph, CLI
# ---------------------------------------------------------------------------------------------
def test_track_stage_cache_keys(demo_video: Path, tmp_path: Path) -> None:
    from engine.stages.track import TrackStage

    a = TrackStage(demo_video, tmp_path / "out", fps=Fraction(25), name="track-plate")
    b = TrackStage(demo_video, tmp_path / "out", fps=Fraction(25), name="track-drive")
    # the same media, model and settings: one file and one manifest, whatever the role
    assert a.tracking_path() == b.tracking_path() and a.manifest_path() == b.manifest_path()
    assert a.tracking_path().parent.name == file_sha256(demo_video)[:16]
    assert a.tracking_path().name.startswith("builtin-mp468") and ".media-" in a.tracking_path().name
    assert set(a.outputs()) == {"tracking", "face_model"}
    other = TrackStage(demo_video, tmp_path / "out", fps=Fraction(25), config=TrackConfig(max_nme=0.1))
    assert other.tracking_path() != a.tracking_path() and other.tracking_path().parent == a.tracking_path().parent
    generic = TrackStage(demo_video, tmp_path / "out", config=TrackConfig(builtin_identity="generic"))
    assert ".media" not in generic.tracking_path().name and set(generic.outputs()) == {"tracking"}
    assert "face_model" not in a.inputs()
    ict = TrackStage(demo_video, tmp_path / "out", face_model=FaceModelConfig(kind="ict", path=str(tmp_path / "x.npz")))
    assert ict.inputs()["face_model"] == tmp_path / "x.npz"


def test_cli_track_video_overlay_and_rerun(demo_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert main(["track", str(demo_video), "--out", str(out), "--overlay", "--frames", "1001-1012"]) == 0
    text = capsys.readouterr().out
    files = sorted(out.rglob(f"*{tf.SUFFIX}"))
    assert len(files) == 1 and f"tracking:  {files[0]}" in text
    assert len(list(out.rglob("*.overlay.mp4"))) == 1 and len(list(out.rglob("*.face_model.npz"))) == 1
    r = tf.load_tracking(files[0])
    assert r.frame_numbers.tolist() == list(range(1001, 1013))
    assert "reprojection NME mean" in text
    # a rerun finds everything up to date and does nothing
    assert main(["track", str(demo_video), "--out", str(out), "--overlay", "--frames", "1001-1012"]) == 0
    text = capsys.readouterr().out
    assert text.count("skipped") == 2


def test_cli_no_face_video_warns_and_exits_0(no_face_video: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    assert main(["track", str(no_face_video), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "no face found in any of the 12 frames" in warnings[0]
    r = tf.load_tracking(next((tmp_path / "out").rglob(f"*{tf.SUFFIX}")))
    assert r.flagged.all() and r.status_counts()["no_face"] == 12


def test_cli_corrupt_and_missing_files_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(5000))
    for target in (corrupt, tmp_path / "missing.mp4"):
        code = main(["track", str(target), "--out", str(tmp_path / "out")])
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert code != 0 and len(err) == 1 and err[0].startswith("error: "), err
    assert main(["track", str(corrupt), "--face-model", "ict"]) == 2     # ict needs a path
    assert capsys.readouterr().err.startswith("error: --face-model ict needs --face-model-path")


def test_shot_graph_plans_tracking_when_needed(tmp_path: Path) -> None:
    from engine.demo import build_demo
    from engine.shot import load_shot
    from engine.shotgraph import plan_shot
    from engine.stages.track import TrackStage

    shot = load_shot(build_demo(tmp_path / "demo", frames=4, executor="debug"))
    assert shot.drive.mode == "none"
    plan = plan_shot(shot)
    assert [s.name for s in plan.stages] == ["render", "review", "qc"]   # nothing consumes a track yet
    for v in plan.versions:
        v.release()
    plan = plan_shot(shot, track=True)
    track = [s for s in plan.stages if isinstance(s, TrackStage)]
    assert [s.name for s in track] == ["track-plate"] and plan.deps["track-plate"] == []
    assert track[0].fps == shot.fps and track[0].start_frame == shot.plate.start_frame
    assert track[0].tracking_path().is_relative_to(shot.output.root / "_cache" / "tracking")
    for v in plan.versions:
        v.release()


def test_shot_track_stages_for_a_video_driven_shot(shared_dir: Path, tmp_path: Path) -> None:
    from engine.shot import load_shot
    from engine.stages.track import TrackStage, shot_track_stages

    shot = load_shot(Path(__file__).resolve().parents[1] / "shot_configs" / "video_driven.yaml")
    stages, deps = shot_track_stages(shot, overlay=True, root=tmp_path)
    names = [s.name for s in stages]
    assert names == ["track-plate", "track-drive", "track-plate-overlay", "track-drive-overlay"]
    plate, drive = (s for s in stages if isinstance(s, TrackStage))
    assert plate.media == shot.plate.path and drive.media == shot.drive.source
    assert drive.fps is None and drive.start_frame == 0     # the driving video keeps its own clock
    assert deps["track-drive-overlay"] == ["track-drive"]
    assert plate.tracking_path().parent != drive.tracking_path().parent


def test_exr_sequence_is_tracked_through_the_display_transform(tmp_path: Path) -> None:
    """A scene-linear EXR sequence: numbered by its file names, converted to display RGB for
    the landmark network, hashed over its frame files only."""
    from engine.demo import demo_frames
    from engine.io import colour
    from engine.io.exr import write_exr

    folder = tmp_path / "plate"
    for i, frame in enumerate(demo_frames(6)):
        lin = colour.to_scene_linear(frame, "Rec.709").astype(np.float32)
        write_exr(folder / f"plate.{2001 + i:04d}.exr", {"rgba": np.dstack([lin, np.ones(lin.shape[:2], np.float32)])})
    (folder / "notes.txt").write_text("not part of the sequence")
    pattern = folder / "plate.####.exr"
    r = track_media(pattern, Fraction(25), TrackConfig(builtin_identity="generic"), colourspace="Linear Rec.709")
    assert r.frame_numbers.tolist() == list(range(2001, 2007))
    assert r.status_counts()["ok"] == 6 and r.header["media"]["kind"] == "sequence"
    before = media_sha256(pattern)
    (folder / "notes.txt").write_text("changed")           # other files do not change the hash
    assert media_sha256(pattern) == before == r.media_sha256
    with pytest.raises(ConfigError, match="explicit fps"):
        track_media(pattern)
