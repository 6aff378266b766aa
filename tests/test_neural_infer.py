"""Online inference from a checkpoint, speed measurement, held-out evaluation and the
nearest-neighbour baseline, the submitit training job's checkpoint/requeue glue."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from engine.errors import ConfigError
from engine.neural.checkpoint import ModelMeta
from engine.neural.data import split_holdout
from engine.neural.evaluate import NearestNeighbourBaseline, comparison_image, evaluate, region_masks
from engine.neural.generator import PortraitGenerator
from engine.neural.infer import Renderer, measure_speed
from engine.neural.synthetic import synthetic_cache
from engine.neural.train import Trainer, TrainSpec, make_config


pytestmark = pytest.mark.usefixtures("one_torch_thread")


META = ModelMeta(actor_id="synth", face_model_id="sphere-v1", consent="synthetic test data")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ds = synthetic_cache(20, 32)
    out = tmp_path_factory.mktemp("model")
    t = Trainer(make_config("tiny", {"steps": 30, "generator.expr_dim": 2}), ds, out, META)
    t.fit(handle_signals=False)
    return ds, t, t.export_model()


def test_renderer_reproduces_the_trained_model(trained):
    ds, t, model_path = trained
    r = Renderer.from_checkpoint(model_path, expected_face_model_id="sphere-v1")
    assert r.step == 30 and r.meta.consent == META.consent
    b = ds.get([18, 19])
    out = r.render_batch(b)
    t.model.eval()
    with torch.no_grad():
        ref = t.model(b.cond, b.target, b.expr)
    assert torch.equal(out.composite, ref.composite) and torch.equal(out.alpha, ref.alpha)
    assert out.frames.tolist() == [1019, 1020]
    with pytest.raises(ConfigError, match="face model"):
        Renderer.from_checkpoint(model_path, expected_face_model_id="other")
    # The training checkpoint renders too.
    r2 = Renderer.from_checkpoint(model_path.parent / "checkpoint.pt")
    assert torch.equal(r2.render_batch(b).composite, out.composite)
    chunks = list(r.render_dataset(ds, [0, 1, 2, 3, 4], batch_size=2))
    assert [len(o.frames) for _, o in chunks] == [2, 2, 1]


def test_measure_speed_reports_throughput_and_latency(trained):
    ds, _, model_path = trained
    r = Renderer.from_checkpoint(model_path)
    s = measure_speed(r, ds.get([0, 1, 2]), batch_size=4, warmup=1, iters=2, latency_iters=3)
    assert s["batch_size"] == 4 and s["frames_per_s"] > 0
    assert 0 < s["batch1_latency_ms_p50"] <= s["batch1_latency_ms_p90"]


def test_evaluate_writes_metrics_and_comparisons(trained, tmp_path, l1_metric):
    ds, _, model_path = trained
    r = Renderer.from_checkpoint(model_path)
    train, test = split_holdout(len(ds), 0.1)
    rep = evaluate(lambda b: r.render_batch(b).composite, ds, test, out_dir=tmp_path, name="model",
                   n_images=2, metric=l1_metric, batch_size=1)
    for k in ("psnr_face", "ssim_face", "lpips_face", "psnr_mouth", "psnr_full"):
        assert k in rep.summary and len(rep.per_frame[k]) == len(test)
    assert rep.frames == [1019, 1020] and len(rep.images) == 2
    saved = json.loads((tmp_path / "model_metrics.json").read_text())
    assert saved["summary"]["psnr_face"] == pytest.approx(rep.summary["psnr_face"])
    import cv2
    img = cv2.imread(str(rep.images[0]))
    assert img.shape == (32, 96, 3)
    # A perfect predictor: infinite-ish PSNR, SSIM 1.
    perfect = evaluate(lambda b: b.target, ds, test, metric=l1_metric)
    assert perfect.summary["psnr_face"] > 100 and perfect.summary["ssim_face"] == pytest.approx(1.0)


def test_nearest_neighbour_baseline(trained):
    ds, _, _ = trained
    train, test = split_holdout(len(ds), 0.1)
    nn = NearestNeighbourBaseline(ds, train)
    assert nn.use_expr
    # A training frame retrieves itself.
    assert nn.nearest(ds.get([5, 7])) == [5, 7]
    b = ds.get(test)
    pred = nn(b)
    masks = region_masks(b)
    hole = (pred != b.target).any(1, keepdim=True)
    assert pred.shape == b.target.shape
    assert not torch.any(hole & (masks["face"] == 0) & (torch.nn.functional.max_pool2d(masks["face"], 7, 1, 3) == 0))
    maps_nn = NearestNeighbourBaseline(ds, train, use_expr=False)
    assert not maps_nn.use_expr and maps_nn.nearest(ds.get([3])) == [3]


def test_comparison_image_layout():
    p = torch.zeros(3, 4, 5)
    r = torch.ones(3, 4, 5)
    img = comparison_image(p, r)
    assert img.shape == (4, 15, 3) and img.dtype == np.uint8
    assert img[:, :5].max() == 0 and img[:, 5:10].min() == 255


def test_train_job_checkpoint_requeues_and_resumes_exactly(tmp_path):
    """submitit glue: TrainJob.checkpoint() (called by submitit from its signal handler while
    training runs) saves the trainer's state and returns a resubmission that resumes."""
    import submitit
    from jobs.train_job import TrainJob
    cache = tmp_path / "cache"
    synthetic_cache(16, 32, cache)
    overrides = {"steps": 6, "checkpoint_every": 100}
    ref = TrainJob()(TrainSpec(cache=cache, out_dir=tmp_path / "ref", meta=META, preset="tiny", overrides=overrides))
    assert ref.status == "completed" and ref.model is not None

    spec = TrainSpec(cache=cache, out_dir=tmp_path / "run", meta=META, preset="tiny", overrides=overrides)
    state = {"n": 0, "delayed": None}

    class Preempted(Exception):
        pass

    def hook(module, args, output):
        if isinstance(module, PortraitGenerator) and module.training:
            state["n"] += 1
            if state["n"] == 4:
                state["delayed"] = TrainJob().checkpoint(spec)
                raise Preempted  # submitit exits the process after checkpoint()

    h = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        with pytest.raises(Preempted):
            TrainJob()(spec)
    finally:
        h.remove()
    delayed = state["delayed"]
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    delayed = pickle.loads(pickle.dumps(delayed))  # it travels through submitit's pickle
    res = delayed.result()
    assert res.status == "completed" and res.steps_run == 3  # resumed at step 3, not 0
    a = torch.load(ref.model, weights_only=True)["model"]
    b = torch.load(res.model, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_submit_training_through_submitit(tmp_path):
    from engine.pipeline.executor import ExecutorConfig
    from jobs.train_job import submit_training
    synthetic_cache(8, 32, tmp_path / "cache")
    spec = TrainSpec(cache=tmp_path / "cache", out_dir=tmp_path / "out", meta=META, preset="tiny",
                     overrides={"steps": 2})
    job = submit_training(spec, ExecutorConfig(kind="debug", folder=tmp_path / "submitit"))
    res = job.result()
    assert res.status == "completed" and res.step == 2 and (tmp_path / "out" / "model.pt").exists()
