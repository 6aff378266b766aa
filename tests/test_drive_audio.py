"""drive.mode audio through the drive stage: the actor's audio-to-expression model (engine.audio)
trained on the plate's audio, mouth/jaw from the dub, the rest from the plate."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

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


def test_audio_drive_keeps_the_upper_face_and_pose(tmp_path: Path) -> None:
    from engine.audio.a2e import A2EConfig
    from engine.stages.drive import DriveStage

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
    stage = DriveStage(tmp_path / "out" / "sh.drive.npz", plate_tracking=pp, frames=(1001, 1060), fps=Fraction(25),
                       plate_start_frame=1001, mode="audio", audio=dub, offset=5, region="mouth",
                       plate_sidecar=sidecar_path(pp), plate_audio=plate_wav,
                       a2e_config=A2EConfig(steps=3, batch=2, window=16))
    assert set(stage.outputs()) == {"drive", "a2e"}
    run_stages([stage], ExecutorConfig(kind="debug"))
    got = df.load_drive(stage.out_path)
    assert got.mode == "audio" and len(got) == 60 and stage.a2e_path().is_file()
    counts = got.flag_counts()
    assert counts["before_start"] == 5 and counts["after_end"] == 5          # 2 s of dub from frame 1006
    mouth = {n for n in got.info["mouth_names"]}
    keep = [i for i, name in enumerate(model.exp_names) if name not in mouth]
    assert np.allclose(got.params.expression[:, keep], plate.fit.expression[:60, keep])
    assert np.allclose(got.params.rotation, plate.fit.rotation[:60])
