"""drive.mode audio through the drive stage: the actor's audio-to-expression model (engine.audio)
trained on the plate's audio, mouth/jaw from the dub, the rest from the plate; the dub's phones
switch on the bilabial closure rule, and a failing aligner does not stop the drive."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from engine.drive import drive_file as df
from engine.drive.synthetic import synthetic_tracking
from engine.face.model_builtin import load_builtin_model
from engine.face.tracking_file import sidecar_path
from engine.io.audio import write_wav
from engine.pipeline import ExecutorConfig, run_stages

pytest.importorskip("engine.audio.a2e", reason="the audio-to-expression module has not landed")


def _speechy(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    env = (np.sin(2 * np.pi * 3.0 * t) > 0).astype(np.float32)          # 3 Hz syllable bursts
    return (0.3 * env * (np.sin(2 * np.pi * 180 * t) + 0.3 * rng.normal(size=t.size))).astype(np.float32)


@pytest.fixture(scope="module")
def trained_drive(tmp_path_factory):
    """A synthetic plate, a 2 s dub starting at plate frame 1006, and the drive stage run once
    (training the actor's model, with the real pocketsphinx alignment of the dub)."""
    from engine.audio.a2e import A2EConfig
    from engine.stages.drive import DriveStage

    tmp_path = tmp_path_factory.mktemp("audio_drive")
    model = load_builtin_model(None)
    n = 100
    t = np.arange(n)
    e = np.zeros((n, model.n_exp))
    e[:, model.exp_names.index("jawOpen")] = 0.5 * (np.sin(2 * np.pi * 3.0 * t / 25) > 0)
    e[:, model.exp_names.index("eyeBlinkLeft")] = 0.2 * np.sin(t / 5.0)
    rot = np.tile([np.pi, 0.0, 0.0], (n, 1))
    plate = synthetic_tracking(model, e, rot, np.tile([0, 0, 60.0], (n, 1)), start_frame=1001, fps=25)
    pp = plate.write(tmp_path / "plate.tracking.npz")
    plate_wav = write_wav(tmp_path / "plate.wav", _speechy(4.0), 16000)
    dub = write_wav(tmp_path / "dub.wav", _speechy(2.0, seed=1), 16000)
    kw = dict(plate_tracking=pp, frames=(1001, 1060), fps=Fraction(25), plate_start_frame=1001, mode="audio",
              audio=dub, offset=5, region="mouth", plate_sidecar=sidecar_path(pp))
    stage = DriveStage(tmp_path / "out" / "sh.drive.npz", plate_audio=plate_wav,
                       a2e_config=A2EConfig(steps=3, batch=2, window=16), **kw)
    assert set(stage.outputs()) == {"drive", "a2e"}
    run_stages([stage], ExecutorConfig(kind="debug"))
    return tmp_path, model, plate, stage, kw


def test_audio_drive_keeps_the_upper_face_and_pose(trained_drive) -> None:
    tmp_path, model, plate, stage, kw = trained_drive
    got = df.load_drive(stage.out_path)
    assert got.mode == "audio" and len(got) == 60 and stage.a2e_path().is_file()
    counts = got.flag_counts()
    assert counts["before_start"] == 5 and counts["after_end"] == 5          # 2 s of dub from frame 1006
    mouth = {n for n in got.info["mouth_names"]}
    keep = [i for i, name in enumerate(model.exp_names) if name not in mouth]
    assert np.allclose(got.params.expression[:, keep], plate.fit.expression[:60, keep])
    assert np.allclose(got.params.rotation, plate.fit.rotation[:60])
    pa = got.info["phone_alignment"]
    assert pa["ok"] and pa["n_bilabials"] >= 0 and got.info["bilabial_rule"]
    assert got.info["bilabial_closures"] <= pa["n_bilabials"]
    assert "closure_verified" in got.info["a2e_provenance"]["poses"]     # checked through the face model


def test_audio_drive_closes_the_dubs_bilabials(trained_drive, monkeypatch) -> None:
    from engine.audio import phones as P
    from engine.audio.a2e import A2EModel
    from engine.stages.drive import DriveStage

    tmp_path, model, plate, stage, kw = trained_drive
    # an M 0.40-0.52 s into the dub: dub frames 10-12, i.e. plate frames 1016-1018 (dub from 1006)
    monkeypatch.setattr(P, "phone_alignment", lambda x, sr, cfg=None: [P.Phone("AA", 0.2, 0.4),
                                                                         P.Phone("M", 0.40, 0.52)])
    s2 = DriveStage(tmp_path / "out2" / "sh.drive.npz", a2e_model=stage.a2e_path(), **kw)
    run_stages([s2], ExecutorConfig(kind="debug"))
    got = df.load_drive(s2.out_path)
    a2e = A2EModel.load(stage.a2e_path())
    cols = [model.exp_names.index(m) for m in a2e.mouth_names]
    assert got.info["bilabial_closures"] == 1 and got.info["phone_alignment"]["n_bilabials"] == 1
    assert np.allclose(got.params.expression[15:18][:, cols], a2e.closure[None], atol=1e-6)
    assert not np.allclose(got.params.expression[13, cols], a2e.closure, atol=1e-3)


def test_audio_drive_survives_a_failing_aligner(trained_drive, monkeypatch) -> None:
    from engine.audio import phones as P
    from engine.stages.drive import DriveStage

    tmp_path, model, plate, stage, kw = trained_drive

    def broken(x, sr, cfg=None):
        raise RuntimeError("no alignment")

    monkeypatch.setattr(P, "phone_alignment", broken)
    s3 = DriveStage(tmp_path / "out3" / "sh.drive.npz", a2e_model=stage.a2e_path(), **kw)
    run_stages([s3], ExecutorConfig(kind="debug"))
    got = df.load_drive(s3.out_path)
    assert len(got) == 60
    assert got.info["phone_alignment"]["ok"] is False and "no alignment" in got.info["phone_alignment"]["error"]
    assert got.info["bilabial_rule"] is False and got.info["bilabial_closures"] == 0
