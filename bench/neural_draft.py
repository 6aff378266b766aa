"""Benchmark (issue 4): CPU draft actor model on a real plate vs the nearest-neighbour baseline.

    .venv/bin/python -m bench.neural_draft [--plate PATH] [--face-model ict|builtin]
        [--budget-min 30] [--size 128] [--threads 2] [--out DIR] [--name neural_draft]

1. Track the plate (cached in ``--out``; ICT model by default: it has teeth and a mouth
   interior, the generator's mouth branch needs them).
2. Build the frame cache of every usable frame at the draft size.
3. Hold out the last 10 % of the frames; train the ``draft`` preset on the first 90 % for at
   most ``--budget-min`` minutes of wall clock (the step count is sized from a measured
   step time so the cosine schedule completes; ``time_limit_s`` is the hard stop).
4. Evaluate on the held-out frames, side by side in this run: the trained model (online
   inference) and the nearest-neighbour baseline (training frame with the closest
   expression coefficients and head pose, its face pasted into the test plate crop).
   PSNR / SSIM / ST-LPIPS on the face and mouth regions; LMD: MediaPipe landmarks re-tracked
   on the rendered crop vs on the plate crop, px at 256. Peak RSS of the whole run.
Results: bench/results/<name>.json; comparison images (plate | render | error) under
bench/results/<name>/.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PLATE = SHARED / "media" / "actor" / "EDTalk__pose_source2.mp4"
ICT = SHARED / "models" / "ict_facekit" / "ict_face_model_light_basis.npz"


def _landmarker():
    """Image batch (B, 3, S, S) in [0, 1] -> (B, 478, 2) MediaPipe landmarks in S pixels
    (NaN where no face is found). Static mode: every frame on its own, as a reviewer would
    re-detect a render; crops are upscaled to 256 px, mediapipe's working size."""
    import cv2
    import torch

    from engine.face.landmarks import LandmarkConfig, LandmarkTracker

    tracker = LandmarkTracker(LandmarkConfig(static=True, max_faces=1))

    def run(batch):
        out = []
        for img in batch:
            S = img.shape[-1]
            u8 = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
            up = cv2.resize(u8, (256, 256), interpolation=cv2.INTER_CUBIC) if S != 256 else u8
            res = tracker.process(up)
            out.append(res.points[:, :2] * (S / 256.0))
        return torch.from_numpy(np.stack(out).astype(np.float32))
    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plate", type=Path, default=PLATE)
    ap.add_argument("--face-model", choices=("ict", "builtin"), default="ict")
    ap.add_argument("--tracking", type=Path, default=None, help="an existing tracking file of the plate")
    ap.add_argument("--budget-min", type=float, default=30.0)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/portrait_bench/neural_draft"))
    ap.add_argument("--name", default="neural_draft")
    ap.add_argument("--overrides", default="", help="extra train overrides as JSON")
    ap.add_argument("--steps", type=int, default=0,
                    help="schedule length (default: sized from a probe of the step time; the probe "
                         "is only as good as the machine is quiet while it runs)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if not args.plate.exists():
        print(f"error: plate {args.plate} not found (../shared is needed)", file=sys.stderr)
        return 2
    import torch
    torch.set_num_threads(args.threads)

    from engine.benchmark import BenchResult, peak_rss_mib
    from engine.face.model import FaceModelConfig
    from engine.face.track import TrackConfig, track_media
    from engine.face.tracking_file import load_tracking
    from engine.neural.checkpoint import ModelMeta
    from engine.neural.data import split_holdout
    from engine.neural.dataset_build import CacheBuildConfig, build_frame_cache
    from engine.neural.evaluate import NearestNeighbourBaseline, evaluate
    from engine.neural.infer import Renderer
    from engine.neural.perceptual import STLPIPS
    from engine.neural.train import Trainer, make_config

    t_all = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    spec = (FaceModelConfig(kind="ict", path=str(ICT)) if args.face_model == "ict" else None)
    t0 = time.perf_counter()
    tpath = args.tracking or args.out / f"{args.plate.stem}.{args.face_model}.tracking.npz"
    if tpath.exists():
        tracking = load_tracking(tpath)
    else:
        tracking = track_media(args.plate, config=TrackConfig(), face_model_spec=spec)
        tracking.write(tpath)
        tracking = load_tracking(tpath)
    track_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    cache_dir = args.out / f"cache_{tracking.face_model_id}_{args.size}"
    from engine.neural.data import FrameCache
    try:
        cache = FrameCache.open(cache_dir)
        if cache.source.get("tracking_sha256") is None or cache.size != args.size:
            raise ValueError
    except Exception:  # noqa: BLE001 -- any unreadable / stale cache is rebuilt
        cache = build_frame_cache(tracking, args.plate, cache_dir, CacheBuildConfig(size=args.size),
                                  progress=lambda d, n: print(f"[cache] {d}/{n}", file=sys.stderr)
                                  if d % 160 == 0 or d == n else None)
    cache_s = time.perf_counter() - t0
    train_idx, test_idx = split_holdout(len(cache), 0.1)

    budget = args.budget_min * 60.0
    ov = {"generator.image_size": args.size, "generator.expr_dim": cache.expr_dim, "threads": args.threads,
          "device": "cpu", "checkpoint_every": 500, "log_every": 50, "data.holdout_fraction": 0.1}
    ov.update(json.loads(args.overrides) if args.overrides else {})
    meta = ModelMeta(actor_id="edtalk_pose_source2", face_model_id=tracking.face_model_id,
                     consent="benchmark on public research footage (../shared/MEDIA.md)",
                     media_hashes={args.plate.name: tracking.media_sha256})
    run_dir = args.out / f"train_{args.name}"
    step_s = None
    if args.steps:
        steps = args.steps
    else:
        # Size the schedule from a measured step time: 12 steps (after 3 warm-up) of a throwaway trainer.
        probe = Trainer(make_config("draft", {**ov, "steps": 15}), cache, args.out / "probe", meta,
                        train_indices=train_idx)
        for s in range(3):
            probe.train_step(probe._batch(s, None))
        tp = time.perf_counter()
        for s in range(3, 15):
            probe.train_step(probe._batch(s, None))
        step_s = (time.perf_counter() - tp) / 12
        del probe
        steps = max(100, int(0.97 * budget / step_s))
    cfg = make_config("draft", {**ov, "steps": steps, "time_limit_s": budget})
    trainer = Trainer(cfg, cache, run_dir, meta, train_indices=train_idx)
    trainer.resume()
    res = trainer.fit()
    model_path = trainer.export_model()

    renderer = Renderer.from_checkpoint(model_path, device="cpu")
    nn_feats = np.concatenate([
        np.asarray(cache._arrays["expr"], np.float32),
        *[np.asarray(a, np.float32)[np.isin(tracking.frame_numbers, cache.frame_numbers)]
          for a in (tracking.fit.head_rotation, tracking.fit.translation)]], 1)
    baseline = NearestNeighbourBaseline(cache, train_idx, frame_features=nn_feats)
    metric = STLPIPS()
    lm = _landmarker()
    t0 = time.perf_counter()
    rep_model = evaluate(lambda b: renderer.render_batch(b).composite, cache, test_idx, out_dir=ROOT / "bench" /
                         "results" / args.name, name="model", metric=metric, landmarks=lm)
    rep_nn = evaluate(baseline, cache, test_idx, out_dir=ROOT / "bench" / "results" / args.name, name="nn_baseline",
                      metric=metric, landmarks=lm)
    eval_s = time.perf_counter() - t0

    def pick(r):
        return {k: round(v, 4) for k, v in r.summary.items()}
    m, b = pick(rep_model), pick(rep_nn)
    figures = {
        "plate": args.plate.name, "face_model": tracking.face_model_id, "size_px": args.size,
        "frames_total": len(cache), "frames_train": len(train_idx), "frames_heldout": len(test_idx),
        "heldout_frames": [int(cache.frame_numbers[test_idx[0]]), int(cache.frame_numbers[test_idx[-1]])],
        "budget_min": args.budget_min, "threads": args.threads, "step_s_probe": None if step_s is None else round(step_s, 4),
        "steps_planned": steps, "steps_run": res.step, "train_status": res.status, "train_wall_s": res.wall_s,
        "track_s": round(track_s, 1), "cache_s": round(cache_s, 1), "eval_s": round(eval_s, 1),
        "total_s": round(time.perf_counter() - t_all, 1), "peak_rss_mib": round(peak_rss_mib(), 1),
        "model": m, "nn_baseline": b,
        "goals": {"face_psnr_ge_26": m.get("psnr_face", 0) >= 26.0,
                  "beats_nn_psnr": m.get("psnr_face", 0) > b.get("psnr_face", 0),
                  "beats_nn_lmd": m.get("lmd", 1e9) < b.get("lmd", 0),
                  "peak_rss_lt_8gib": peak_rss_mib() < 8192},
        "train_log_tail": trainer.history[-3:], "config": {"preset": "draft", "overrides": {**ov, "steps": steps}},
    }
    path = BenchResult(args.name, figures=figures,
                       notes=["LMD: mean over 478 MediaPipe landmarks, render crop vs plate crop, px at 256",
                              "wall clock on a shared machine; train_wall_s includes contention"]).write()
    print(json.dumps({"model": m, "nn_baseline": b, "goals": figures["goals"]}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
