"""Tracking -> frame cache -> training stage -> online crop rendering, on a real face.

The footage is the embedded demo plate (scikit-image's astronaut photo with a camera move,
engine/demo.py), so none of this needs ../shared; the tiny preset keeps it to seconds.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import ConfigError, MediaError
from engine.face.conditioning import ConditioningConfig
from engine.face.params import ConditioningRenderer, FrameParams
from engine.face.track import track_media
from engine.face.tracking_file import SUFFIX, load_tracking
from engine.io import open_plate
from engine.neural.dataset_build import CacheBuildConfig, build_frame_cache, plate_crops
from engine.pipeline import ExecutorConfig, run_stages
from engine.stages.train import TrainStage

N = 30  # frames of the astronaut_video fixture


@pytest.fixture(scope="module")
def plate(astronaut_video: Path) -> Path:
    return astronaut_video


@pytest.fixture(scope="module")
def tracking_path(plate: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("track") / f"demo{SUFFIX}"
    track_media(plate, Fraction(25)).write(path)
    return path


def _frames(plate: Path, numbers) -> list[np.ndarray]:
    with open_plate(plate, Fraction(25)) as src:
        return [src.read(int(n)) for n in numbers]


def test_frame_params_round_trip_and_select(tracking_path: Path) -> None:
    tr = load_tracking(tracking_path)
    p = FrameParams.from_tracking(tr)
    assert len(p) == N and p.usable.all()
    q = FrameParams.from_arrays(p.to_arrays("drive_"), "drive_")
    for k in ("frame_numbers", "expression", "rotation", "translation", "crop_affine", "usable", "identity"):
        np.testing.assert_array_equal(getattr(p, k), getattr(q, k))
    assert (q.focal, q.image_size, q.crop_size) == (p.focal, p.image_size, p.crop_size)
    s = p.select([3, 1])
    assert s.frame_numbers.tolist() == [p.frame_numbers[3], p.frame_numbers[1]]
    with pytest.raises(ConfigError, match="rows"):
        p.with_(expression=p.expression[:3])
    with pytest.raises(ConfigError, match="missing"):
        FrameParams.from_arrays({"frame_numbers": p.frame_numbers})


def test_conditioning_follows_the_face_at_any_crop_size(tracking_path: Path) -> None:
    """The face mask rendered at 64 px and at 128 px covers the same part of the crop, and its
    centre lands on the tracked landmarks' centre (mapped into the crop)."""
    tr = load_tracking(tracking_path)
    p = FrameParams.from_tracking(tr)
    model = tr.face_model()
    centres = []
    for size in (64, 128):
        r = ConditioningRenderer(model, ConditioningConfig(size=size, maps=("mask_face",)))
        m = r.render(p, [0, 10])["mask_face"][:, 0].numpy()
        ys, xs = np.mgrid[0:size, 0:size] + 0.5
        c = np.stack([(m * xs).sum((1, 2)) / m.sum((1, 2)), (m * ys).sum((1, 2)) / m.sum((1, 2))], 1) / size
        centres.append(c)
        lm = tr.landmarks.points[[0, 10], :, :2].astype(np.float64)
        a = r.crop_affine(p, [0, 10])
        lm_crop = np.einsum("bij,bnj->bni", a[:, :, :2], lm) + a[:, None, :, 2]
        assert np.abs(lm_crop.mean(1) / size - c).max() < 0.06
    np.testing.assert_allclose(centres[0], centres[1], atol=0.02)


def test_unusable_frames_render_empty(tracking_path: Path) -> None:
    tr = load_tracking(tracking_path)
    p = FrameParams.from_tracking(tr)
    usable = p.usable.copy()
    usable[2] = False
    p2 = p.with_(usable=usable)
    r = ConditioningRenderer(tr.face_model(), ConditioningConfig(size=48, maps=("mask_face", "depth")))
    maps = r.render(p2, [1, 2])
    assert maps["mask_face"][0].sum() > 100 and maps["mask_face"][1].sum() == 0


def test_frame_cache_from_tracking(tracking_path: Path, plate: Path, tmp_path: Path) -> None:
    tr = load_tracking(tracking_path)
    cache = build_frame_cache(tr, plate, tmp_path / "cache", CacheBuildConfig(size=48, batch=5),
                              frames=range(1001, 1011))
    assert len(cache) == 10 and cache.size == 48 and cache.expr_dim == tr.fit.expression.shape[1]
    assert cache.source["media_sha256"] == tr.media_sha256
    b = cache.get([0, 9])
    # The cached crop is the plate resampled by the tracked crop: compare with a direct warp.
    imgs, valid = plate_crops(_frames(plate, [1001, 1010]), FrameParams.from_tracking(tr), [0, 9], 48)
    assert (b.target - imgs).abs().max() <= 1 / 255 + 1e-6
    assert valid.min() == 1.0  # the demo crops stay inside the plate
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folder left


def test_frame_cache_refuses_other_media(tracking_path: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.mp4"
    other.write_bytes(b"not the plate")
    with pytest.raises(MediaError, match="content hash"):
        build_frame_cache(load_tracking(tracking_path), other, None)


@pytest.fixture(scope="module")
def trained(tracking_path: Path, plate: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny preset trained by the stage in a real local worker process."""
    stage = TrainStage(plate, tracking_path, tmp_path_factory.mktemp("train") / "out", actor_id="astro",
                       consent="test footage", preset="tiny",
                       overrides={"steps": 6, "checkpoint_every": 3, "generator.image_size": 32})
    [res] = run_stages([stage], ExecutorConfig(kind="local"))
    return stage, res


def test_train_stage_trains_resumes_and_renders_online(trained, tracking_path: Path, plate: Path) -> None:
    """The stage trains the tiny preset into the actor folder; a rerun is a no-op; the model
    renders crops online from the tracked parameters, and a face-less frame passes the
    plate through (alpha 0, composite == plate crop)."""
    from engine.neural.online import CropRenderer

    stage, res = trained
    assert res.state == "ran", res.reason
    model = stage.model_path()
    assert model.exists() and (stage.folder() / "cache" / "meta.json").exists()
    assert stage.folder().parent.name == "astro"
    [again] = run_stages([stage], ExecutorConfig(kind="debug"))
    assert again.state == "skipped"

    tr = load_tracking(tracking_path)
    cr = CropRenderer.from_checkpoint(model, tr.face_model(), device="cpu")
    assert cr.meta.actor_id == "astro" and cr.meta.consent == "test footage"
    # Without a face model: the one of the tracking file the actor was trained from.
    assert CropRenderer.from_checkpoint(model, device="cpu").face_model.model_id() == tr.face_model_id
    p = FrameParams.from_tracking(tr)
    usable = p.usable.copy()
    usable[5] = False
    p = p.with_(usable=usable)
    out = cr.render(p, [4, 5], _frames(plate, [1005, 1006]))
    assert out.rgb.shape == (2, 3, 32, 32) and out.alpha.shape == (2, 1, 32, 32)
    assert set(out.maps) >= {"depth", "normal", "uv", "mask_face", "mask_mouth"}
    assert out.alpha[0].max() > 0.9 and out.alpha[1].max() == 0
    torch.testing.assert_close(out.composite[1], out.context[1])
    assert out.frames.tolist() == [1005, 1006]
    with pytest.raises(ConfigError, match="plate frames"):
        cr.render(p, [4, 5], _frames(plate, [1005]))


def test_online_renderer_refuses_another_face_model(trained) -> None:
    from engine.face.model import load_face_model
    from engine.neural.online import CropRenderer

    stage, _ = trained
    generic = load_face_model("builtin")
    with pytest.raises(ConfigError, match="face model"):
        CropRenderer.from_checkpoint(stage.model_path(), generic, device="cpu")


def test_train_stage_rejects_bad_settings(tracking_path: Path, plate: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="steps_typo"):
        TrainStage(plate, tracking_path, tmp_path, actor_id="a", consent="ok", preset="tiny",
                   overrides={"steps_typo": 3})
    with pytest.raises(ConfigError, match="consent"):
        TrainStage(plate, tracking_path, tmp_path, actor_id="a", consent="  ", preset="tiny")
    with pytest.raises(ConfigError, match="preset"):
        TrainStage(plate, tracking_path, tmp_path, actor_id="a", consent="ok", preset="huge")


def test_train_cli_trains_the_shots_actor_and_rejects_bad_settings(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """`portrait train SHOT.yaml`: tracks the plate, trains with the command line's preset and
    overrides on top of the shot's, and reruns as a no-op; a bad key is one error line."""
    from engine.demo import build_demo
    from tools.cli import main

    shot = build_demo(tmp_path / "demo", frames=6, executor="debug")
    args = ["train", str(shot), "--preset", "tiny", "--set", "steps=2", "--set", "generator.image_size=32"]
    assert main(args) == 0
    out = capsys.readouterr().out
    models = list((tmp_path / "demo" / "out" / "actors" / "astronaut").glob("tiny-*/model.pt"))
    assert len(models) == 1 and f"model:       {models[0]}" in out
    from engine.neural.checkpoint import Checkpoint
    ck = Checkpoint.load(models[0])
    assert ck.step == 2 and ck.meta.provenance["overrides"]["generator.image_size"] == 32
    assert main(args) == 0 and "skipped" in capsys.readouterr().out
    assert main(["train", str(shot), "--set", "stepz=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "stepz" in err[0]
