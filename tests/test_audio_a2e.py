"""Audio-to-expression model: training on a synthetic actor, silence, checkpoints, dubbing."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from engine.audio import a2e as A
from engine.audio.features import AudioFeatureConfig, audio_features
from engine.audio.sync import frame_boundaries
from engine.errors import ConfigError, MediaError

FPS, SR, N = Fraction(25), 16000, 500
EXP_NAMES = ("eyeBlinkLeft", "jawOpen", "mouthFunnel", "browRaise")


def _actor(seed: int = 0):
    """A synthetic actor: syllables of a 'vowel' whose loudness is the jaw opening and
    whose spectral peak (high = spread, low = rounded) is the funnel; pauses of silence
    with the mouth shut. Returns samples and per-frame expression (N, 4)."""
    rng = np.random.default_rng(seed)
    b = frame_boundaries(FPS, SR, N)
    x = np.zeros(int(b[-1]), np.float32)
    exp = np.zeros((N, 4), np.float32)
    exp[:, 0] = rng.uniform(0, 1, N)        # blinks: unrelated to the audio
    exp[:, 3] = 0.3
    k = 0
    while k < N - 12:
        if rng.uniform() < 0.25:             # a pause
            k += int(rng.integers(5, 12))
            continue
        ln = int(rng.integers(4, 9))
        jaw, funnel = rng.uniform(0.3, 1.0), rng.uniform(0.0, 1.0)
        f0 = 2500 - 1800 * funnel
        for j in range(ln):
            shape = np.sin(np.pi * (j + 0.5) / ln)
            exp[k + j, 1], exp[k + j, 2] = jaw * shape, funnel * shape
            s0, s1 = b[k + j], b[k + j + 1]
            t = np.arange(s0, s1) / SR
            x[s0:s1] = jaw * shape * 0.3 * (np.sin(2 * np.pi * f0 * t) + 0.3 * rng.standard_normal(len(t)))
        k += ln
    x += 1e-4 * rng.standard_normal(len(x)).astype(np.float32)
    return x, exp


def _small_config(**kw) -> A.A2EConfig:
    base = dict(features=AudioFeatureConfig(n_mels=24, context=6), hidden=24, dilations=(1, 2), steps=250,
                batch=6, window=24, lr=5e-3, dropout=0.0, seed=0, closed_threshold=0.01)
    base.update(kw)
    return A.A2EConfig(**base)


@pytest.fixture(scope="module")
def trained():
    x, exp = _actor()
    cfg = _small_config()
    f = audio_features(x, SR, FPS, N, config=cfg.features)
    mouth_open = exp[:, 1] * 0.1            # stands in for the tracked inner-lip gap
    model, rep = A.train_a2e(f, exp, EXP_NAMES, np.ones(N, bool), mouth_open, float(FPS), cfg,
                             provenance={"plate": "synthetic"})
    return model, rep, f, exp


def test_mouth_names():
    assert A.mouth_names_of(EXP_NAMES) == ("jawOpen", "mouthFunnel")
    with pytest.raises(ConfigError):
        A.mouth_names_of(("eyeBlinkLeft", "browRaise"))


def test_training_learns_held_out_mouth(trained):
    model, rep, f, exp = trained
    assert model.mouth_names == ("jawOpen", "mouthFunnel")
    assert rep.split_index == 450
    assert rep.holdout_corr["jawOpen"] > 0.7, rep
    pred = model.predict(f)
    assert pred.shape == (N, 2)
    held = slice(rep.split_index, N)
    assert np.corrcoef(pred[held, 0], exp[held, 1])[0, 1] > 0.7


def test_silence_closes_the_mouth(trained):
    model, rep, f, exp = trained
    sil = audio_features(np.zeros(SR * 2, np.float32), SR, FPS, 50, config=model.config.features)
    y = model.predict(sil)
    assert np.allclose(y, model.rest[None], atol=1e-4)
    # speech followed by 2 s of silence: the network alone (no gate) closes the mouth in the
    # pause too, from the silent spans it was trained with
    x, _ = _actor(seed=5)
    x = np.concatenate([x[: SR * 8], np.zeros(SR * 2, np.float32)])
    g = audio_features(x, SR, FPS, 250, config=model.config.features)
    assert not g.speech[205:].any()
    raw = model.predict(g, silence_gate=False, smoothing_sigma=0)
    jaw_range = exp[:, 1].max() - exp[:, 1].min()
    assert np.abs(raw[210:, 0] - model.rest[0]).max() < 0.15 * jaw_range
    assert np.allclose(model.predict(g)[210:], model.rest[None], atol=1e-3)
    assert model.rest[0] < 0.05          # the rest pose is the shut mouth of the pauses


def test_av_offset_shifts_output(trained):
    model, rep, f, exp = trained
    base = model.predict(f, smoothing_sigma=0, silence_gate=False)
    late = model.predict(f, av_offset_frames=3, smoothing_sigma=0, silence_gate=False)
    # output frame t uses the audio of t + 3
    assert np.allclose(late[100:400], base[103:403], atol=1e-4)
    assert np.allclose(A.shift_frames(np.arange(5.0), 1.5), [1.5, 2.5, 3.5, 4.0, 4.0])


def test_checkpoint_roundtrip(trained, tmp_path):
    model, rep, f, exp = trained
    path = model.save(tmp_path / "actor.a2e.pt")
    back = A.A2EModel.load(path)
    assert back.mouth_names == model.mouth_names and back.exp_names == EXP_NAMES
    assert back.provenance["plate"] == "synthetic" and back.provenance["engine_version"]
    assert back.config.features.n_mels == 24
    assert np.array_equal(back.predict(f), model.predict(f))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MediaError):
        A.A2EModel.load(tmp_path / "junk.pt")
    with pytest.raises(ConfigError):
        model.predict(audio_features(np.zeros(SR), SR, FPS, 10))   # default features: wrong shape


def test_apply_dub_touches_only_the_mouth():
    from engine.face.params import FrameParams
    n = 6
    rng = np.random.default_rng(0)
    p = FrameParams(frame_numbers=np.arange(1001, 1001 + n), identity=np.zeros(3, np.float32),
                    expression=rng.standard_normal((n, 4)).astype(np.float32),
                    rotation=rng.standard_normal((n, 3)).astype(np.float32),
                    translation=rng.standard_normal((n, 3)).astype(np.float32), focal=500.0,
                    principal_point=np.array([128, 128], np.float32), image_size=(256, 256),
                    crop_affine=np.tile(np.eye(2, 3), (n, 1, 1)), crop_size=256, usable=np.ones(n, bool))
    mouth = np.full((n, 2), 0.5, np.float32)
    d = A.apply_dub(p, mouth, EXP_NAMES, ("jawOpen", "mouthFunnel"))
    assert np.array_equal(d.expression[:, [1, 2]], mouth)
    assert np.array_equal(d.expression[:, [0, 3]], p.expression[:, [0, 3]])
    assert np.array_equal(d.rotation, p.rotation) and np.array_equal(d.translation, p.translation)
    assert not np.array_equal(p.expression[:, [1, 2]], mouth)   # the input is not modified
    with pytest.raises(ConfigError):
        A.apply_dub(p, mouth[:3], EXP_NAMES, ("jawOpen", "mouthFunnel"))
    with pytest.raises(ConfigError):
        A.apply_dub(p, mouth, EXP_NAMES, ("jawOpen", "tongueOut"))


def test_config_roundtrip_and_validation():
    cfg = _small_config(dilations=(1, 2, 4))
    back = A.A2EConfig.from_dict(cfg.to_dict())
    assert back == cfg
    with pytest.raises(ConfigError):
        A.A2EConfig(holdout_frac=0.0).validate()


def test_lip_gap_jacobian_builtin_model():
    """jawOpen parts the lips of the built-in face model: positive d(gap)/d(jawOpen)."""
    from engine.face.model import FaceModelConfig
    from engine.face.params import FrameParams
    model = FaceModelConfig().load()
    n = 2
    p = FrameParams(frame_numbers=np.arange(1001, 1001 + n), identity=np.zeros(model.n_id, np.float32),
                    expression=np.zeros((n, model.n_exp), np.float32), rotation=np.zeros((n, 3), np.float32),
                    translation=np.tile(np.array([0.0, 0.0, 0.6], np.float32), (n, 1)), focal=800.0,
                    principal_point=np.array([256, 256], np.float32), image_size=(512, 512),
                    crop_affine=np.tile(np.eye(2, 3), (n, 1, 1)), crop_size=512, usable=np.ones(n, bool))
    mouth = A.mouth_names_of(model.exp_names)
    jac = A.lip_gap_jacobian(model, p, model.exp_names, mouth)
    assert jac.shape == (len(mouth),) and np.isfinite(jac).all()
    assert jac[mouth.index("jawOpen")] > 0
