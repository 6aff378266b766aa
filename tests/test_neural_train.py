"""Trainer: presets + overrides, exact resume after SIGKILL / SIGTERM / mid-step checkpoint,
learning on a synthetic overfit, checkpoint provenance and its one-line errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from engine import __version__
from engine.errors import ConfigError, PortraitError
from engine.neural.checkpoint import CHECKPOINT_SCHEMA, Checkpoint, CheckpointError, ModelMeta
from engine.neural.generator import PortraitGenerator
from engine.neural.perceptual import weights_available
from engine.neural.synthetic import synthetic_cache
from engine.neural.train import (Trainer, checkpoint_active_trainer, config_keys, make_config,
                                 preset_config)

REPO = Path(__file__).resolve().parents[1]
META = dict(actor_id="synth", face_model_id="sphere-v1", consent="synthetic test data, no person",
            media_hashes={"plate.mp4": "ab" * 32}, provenance={"shot": "sh010"})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def meta(**kw) -> ModelMeta:
    return ModelMeta(**{**META, **kw})


@pytest.fixture(scope="module")
def ds():
    return synthetic_cache(24, 32)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


TINY = {"steps": 8, "checkpoint_every": 3, "log_every": 2, "generator.expr_dim": 2}


@pytest.fixture(scope="module")
def reference(ds, tmp_path_factory):
    """Weights and optimiser state after an uninterrupted tiny run of 8 steps."""
    t = Trainer(make_config("tiny", TINY), ds, tmp_path_factory.mktemp("ref"), meta())
    res = t.fit(handle_signals=False)
    assert res.status == "completed" and res.step == 8
    return _weights(t.model), t.optimizer.state_dict()


# ------------------------------------------------------------------------------- config
def test_overrides_dotted_nested_and_typed():
    cfg = make_config("draft", {"optim.lr": "3e-4", "steps": 200, "generator": {"unet_base": 8},
                                "loss.perceptual": 0, "optim.betas": [0.5, 0.9], "amp": "false"})
    assert cfg.optim.lr == 3e-4 and cfg.steps == 200 and cfg.generator.unet_base == 8
    assert cfg.loss.perceptual == 0.0 and cfg.optim.betas == (0.5, 0.9) and cfg.amp is False
    assert preset_config("draft").optim.lr != 3e-4  # presets are not mutated
    assert "optim.lr" in config_keys(cfg) and "generator.cond_keys" in config_keys(cfg)


def test_bad_overrides_are_one_line_config_errors():
    with pytest.raises(ConfigError) as exc:
        make_config("draft", {"optim.learning_rate": 1e-3})
    msg = str(exc.value)
    assert "optim.learning_rate" in msg and "optim.lr" in msg and "\n" not in msg
    for bad in ({"steps": "many"}, {"steps": 1.5}, {"amp": "maybe"}, {"generator.image_size": 100},
                {"optim.lr": -1}, {"preset": "final"}):
        with pytest.raises(ConfigError):
            make_config("draft", bad)
    with pytest.raises(ConfigError, match="tiny, draft, final"):
        preset_config("huge")


# ---------------------------------------------------------------------- preset smoke tests
@pytest.mark.parametrize("preset,size,extra", [
    ("draft", 32, {}),
    # final at 64 px (5 downsamplings) with a smaller texture; everything else as shipped.
    ("final", 64, {"generator.texture_size": 128, "generator.mouth_texture_size": 64}),
])
def test_preset_smoke(preset, size, extra, tmp_path):
    base = preset_config(preset)
    ov = {"steps": 2, "checkpoint_every": 1, "generator.image_size": size, "loss.perceptual_size": size,
          "data.clips_per_batch": 1, **extra}
    if not weights_available():
        ov["loss.perceptual"] = 0.0
    cfg = make_config(preset, ov)
    assert cfg.generator.unet_depth == base.generator.unet_depth and cfg.loss.velocity == base.loss.velocity
    data = synthetic_cache(6, size)
    t = Trainer(cfg, data, tmp_path, meta())
    res = t.fit(handle_signals=False)
    assert res.status == "completed" and res.step == 2
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "train_log.jsonl").exists()
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    if cfg.loss.perceptual > 0:
        assert "perceptual" in t.history[-1]


# ------------------------------------------------------------------------- exact resume
def test_resume_after_sigkill_is_bit_identical(ds, reference, tmp_path):
    out = tmp_path / "run"
    script = tmp_path / "train_child.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys, time, torch
        sys.path.insert(0, {str(REPO)!r})
        torch.set_num_threads({torch.get_num_threads()})
        from engine.neural.checkpoint import ModelMeta
        from engine.neural.synthetic import synthetic_cache
        from engine.neural.train import Trainer, make_config
        t = Trainer(make_config("tiny", json.loads(sys.argv[2])), synthetic_cache(24, 32), sys.argv[1],
                    ModelMeta(**json.loads(sys.argv[3])))
        def hang(tr, path):
            if tr.step == 3:
                print("CHECKPOINTED", tr.step, flush=True)
                time.sleep(300)  # the parent kills us here: SIGKILL, no cleanup
        t.fit(on_checkpoint=hang)
    """))
    proc = subprocess.Popen([sys.executable, str(script), str(out), json.dumps(TINY), json.dumps(META)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("CHECKPOINTED 3"), (line, proc.stderr.read() if proc.poll() is not None else "")
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    torch.manual_seed(1234)  # scramble the global RNG: resume must restore it
    t = Trainer(make_config("tiny", TINY), ds, out, meta())
    assert t.resume() and t.step == 3
    res = t.fit(handle_signals=False)
    assert res.step == 8
    ref_w, ref_opt = reference
    assert _same(_weights(t.model), ref_w)
    opt = t.optimizer.state_dict()["state"]
    assert all(torch.equal(opt[i]["exp_avg_sq"], ref_opt["state"][i]["exp_avg_sq"]) for i in opt)


def test_sigterm_and_mid_step_checkpoint_resume_exactly(ds, reference, tmp_path):
    """SIGTERM -> checkpoint at the next step boundary and return 'interrupted'; a checkpoint
    requested from inside a step (as submitit's checkpoint() does) saves the step's start."""
    calls = {"n": 0, "saved": None}

    def mid_forward(module, args, output):
        if isinstance(module, PortraitGenerator):
            calls["n"] += 1
            if calls["n"] == 5:  # inside step 4 (0-based), after the forward
                calls["saved"] = checkpoint_active_trainer()
                os.kill(os.getpid(), signal.SIGTERM)

    handle = torch.nn.modules.module.register_module_forward_hook(mid_forward)
    try:
        t = Trainer(make_config("tiny", TINY), ds, tmp_path, meta())
        res = t.fit(handle_signals=True)
    finally:
        handle.remove()
    assert calls["saved"] is not None
    assert res.status == "interrupted" and res.step == 5  # finished the step, then stopped
    assert Checkpoint.load(tmp_path / "checkpoint.pt").step == 5
    t2 = Trainer(make_config("tiny", TINY), ds, tmp_path, meta())
    assert t2.resume() and t2.fit(handle_signals=False).step == 8
    assert _same(_weights(t2.model), reference[0])


def test_mid_step_checkpoint_alone_is_exact(ds, reference, tmp_path):
    """The emergency checkpoint taken mid-step 4 holds step 4's start; resuming from it is exact."""
    calls = {"n": 0}

    class Abort(Exception):
        pass

    def mid_forward(module, args, output):
        if isinstance(module, PortraitGenerator):
            calls["n"] += 1
            if calls["n"] == 5:
                assert checkpoint_active_trainer() is not None
                raise Abort  # the process dies right after the checkpoint

    handle = torch.nn.modules.module.register_module_forward_hook(mid_forward)
    try:
        with pytest.raises(Abort):
            Trainer(make_config("tiny", TINY), ds, tmp_path, meta()).fit(handle_signals=False)
    finally:
        handle.remove()
    assert Checkpoint.load(tmp_path / "checkpoint.pt").step == 4
    t = Trainer(make_config("tiny", TINY), ds, tmp_path, meta())
    assert t.resume() and t.fit(handle_signals=False).step == 8
    assert _same(_weights(t.model), reference[0])


# -------------------------------------------------------------------------- learning
def test_loss_decreases_on_synthetic_overfit(ds, tmp_path):
    cfg = make_config("tiny", {"steps": 200, "log_every": 1, "checkpoint_every": 1000,
                               "data.holdout_fraction": 0.0})
    t = Trainer(cfg, ds, tmp_path, meta())
    t.fit(handle_signals=False)

    def mean(key, entries):
        return sum(e[key] for e in entries) / len(entries)
    first, last = t.history[:10], t.history[-10:]
    assert mean("l1", last) < 0.6 * mean("l1", first), (first[0], last[-1])
    assert mean("loss", last) < 0.5 * mean("loss", first)


# ------------------------------------------------------------------------- checkpoints
def test_checkpoint_carries_provenance_and_config(ds, tmp_path):
    t = Trainer(make_config("tiny", {"steps": 2, "checkpoint_every": 1}), ds, tmp_path, meta())
    t.fit(handle_signals=False)
    c = Checkpoint.load(tmp_path / "checkpoint.pt")
    raw = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert raw["schema"] == CHECKPOINT_SCHEMA and raw["engine_version"] == __version__
    assert c.kind == "training" and c.step == 2
    assert c.meta.consent == META["consent"] and c.meta.face_model_id == "sphere-v1"
    assert c.meta.media_hashes == META["media_hashes"] and c.meta.provenance == {"shot": "sh010"}
    assert c.train_config["preset"] == "tiny" and c.generator_config["image_size"] == 32
    assert c.data_fingerprint == ds.fingerprint and c.optimizer and c.rng and c.sampler["position"] == 2
    model = t.export_model()
    m = Checkpoint.load(model)
    assert m.kind == "model" and m.optimizer is None and m.meta == c.meta
    with pytest.raises(CheckpointError, match="inference-only"):
        Trainer(make_config("tiny", {"steps": 2}), ds, tmp_path, meta()).resume(model)


def test_checkpoint_errors_are_one_line(ds, tmp_path):
    t = Trainer(make_config("tiny", {"steps": 1}), ds, tmp_path, meta())
    t.fit(handle_signals=False)
    path = tmp_path / "checkpoint.pt"
    errors = []
    with pytest.raises(ConfigError) as e:
        Checkpoint.load(path, expected_face_model_id="flame-2020")
    errors.append(e)
    with pytest.raises(ConfigError) as e:  # resuming with another face model
        Trainer(make_config("tiny", {"steps": 2}), ds, tmp_path, meta(face_model_id="flame-2020")).resume()
    errors.append(e)
    with pytest.raises(ConfigError, match="differs in optim.lr") as e:
        Trainer(make_config("tiny", {"steps": 2, "optim.lr": 0.1}), ds, tmp_path, meta()).resume()
    errors.append(e)
    with pytest.raises(ConfigError, match="different training media") as e:
        Trainer(make_config("tiny", {"steps": 2}), ds, tmp_path, meta(media_hashes={"x": "0"})).resume()
    errors.append(e)
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(path.read_bytes()[:2000])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    for bad in (truncated, garbage, other, tmp_path / "missing.pt"):
        with pytest.raises(CheckpointError) as e:
            Checkpoint.load(bad)
        errors.append(e)
    for e in errors:
        assert isinstance(e.value, PortraitError) and "\n" not in str(e.value), str(e.value)


def test_consent_is_required():
    with pytest.raises(ConfigError, match="consent"):
        meta(consent="  ").validate()


def test_time_limit_stops_with_a_checkpoint_and_a_model(tmp_path):
    from engine.neural.train import TrainSpec, run_training
    synthetic_cache(8, 32, tmp_path / "cache")
    spec = TrainSpec(cache=tmp_path / "cache", out_dir=tmp_path / "out", meta=meta(), preset="tiny",
                     overrides={"steps": 50, "time_limit_s": 1e-6})
    res = run_training(spec, handle_signals=False)
    assert res.status == "time_limit" and res.step == 1
    assert Checkpoint.load(tmp_path / "out" / "checkpoint.pt").step == 1
    assert res.model is not None and Checkpoint.load(res.model).kind == "model"
