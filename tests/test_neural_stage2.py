"""Stage 2 (engine.neural.stage2) on the synthetic talking sphere: expression prior and pose
sampling statistics, where each loss's gradient goes, exact resume with the landmark head and
discriminator, and "stage 2 off" leaving stage 1 bit-for-bit unchanged."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.errors import ConfigError
from engine.neural.checkpoint import Checkpoint, ModelMeta
from engine.neural.data import FrameCacheWriter
from engine.neural.generator import PortraitGenerator, face_hole
from engine.neural.stage2 import AuxPool, ExpressionPrior, Stage2, pose_delta, shift_images
from engine.neural.synthetic import SYNTH_MAPS, synthetic_cache, synthetic_frame
from engine.neural.train import Trainer, make_config

META = dict(actor_id="synth", face_model_id="sphere-v1", consent="synthetic test data, no person")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def meta() -> ModelMeta:
    return ModelMeta(**META)


# ------------------------------------------------------------------ a synthetic aux source
_LM_CANON = [(-0.35, 0.35), (0.35, 0.35), (0.0, -0.3), (-0.4, -0.2), (0.4, -0.2), (0.0, 0.0), (0.2, 0.6)]


def sphere_landmarks(t: int, S: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Analytic projections of fixed surface points of synthetic_frame(t) (same motion model:
    yaw, drift; points on the texture and the mouth corners/centre lines)."""
    period = 40.0
    yaw = 0.5 * math.sin(2 * math.pi * t / (1.7 * period))
    jaw = 0.5 + 0.5 * math.sin(2 * math.pi * t / (0.45 * period))
    cx = 0.5 + 0.06 * math.sin(2 * math.pi * t / (2.3 * period))
    cy = 0.5 + 0.04 * math.cos(2 * math.pi * t / (3.1 * period))
    rad = 0.36
    pts = list(_LM_CANON) + [(0.0, 0.35 - (0.04 + 0.16 * jaw)), (0.0, 0.35 + (0.04 + 0.16 * jaw))]
    c, s = math.cos(yaw), math.sin(yaw)
    out, valid = [], []
    for X, Y in pts:
        Z = -math.sqrt(max(0.0, 1 - X * X - Y * Y))
        nx, nz = c * X + s * Z, -s * X + c * Z
        out.append(((cx + rad * nx) * S, (cy + rad * Y) * S))
        valid.append(nz < -0.1)
    return torch.tensor(out, dtype=torch.float32), torch.tensor(valid)


class SphereAuxSource:
    """Auxiliary samples: sphere frames at times the cache does not contain (new yaw / jaw /
    position combinations), over the context of a random cached frame."""

    def __init__(self, dataset, first_frame: int = 1001, hole_dilate: float = 0.03) -> None:
        self.dataset = dataset
        self.first = first_frame
        self.S = dataset.size
        self.hole_dilate = hole_dilate

    num_landmarks = len(_LM_CANON) + 2
    fingerprint = "sphere-aux-v1"

    def plate_landmarks(self, frames):
        lm, v = zip(*(sphere_landmarks(int(f) - self.first, self.S) for f in frames.tolist()))
        return torch.stack(lm), torch.stack(v)

    def build_pool(self, epoch: int, n: int, seed: int) -> AuxPool:
        g = torch.Generator().manual_seed(seed * 7919 + epoch)
        ts = (10_000 + torch.randint(0, 5000, (n,), generator=g)).tolist()
        js = torch.randint(0, len(self.dataset), (n,), generator=g).tolist()
        w = FrameCacheWriter(None, list(range(n)), self.S, SYNTH_MAPS, expr_dim=2, hole=True)
        lms, vals = [], []
        for i, (t, j) in enumerate(zip(ts, js)):
            maps, _, e = synthetic_frame(t, self.S)
            ctx = self.dataset.get([j])
            hole = face_hole(torch.maximum(maps["mask_face"], ctx.cond["mask_face"]), self.hole_dilate)
            w.put(i, maps, ctx.target[0], hole=hole[0], expr=e)
            lm, v = sphere_landmarks(t, self.S)
            lms.append(lm)
            vals.append(v)
        return AuxPool(w.close(), torch.stack(lms), torch.stack(vals))


@pytest.fixture(scope="module")
def ds():
    return synthetic_cache(24, 32)


S2 = {"stage2.enabled": True, "stage2.start_step": 2, "stage2.warmup_steps": 1, "stage2.pool_size": 6,
      "stage2.pool_refresh": 3, "stage2.aux_per_step": 2, "stage2.head_size": 32, "stage2.head_base": 8,
      "stage2.disc_base": 8, "stage2.disc_layers": 2, "stage2.identity_size": 32, "stage2.identity_layers": 2,
      "stage2.head_pretrain_steps": 3, "stage2.head_pretrain_batch": 2}
BASE = {"steps": 8, "checkpoint_every": 5, "log_every": 2, "generator.expr_dim": 2}


def _w(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ sampling statistics
def test_expression_prior_fits_and_samples_the_tracked_distribution():
    rng = np.random.RandomState(0)
    a = rng.randn(400, 3) * [0.1, 0.2, 0.05] + [0.2, 0.5, 0.1]
    b = rng.randn(400, 3) * [0.05, 0.1, 0.1] + [0.8, 0.1, 0.4]
    prior = ExpressionPrior.fit([a, b], components=2, seed=0, exp_range=np.array([[0, 1]] * 3, np.float32))
    assert sorted(np.round(prior.weights, 2).tolist()) == [0.5, 0.5]
    centres = prior.means[np.argsort(prior.means[:, 0])]
    np.testing.assert_allclose(centres, [[0.2, 0.5, 0.1], [0.8, 0.1, 0.4]], atol=0.03)
    g = torch.Generator().manual_seed(1)
    x = prior.sample(4000, g, tracked_fraction=0.0, prior_fraction=0.0, prior_scale=1.0)
    ref = np.clip(np.concatenate([a, b]), 0, 1)
    np.testing.assert_allclose(x.mean(0), ref.mean(0), atol=0.02)
    np.testing.assert_allclose(x.std(0), ref.std(0), rtol=0.1)
    assert x.min() >= 0 and x.max() <= 1  # clipped to the model's range
    # Tracked rows come out as they are; same generator seed -> same samples.
    t = prior.sample(50, torch.Generator().manual_seed(2), tracked_fraction=1.0, prior_fraction=0.0, prior_scale=1)
    rows = np.clip(np.concatenate([a, b]), 0, 1).astype(np.float32)
    assert all(np.abs(rows - r).max(1).min() < 1e-6 for r in t)
    t2 = prior.sample(50, torch.Generator().manual_seed(2), tracked_fraction=1.0, prior_fraction=0.0, prior_scale=1)
    np.testing.assert_array_equal(t, t2)
    # The broad prior is wider than the data.
    w = prior.sample(4000, g, tracked_fraction=0.0, prior_fraction=1.0, prior_scale=1.5)
    assert (np.clip(w, 0, 1).std(0) > 0.9 * ref.std(0)).all()
    with pytest.raises(ConfigError):
        ExpressionPrior.fit([np.zeros((5, 3)), np.zeros((5, 4))])


def test_pose_delta_axes_and_image_shift():
    a = 0.3
    R = pose_delta(torch.tensor([[a, 0.0, 0.0], [0.0, a, 0.0], [0.0, 0.0, a]]))
    z = torch.tensor([0.0, 0.0, 1.0])
    np.testing.assert_allclose((R[0] @ z).numpy(), [math.sin(a), 0, math.cos(a)], atol=1e-6)  # yaw about Y
    np.testing.assert_allclose((R[1] @ torch.tensor([0.0, 1.0, 0.0])).numpy(), [0, math.cos(a), math.sin(a)],
                               atol=1e-6)  # pitch about X
    np.testing.assert_allclose((R[2] @ torch.tensor([1.0, 0.0, 0.0])).numpy(), [math.cos(a), math.sin(a), 0],
                               atol=1e-6)  # roll about Z
    img = torch.zeros(1, 1, 16, 16)
    img[0, 0, 5, 4] = 1
    out = shift_images(img, torch.tensor([[3.0, 2.0]]))
    assert out[0, 0, 7, 7] == pytest.approx(1.0) and out.sum() == pytest.approx(1.0)


def test_config_validation():
    with pytest.raises(ConfigError, match="start_step"):
        make_config("tiny", {**BASE, **S2, "stage2.start_step": 8})
    with pytest.raises(ConfigError, match="fractions"):
        make_config("tiny", {**BASE, **S2, "stage2.tracked_fraction": 0.7, "stage2.prior_fraction": 0.5})
    with pytest.raises(ConfigError, match="auxiliary parameter source"):
        Trainer(make_config("tiny", {**BASE, **S2}), synthetic_cache(6, 32), "/nonexistent-unused", meta())


# ------------------------------------------------------------------- gradient routing
def test_each_stage2_loss_reaches_the_right_modules(ds):
    cfg = make_config("tiny", {**BASE, **S2, "stage2.warmup_steps": 0})
    torch.manual_seed(0)
    model = PortraitGenerator(cfg.generator)
    s2 = Stage2(cfg.stage2, cfg.generator, SphereAuxSource(ds), torch.device("cpu"), seed=0)
    batch = ds.get([0, 1, 2, 3])
    out = model(batch.cond, batch.target, batch.expr)
    gp = s2.generator_pass(model, batch, out, step=2)
    assert set(gp.terms) == {"s2_landmark", "s2_adv", "s2_identity", "s2_mouth"}
    assert gp.aux.context is not None and gp.aux.target is None  # no ground truth for aux samples
    for name in gp.terms:
        # Recompute each term alone (same inputs) and check where its gradient goes.
        for m in (model, s2.head, s2.disc):
            m.zero_grad(set_to_none=True)
        only = {k: 0.0 for k in ("landmark", "adversarial", "identity", "mouth")}
        only[{"s2_landmark": "landmark", "s2_adv": "adversarial", "s2_identity": "identity",
              "s2_mouth": "mouth"}[name]] = 1.0
        for k, v in only.items():
            setattr(s2.cfg, k, v)
        out = model(batch.cond, batch.target, batch.expr)
        g = s2.generator_pass(model, batch, out, step=2)
        assert set(g.terms) == {name}
        g.total.backward()
        gen_grad = sum(float(p.grad.abs().sum()) for p in model.unet.parameters() if p.grad is not None)
        assert gen_grad > 0, name
        assert all(p.grad is None for p in s2.head.parameters()), name
        assert all(p.grad is None for p in s2.disc.parameters()), name
    # The head / discriminator updates touch only the head / discriminator.
    for k, v in (("landmark", 1.0), ("adversarial", 1.0)):
        setattr(s2.cfg, k, v)
    model.zero_grad(set_to_none=True)
    out = model(batch.cond, batch.target, batch.expr)
    g = s2.generator_pass(model, batch, out, step=2)
    terms = s2.aux_nets_backward(batch, out, g, step=2)
    assert set(terms) == {"s2_head", "s2_disc"}
    assert all(p.grad is None for p in model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s2.head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s2.disc.parameters())


# ---------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def s2_reference(ds, tmp_path_factory):
    t = Trainer(make_config("tiny", {**BASE, **S2}), ds, tmp_path_factory.mktemp("s2ref"), meta(),
                aux=SphereAuxSource(ds))
    res = t.fit(handle_signals=False)
    assert res.status == "completed" and res.step == 8
    assert {"s2_landmark", "s2_adv", "s2_head", "s2_disc"} <= set(t.history[-1])
    return t


def test_stage2_resume_is_exact(ds, s2_reference, tmp_path):
    cfg = make_config("tiny", {**BASE, **S2})
    t = Trainer(cfg, ds, tmp_path, meta(), aux=SphereAuxSource(ds))
    # Stop at the periodic checkpoint of step 5 (mid pool epoch, after the warm-up).
    res = t.fit(handle_signals=False, on_checkpoint=lambda tr, path: tr.request_stop())
    assert res.status == "interrupted"
    ck = Checkpoint.load(tmp_path / "checkpoint.pt")
    assert ck.step == 5 and set(ck.optimizer["stage2"]) >= {"head", "disc", "head_opt", "disc_opt"}
    torch.manual_seed(999)
    t2 = Trainer(cfg, ds, tmp_path, meta(), aux=SphereAuxSource(ds))
    assert t2.resume() and t2.step == 5
    assert t2.fit(handle_signals=False).step == 8
    ref = s2_reference
    assert _same(_w(t2.model), _w(ref.model))
    assert _same(_w(t2.stage2.head), _w(ref.stage2.head))
    assert _same(_w(t2.stage2.disc), _w(ref.stage2.disc))
    a, b = t2.stage2.disc_opt.state_dict()["state"], ref.stage2.disc_opt.state_dict()["state"]
    assert all(torch.equal(a[i]["exp_avg_sq"], b[i]["exp_avg_sq"]) for i in a)
    # Another auxiliary source cannot resume this run.
    other = SphereAuxSource(ds)
    other.fingerprint = "different"
    with pytest.raises(ConfigError, match="auxiliary"):
        Trainer(cfg, ds, tmp_path, meta(), aux=other).resume()
    # The inference export carries no stage-2 state.
    m = Checkpoint.load(t2.export_model())
    assert m.optimizer is None and not any(k.startswith(("head", "disc")) for k in m.model)


def test_stage2_off_is_stage1_bit_for_bit(ds, s2_reference, tmp_path):
    plain = Trainer(make_config("tiny", BASE), ds, tmp_path / "a", meta())
    plain.fit(handle_signals=False)
    # Stage-2 settings present but disabled, and a source passed: nothing changes.
    off = {k: v for k, v in S2.items() if k != "stage2.enabled"}
    t = Trainer(make_config("tiny", {**BASE, **off}), ds, tmp_path / "b", meta(), aux=SphereAuxSource(ds))
    t.fit(handle_signals=False)
    assert t.stage2 is None and _same(_w(t.model), _w(plain.model))
    # With stage 2 on from step 2, the first 2 steps are exactly stage 1's (the head and
    # discriminator draw no numbers from the generator's RNG streams) and the rest differ.
    p2 = Trainer(make_config("tiny", {**BASE, "steps": 2}), ds, tmp_path / "c", meta())
    p2.fit(handle_signals=False)
    s2 = Trainer(make_config("tiny", {**BASE, **S2}), ds, tmp_path / "d", meta(), aux=SphereAuxSource(ds))
    s2.cfg.steps = 2
    s2.fit(handle_signals=False)
    assert _same(_w(s2.model), _w(p2.model))
    assert not _same(_w(s2_reference.model), _w(plain.model))


def test_stage1_checkpoint_continues_into_stage2(ds, tmp_path):
    """"stage 1 + N steps of stage 2": a stage-1 run's checkpoint at step k <= start_step
    resumes under a config that switches stage 2 on."""
    t = Trainer(make_config("tiny", {**BASE, "steps": 2}), ds, tmp_path, meta())
    t.fit(handle_signals=False)
    t2 = Trainer(make_config("tiny", {**BASE, **S2}), ds, tmp_path, meta(), aux=SphereAuxSource(ds))
    assert t2.resume() and t2.step == 2
    assert t2.fit(handle_signals=False).step == 8 and "s2_landmark" in t2.history[-1]


def test_stage2_mid_step_emergency_checkpoint_is_exact(ds, s2_reference, tmp_path):
    """A checkpoint requested inside a stage-2 step (submitit's checkpoint()) holds that step's
    start -- generator, landmark head, discriminator (incl. its spectral-norm state) -- exactly."""
    from engine.neural.train import checkpoint_active_trainer

    calls = {"n": 0}

    class Abort(Exception):
        pass

    def hook(module, args, output):
        if isinstance(module, PortraitGenerator):
            calls["n"] += 1
            if calls["n"] == 8:  # steps 0-1 run 1 forward, stage-2 steps 2: forward 8 = step 4's aux pass
                assert checkpoint_active_trainer() is not None
                raise Abort

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        with pytest.raises(Abort):
            Trainer(make_config("tiny", {**BASE, **S2}), ds, tmp_path, meta(), aux=SphereAuxSource(ds)).fit(
                handle_signals=False)
    finally:
        handle.remove()
    assert Checkpoint.load(tmp_path / "checkpoint.pt").step == 4
    t = Trainer(make_config("tiny", {**BASE, **S2}), ds, tmp_path, meta(), aux=SphereAuxSource(ds))
    assert t.resume() and t.fit(handle_signals=False).step == 8
    assert _same(_w(t.model), _w(s2_reference.model))
    assert _same(_w(t.stage2.disc), _w(s2_reference.stage2.disc))
    assert _same(_w(t.stage2.head), _w(s2_reference.stage2.head))


def test_draft_s2_preset_smoke(tmp_path):
    """The shipped "stage 1 + N steps of stage 2" preset, reduced to 32 px and 3 steps."""
    from engine.neural.perceptual import weights_available
    from engine.neural.train import preset_config

    base = preset_config("draft_s2")
    assert base.stage2.enabled and 0 < base.stage2.start_step < base.steps
    ov = {"steps": 3, "checkpoint_every": 1, "generator.image_size": 32, "loss.perceptual_size": 32,
          "data.clips_per_batch": 1, "stage2.start_step": 1, "stage2.warmup_steps": 0, "stage2.pool_size": 4,
          "stage2.identity_size": 32, "stage2.head_pretrain_steps": 2}
    if not weights_available():
        ov["loss.perceptual"] = 0.0
    data = synthetic_cache(6, 32)
    t = Trainer(make_config("draft_s2", {**ov, "generator.expr_dim": 2}), data, tmp_path, meta(),
                aux=SphereAuxSource(data))
    res = t.fit(handle_signals=False)
    assert res.status == "completed" and res.step == 3
    assert {"s2_landmark", "s2_adv", "s2_identity", "s2_mouth", "s2_head", "s2_disc"} <= set(t.history[-1])
    assert all(torch.isfinite(p).all() for p in t.model.parameters())


def test_feature_stats_fallback_without_vgg_weights(monkeypatch):
    import engine.neural.perceptual as perceptual
    from engine.neural.stage2 import FeatureStats, _stats_distance

    monkeypatch.setattr(perceptual, "weights_available", lambda: False)
    fs = FeatureStats(layers=2, size=32)
    assert fs.vgg is None
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    m = torch.zeros(2, 1, 32, 32)
    m[..., 8:24, 8:24] = 1
    same = _stats_distance(fs(x, m), fs(x.detach(), m))
    other = _stats_distance(fs(x, m), fs(x.detach() * 0.5, m))
    assert float(same.detach()) < 1e-6 < float(other.detach())
    other.backward()
    assert x.grad is not None and x.grad[..., :4, :4].abs().sum() == 0  # only the masked region counts
