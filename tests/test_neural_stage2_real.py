"""Stage 2 and offline fine-tuning on a real face: the embedded demo plate (engine/demo.py),
tracked with the built-in face model -- auxiliary parameters (pose ranges, re-centred crops,
landmarks on the rendered face, drive rows used as they are) and FinetuneStage (the base
model file is untouched, a new per-shot model with provenance is written and renders)."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from engine.errors import ConfigError
from engine.face.camera import axis_angle_to_matrix
from engine.face.fit import matrix_to_axis_angle
from engine.face.params import FrameParams
from engine.face.track import track_media
from engine.face.tracking_file import SUFFIX, load_tracking
from engine.neural.checkpoint import Checkpoint, ModelMeta
from engine.neural.dataset_build import CacheBuildConfig, build_frame_cache
from engine.neural.stage2 import aux_source_from_tracking
from engine.neural.train import Trainer, make_config
from engine.util.hashing import file_sha256

N = 30
S2 = {"stage2.enabled": True, "stage2.start_step": 0, "stage2.warmup_steps": 1, "stage2.pool_size": 12,
      "stage2.head_size": 32, "stage2.head_base": 8, "stage2.disc_base": 8, "stage2.disc_layers": 2,
      "stage2.identity_size": 32, "stage2.identity_layers": 2, "stage2.head_pretrain_steps": 3,
      "stage2.head_pretrain_batch": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from engine.demo import demo_frames
    from engine.io import ReviewMovieWriter

    root = tmp_path_factory.mktemp("s2demo")
    plate = root / "astronaut.mp4"
    with ReviewMovieWriter(plate, Fraction(25), (256, 256), crf=12) as mov:
        for frame in demo_frames(N):
            mov.write(frame)
    trk = root / f"demo{SUFFIX}"
    track_media(plate, Fraction(25)).write(trk)
    tr = load_tracking(trk)
    actor = root / "actor"
    cache = build_frame_cache(tr, plate, actor / "cache", CacheBuildConfig(size=32, batch=10))
    return {"root": root, "plate": plate, "tracking": trk, "tr": tr, "cache": cache, "actor": actor}


def _cfg(cache, **extra):
    return make_config("tiny", {"generator.expr_dim": cache.expr_dim, "steps": 4, **S2, **extra})


def test_aux_parameters_on_a_real_face(demo):
    cache, tr = demo["cache"], demo["tr"]
    cfg = _cfg(cache, **{"stage2.yaw_deg": 20.0, "stage2.pitch_deg": 10.0, "stage2.roll_deg": 5.0})
    train = list(range(27))
    src = aux_source_from_tracking(demo["tracking"], cache, train, cfg)
    plate = FrameParams.from_tracking(tr)
    g = torch.Generator().manual_seed(0)
    params, j, rot0 = src.sample_params(400, g)
    assert set(j.tolist()) <= set(train)  # contexts never come from held-out frames
    # Pose perturbation in model axes, within the configured ranges, and spanning them.
    R0 = axis_angle_to_matrix(torch.as_tensor(plate.rotation[src.pidx[j]]))
    R1 = axis_angle_to_matrix(torch.as_tensor(params.rotation))
    delta = R0.transpose(1, 2) @ R1
    ang = np.degrees(matrix_to_axis_angle(delta).norm(dim=-1).numpy())
    assert ang.max() <= np.sqrt(20 ** 2 + 10 ** 2 + 5 ** 2) + 0.1 and np.percentile(ang, 90) > 10
    yaw = np.degrees(np.arcsin(delta[:, 0, 2].clamp(-1, 1).numpy()))  # Ry Rx Rz: R[0,2] = sin(yaw) cos(pitch)...
    assert yaw.min() < -12 and yaw.max() > 12
    # Expressions: inside the model's range, spread like the tracked ones.
    lo, hi = tr.face_model().exp_range.T
    assert (params.expression >= lo - 1e-6).all() and (params.expression <= hi + 1e-6).all()
    assert (params.expression.std(0) > 0.5 * plate.expression.std(0)).all()
    # The pool: recentred crops keep the face where it was; landmarks lie on the rendered face.
    pool = src.build_pool(0, 12, seed=0)
    b, lm, valid = pool.get(list(range(12)))
    plm, _ = src.plate_landmarks(torch.as_tensor(cache.frame_numbers[:12]))
    assert (lm.mean(1) - plm.mean(1).mean(0)).abs().max() < 0.15 * cache.size
    face = (b.cond["mask_face"] + b.cond["mask_mouth"]).clamp(0, 1)[:, 0]
    ix = lm.floor().long().clamp(0, cache.size - 1)
    on = face[torch.arange(12)[:, None], ix[..., 1], ix[..., 0]]
    assert float((on * valid).sum() / valid.sum()) > 0.6
    assert (b.hole >= (b.cond["mask_face"] > 0.5).float()).all()  # the hole covers the new face
    assert b.target is None and b.context.shape == (12, 3, cache.size, cache.size)
    # Offline mode: drive rows on training frames are used exactly (expression and pose).
    # (a drive over the training frames: held-out frames never become contexts.)
    dp = plate.select(train)
    drive = dp.with_(expression=np.clip(dp.expression * 1.5, lo, hi).astype(np.float32))
    cfg_d = _cfg(cache, **{"stage2.drive_fraction": 1.0, "stage2.tracked_fraction": 0.0,
                           "stage2.prior_fraction": 0.0})
    src_d = aux_source_from_tracking(demo["tracking"], cache, train, cfg_d, drive=[drive])
    p2, j2, _ = src_d.sample_params(50, torch.Generator().manual_seed(1))
    rows = src_d.pidx[j2]  # plate params row == drive row here
    np.testing.assert_allclose(p2.expression, drive.expression[rows], atol=1e-6)
    np.testing.assert_allclose(p2.rotation, drive.rotation[rows], atol=1e-5)


def test_finetune_writes_a_new_model_and_leaves_the_base_untouched(demo):
    from engine.neural.online import CropRenderer
    from engine.stages.finetune import FinetuneConfig, FinetuneStage, finetune_model, params_sha256

    cache, tr, actor = demo["cache"], demo["tr"], demo["actor"]
    meta = ModelMeta(actor_id="astronaut", face_model_id=tr.face_model_id, consent="public-domain test image",
                     media_hashes={"astronaut.mp4": tr.media_sha256})
    base_cfg = make_config("tiny", {"generator.expr_dim": cache.expr_dim, "steps": 3})
    t = Trainer(base_cfg, cache, actor, meta)
    t.fit(handle_signals=False)
    base = t.export_model(actor / "model.pt")
    before = file_sha256(base)
    plate = FrameParams.from_tracking(tr)
    lo, hi = tr.face_model().exp_range.T
    drive = plate.with_(expression=np.clip(plate.expression[::-1] * 1.3, lo, hi).astype(np.float32))
    cfg = FinetuneConfig(steps=3, warmup_steps=1, checkpoint_every=2,
                         overrides={k: v for k, v in S2.items() if k not in ("stage2.enabled", "stage2.start_step",
                                                                             "stage2.warmup_steps")})
    out = demo["root"] / "shots" / "sh010" / "model_offline.pt"
    with pytest.raises(ConfigError, match="base model"):
        finetune_model(base, drive, demo["tracking"], base, config=cfg)
    stage = FinetuneStage(base, drive, demo["tracking"], out, config=cfg)
    assert stage.outputs() == {"model": out} and "drive_sha256" in stage.params()
    from engine.pipeline import ExecutorConfig, run_stages
    run_stages([stage], ExecutorConfig(kind="debug"))  # the pipeline path: run(ctx) -> finetune_model
    assert out.is_file()
    assert file_sha256(base) == before  # the base model is never modified
    m, b = Checkpoint.load(out), Checkpoint.load(base)
    assert m.kind == "model" and m.meta.actor_id == "astronaut" and m.meta.consent == meta.consent
    ft = m.meta.provenance["finetune"]
    assert ft["base_model_sha256"] == before and ft["drive_sha256"] == params_sha256(drive)
    assert m.train_config["stage2"]["enabled"] and m.train_config["stage2"]["drive_fraction"] == 0.6
    assert any(not torch.equal(m.model[k], b.model[k]) for k in b.model)
    assert not (out.parent / f".{out.name}.work").exists()  # the work checkpoint is cleaned up
    # The per-shot model renders in online mode like any actor model.
    r = CropRenderer.from_checkpoint(out, tr.face_model(), device="cpu")
    frame = np.full((256, 256, 3), 0.5, np.float32)
    crop = r.render(drive, [0, 1], [frame, frame])
    assert crop.rgb.shape == (2, 3, 32, 32) and torch.isfinite(crop.composite).all()
