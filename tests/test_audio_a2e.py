"""Audio-to-expression model: training on a synthetic actor, silence, checkpoints, dubbing."""
from __future__ import annotations

import copy
from fractions import Fraction

import numpy as np
import pytest

from engine.audio import a2e as A
from engine.audio.features import AudioFeatureConfig, AudioFeatures, audio_features
from engine.audio.phones import Phone
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


# ---------------------------------------------------------------------------------------
# bilabial closures (JALI lip-closure rule) and the pause / long-silence poses
# ---------------------------------------------------------------------------------------


def test_closure_weights_frames_offset_ease_and_short_phones():
    # M over 0.40-0.52 s at 25 fps: frame centres 0.42, 0.46, 0.50 s -> frames 10, 11, 12
    phones = [Phone("AH", 0.20, 0.40), Phone("M", 0.40, 0.52), Phone("IY", 0.52, 0.70)]
    w, n = A.bilabial_closure_weights(phones, 40, 25.0)
    assert n == 1
    assert np.array_equal(np.flatnonzero(w == 1.0), [10, 11, 12])
    assert w[9] == 0.5 and w[13] == 0.5                      # 1-frame ease in/out
    assert np.count_nonzero(w) == 5                          # the vowels are untouched
    # the output frame t shows the audio of t + offset: a +3 offset moves the closure 3 earlier
    w3, _ = A.bilabial_closure_weights(phones, 40, 25.0, offset_frames=3)
    assert np.array_equal(np.flatnonzero(w3 == 1.0), [7, 8, 9])
    # feature frame 0 starting 0.2 s into the audio the phones were found in
    wt, _ = A.bilabial_closure_weights(phones, 40, 25.0, t0_s=0.2)
    assert np.array_equal(np.flatnonzero(wt == 1.0), [5, 6, 7])
    # a 20 ms B inside frame 20 (0.80-0.84 s) that covers no frame centre still closes frame 20
    ws, n = A.bilabial_closure_weights([Phone("B", 0.805, 0.815)], 40, 25.0, ease_frames=2)
    assert n == 1 and np.flatnonzero(ws == 1.0).tolist() == [20]
    assert np.allclose(ws[[18, 19, 21, 22]], [1 / 3, 2 / 3, 2 / 3, 1 / 3])
    # phones outside the frames are not counted
    _, n = A.bilabial_closure_weights([Phone("P", 5.0, 5.1), Phone("P", -1.0, -0.9)], 40, 25.0)
    assert n == 0


def test_predict_closes_bilabials_only_with_phones(trained):
    model, rep, f, exp = trained
    assert model.closure.shape == model.rest.shape
    model = copy.copy(model)                                   # the fixture is shared: poses on a copy
    model.closure = model.rest + np.array([0.01, 0.02], np.float32)   # distinguishable from the gate's rest
    phones = [Phone("M", 4.0, 4.12), Phone("AA", 4.12, 4.3), Phone("P", 10.0, 10.03)]
    base = model.predict(f)
    assert np.array_equal(model.predict(f, phones=None), base)                    # no phones: no rule
    assert np.array_equal(model.predict(f, phones=phones, close_bilabials=False), base)
    for off in (0.0, 2.0):
        y = model.predict(f, phones=phones, av_offset_frames=off)
        ref = model.predict(f, av_offset_frames=off)
        core = [100 - int(off), 101 - int(off), 102 - int(off), 250 - int(off)]   # 4.0-4.12 s; 10.0-10.03 s
        assert np.allclose(y[core], model.closure[None], atol=1e-6), off
        ease = [99 - int(off), 103 - int(off)]
        assert np.allclose(y[ease], 0.5 * ref[ease] + 0.5 * model.closure[None], atol=1e-5)
        untouched = np.setdiff1d(np.arange(N), np.arange(97, 106) - int(off))
        untouched = np.setdiff1d(untouched, np.arange(248, 253) - int(off))
        assert np.array_equal(y[untouched], ref[untouched])


def test_gate_short_pause_to_pause_pose_long_silence_to_rest(trained):
    model, rep, f, exp = trained
    speech = np.ones(N, bool)
    speech[100:108] = False          # 0.32 s: a short pause
    speech[200:240] = False          # 1.6 s: a long silence
    g = AudioFeatures(f.mel, f.energy_db, speech, f.visemes)
    model = copy.copy(model)
    model.pause = model.rest + np.array([0.3, -0.2], np.float32)
    y = model.predict(g, smoothing_sigma=0)
    raw = model.predict(g, smoothing_sigma=0, silence_gate=False)
    assert np.allclose(y[103:105], model.pause[None], atol=0.02)
    assert np.allclose(y[205:235], model.rest[None], atol=1e-4)
    assert np.allclose(y[150:190], raw[150:190], atol=1e-6)          # speech keeps the network's motion
    ws, wl = A._silence_weights(speech, 25.0, 0.15, 0.6)
    assert ws[103] > 0.95 and wl[103] == 0 and wl[220] > 0.99 and ws[220] == 0
    assert np.all(ws + wl <= 1 + 1e-9)
    ws, wl = A._silence_weights(speech, 25.0, 0.15, 2.0)
    assert ws[220] > 0.99 and wl.max() == 0


def test_pause_pose_is_learnt_from_the_plates_pauses():
    """An actor who rests with the jaw at 0.2 in short pauses: the pause pose is that, the
    closed rest pose stays shut, and a long silence still goes to the rest pose."""
    x, exp = _actor(seed=3)
    f = audio_features(x, SR, FPS, N, config=_small_config().features)
    exp = exp.copy()
    pauses = ~f.speech
    exp[pauses, 1] = 0.2
    mouth_open = exp[:, 1] * 0.1
    mouth_open[pauses] = 0.02
    model, _ = A.train_a2e(f, exp, EXP_NAMES, np.ones(N, bool), mouth_open, float(FPS), _small_config(steps=2))
    assert model.provenance["poses"]["pause_frames"] >= 8
    assert abs(model.pause[0] - 0.2) < 0.03, model.pause
    assert model.rest[0] < 0.1                  # closed: measured opening jaw * 0.1 <= closed_threshold 0.01
    off, _ = A.train_a2e(f, exp, EXP_NAMES, np.ones(N, bool), mouth_open, float(FPS),
                         _small_config(steps=2, learn_pause_pose=False))
    assert np.array_equal(off.pause, off.rest)
    sil = audio_features(np.zeros(SR * 2, np.float32), SR, FPS, 50, config=model.config.features)
    assert np.allclose(model.predict(sil), model.rest[None], atol=1e-4)


def test_closure_pose_is_verified_through_the_face_model():
    """The measured mouth opening calls frames closed whose coefficients the face model
    renders open: the closure pose must come from the model's own lip gap."""
    x, exp = _actor(seed=4)
    f = audio_features(x, SR, FPS, N, config=_small_config().features)
    exp = exp.copy()
    exp[:, 2] = np.clip(exp[:, 2] + 0.4, 0, None)            # funnel never shut in this actor...
    exp[::17, 2] = 0.0                                        # ...except on a few frames
    measured = exp[:, 1] * 0.1                                 # the tracker only sees the jaw

    def gap(y):                                                # the model: both coefficients part the lips
        y = np.atleast_2d(y)
        return 0.1 * y[:, 0] + 0.1 * y[:, 1]

    model, _ = A.train_a2e(f, exp, EXP_NAMES, np.ones(N, bool), measured, float(FPS), _small_config(steps=2),
                           lip_gap_fn=gap)
    poses = model.provenance["poses"]
    assert poses["rest_mouth_open_model"] > 0.02              # the measured-closed rest is open in the model
    assert poses["closure_verified"] and gap(model.closure)[0] <= 0.02
    assert poses["closure_source"] != "rest"
    # without a face model the rest pose is used, unverified
    plain, _ = A.train_a2e(f, exp, EXP_NAMES, np.ones(N, bool), measured, float(FPS), _small_config(steps=2))
    assert np.array_equal(plain.closure, plain.rest) and not plain.provenance["poses"]["closure_verified"]


def test_version1_checkpoint_loads_with_rest_as_pause_and_closure(trained, tmp_path):
    import torch
    model, rep, f, exp = trained
    path = model.save(tmp_path / "new.a2e.pt")
    st = torch.load(path, map_location="cpu", weights_only=False)
    assert st["schema_version"] == A.CHECKPOINT_VERSION == 2
    for key in ("pause", "closure"):
        del st[key]
    for key in ("long_silence_s", "learn_pause_pose", "min_pause_frames", "close_bilabials", "bilabial_weight",
                "bilabial_ease_frames", "closure_max_open"):
        del st["config"][key]
    st["schema_version"] = 1
    torch.save(st, tmp_path / "v1.a2e.pt")
    old = A.A2EModel.load(tmp_path / "v1.a2e.pt")
    assert np.array_equal(old.pause, old.rest) and np.array_equal(old.closure, old.rest)
    assert old.config.close_bilabials and old.config.long_silence_s == 0.6
    y = old.predict(f, phones=[Phone("B", 2.0, 2.1)])
    assert np.allclose(y[50:52], old.rest[None], atol=1e-6)
    back = A.A2EModel.load(path)
    assert np.array_equal(back.pause, model.pause) and np.array_equal(back.closure, model.closure)
