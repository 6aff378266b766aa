"""Benchmark (issue 5): which stage-2 loss buys the expression gain, and which costs the fidelity.

    .venv/bin/python -m bench.neural_stage2_ablation --stage1 MODEL.pt --cache DIR --tracking FILE
        [--variants all,recon_only,...] [--s2-steps 600] [--frames 60] [--out DIR] [--reuse NAME=MODEL.pt]

Same protocol and the same stage-1 model as :mod:`bench.neural_stage2` (stage 1 + ``--s2-steps``
of stage 2 at learning-rate scale 0.5, prior from the plate only), one stage-1+2 model per
variant, stage 1+2 only (no offline fine-tuning). For each: held-out self-reenactment PSNR of
the face (the plate's last 10 %) and the cross-reenactment expression error (re-tracked renders
against the transferred targets, mm) on three drivers. Variants switch stage-2 losses off or
change the landmark head:

* ``recon_only``: every stage-2 loss at 0 -- reconstruction continues at the stage-2 learning
  rate with nothing else (is the PSNR drop the learning-rate restart?);
* ``landmark_mouth``: geometric terms only (landmark head + mouth interior), no discriminator
  or identity statistics;
* ``no_landmark``: discriminator + identity + mouth, no landmark head;
* ``all``: the default stage 2;
* ``head128``: the default stage 2 with a stronger landmark head (128 px input, 32 channels,
  2,000 pre-training steps: 0.43 px held-out landmark error at 128 px against 1.34 px for the
  default 64 px / 500 steps).

``--reuse NAME=MODEL.pt`` takes an already trained stage-1+2 model for a variant (e.g. the
``stage12_plate.pt`` of a :mod:`bench.neural_stage2` run for ``all``: same call, same config).
Writes ``bench/results/<name>.json`` and a plot of PSNR drop against expression-error reduction
(``bench/results/<name>.png``) with the issue's goal region.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

from bench import neural_stage2 as NB

ROOT = NB.ROOT
VARIANTS: dict[str, dict[str, str]] = {
    "recon_only": {"stage2.landmark": "0", "stage2.adversarial": "0", "stage2.identity": "0", "stage2.mouth": "0"},
    "landmark_mouth": {"stage2.adversarial": "0", "stage2.identity": "0"},
    "no_landmark": {"stage2.landmark": "0"},
    "all": {},
    "head128": {"stage2.head_size": "128", "stage2.head_base": "32", "stage2.head_pretrain_steps": "2000"},
}
DRIVERS = ("DPE__d.mp4", "EDTalk__expression_source.mp4", "EDTalk__mouth_source.mp4")
log = logging.getLogger("bench.neural_stage2_ablation")


def _plot(path: Path, rows: dict[str, dict]) -> Path:
    """PSNR drop (dB, y) against expression-error reduction (%, x), the goal region shaded."""
    import cv2
    from engine.util.atomic import atomic_path

    W, H, m = 760, 520, 70
    img = np.full((H, W, 3), 255, np.uint8)
    xs = [r["expression_reduction_pct"] for r in rows.values()]
    ys = [r["psnr_drop_db"] for r in rows.values()]
    x0, x1 = min(-2.0, min(xs) - 2), max(25.0, max(xs) + 2)
    y0, y1 = min(-0.3, min(ys) - 0.1), max(1.5, max(ys) + 0.1)

    def px(x: float, y: float) -> tuple[int, int]:
        return (int(m + (x - x0) / (x1 - x0) * (W - 2 * m)), int(H - m - (y - y0) / (y1 - y0) * (H - 2 * m)))

    cv2.rectangle(img, px(20, y0), px(x1, 0.5), (200, 235, 200), -1)
    cv2.putText(img, "goal", px(21, 0.4), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 120, 0), 1, cv2.LINE_AA)
    cv2.line(img, px(x0, 0), px(x1, 0), (180, 180, 180), 1)
    cv2.line(img, px(0, y0), px(0, y1), (180, 180, 180), 1)
    cv2.rectangle(img, px(x0, y0), px(x1, y1), (0, 0, 0), 1)
    for v in range(int(math.ceil(x0 / 5) * 5), int(x1) + 1, 5):
        cv2.putText(img, str(v), (px(v, y0)[0] - 8, H - m + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    for v in np.arange(math.ceil(y0 / 0.25) * 0.25, y1 + 1e-6, 0.25):
        cv2.putText(img, f"{v:.2f}", (m - 45, px(x0, v)[1] + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    cv2.putText(img, "expression error reduction vs stage 1 (%)", (W // 2 - 160, H - 20),
                cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "held-out face PSNR drop (dB)", (10, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                cv2.LINE_AA)
    for name, r in rows.items():
        p = px(r["expression_reduction_pct"], r["psnr_drop_db"])
        cv2.circle(img, p, 5, (200, 60, 0), -1)
        cv2.putText(img, name, (p[0] + 8, p[1] - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (60, 20, 0), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        ok, buf = cv2.imencode(".png", img)
        Path(tmp).write_bytes(buf.tobytes())
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage1", type=Path, default=NB.DRAFT / "train_neural_draft" / "model.pt")
    ap.add_argument("--cache", type=Path, required=False, default=None)
    ap.add_argument("--tracking", type=Path, required=False, default=None)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--s2-steps", type=int, default=600)
    ap.add_argument("--s2-lr-scale", type=float, default=0.5)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--track-cache", type=Path, default=Path("/tmp/portrait_bench_cache"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/portrait_bench/neural_stage2_ablation"))
    ap.add_argument("--reuse", action="append", default=[], metavar="NAME=MODEL.pt")
    ap.add_argument("--name", default="neural_stage2_ablation")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if not NB.PLATE.is_file():
        print(f"skipped: {NB.PLATE} not found (../shared is needed)")
        return 0
    unknown = [v for v in args.variants.split(",") if v and v not in VARIANTS]
    if unknown:
        print(f"error: unknown variant(s) {unknown}; valid: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    if not args.stage1.is_file() or args.cache is None or args.tracking is None:
        print("error: needs --stage1 MODEL.pt, --cache DIR and --tracking FILE (see bench.neural_stage2)",
              file=sys.stderr)
        return 2
    import torch
    torch.set_num_threads(args.threads)

    from engine.benchmark import BenchResult, peak_rss_mib
    from engine.face.model import FaceModelConfig
    from engine.face.tracking_file import load_tracking
    from engine.neural.data import FrameCache, split_holdout
    from engine.neural.perceptual import STLPIPS, weights_available
    from engine.stages.finetune import FinetuneConfig, finetune_model

    t_all = time.perf_counter()
    reuse = dict(kv.split("=", 1) for kv in args.reuse)
    plate = load_tracking(args.tracking)
    cache = FrameCache.open(args.cache)
    _, test_idx = split_holdout(len(cache), 0.1)
    metric = STLPIPS() if weights_available() else None
    face_model = plate.face_model()
    spec = FaceModelConfig(kind="ict", path=str(NB.ICT))
    drives = {}
    for clip in DRIVERS:
        _, _, res, idx = NB.transfer_driver(clip, plate, args.track_cache, spec, args.frames)
        drives[clip] = (res, idx, NB._plate_frames([int(res.params.frame_numbers[i]) for i in idx]))

    def measure(model: Path) -> dict:
        out = {"heldout": NB._heldout(model, cache, test_idx, metric), "expression_mm": {}}
        for clip, (res, idx, plates) in drives.items():
            err, _ = NB._render_eval(model, res, idx, plates, face_model)
            out["expression_mm"][clip] = round(float(err["landmark_error_mm"]), 4)
        out["expression_mm_mean"] = round(float(np.mean(list(out["expression_mm"].values()))), 4)
        return out

    ref = measure(args.stage1)
    rows: dict[str, dict] = {}
    for name in [v for v in args.variants.split(",") if v]:
        path = Path(reuse[name]) if name in reuse else args.out / "models" / f"stage12_{name}.pt"
        t0 = time.perf_counter()
        if not path.is_file():
            finetune_model(args.stage1, None, plate, path, cache=args.cache,
                           config=FinetuneConfig(steps=args.s2_steps, drive_fraction=0.0, lr_scale=args.s2_lr_scale,
                                                 warmup_steps=min(100, args.s2_steps // 4),
                                                 overrides=VARIANTS[name]))
        r = measure(path)
        r.update(overrides=VARIANTS[name], model=str(path), reused=name in reuse,
                 train_wall_s=round(time.perf_counter() - t0, 1),
                 psnr_drop_db=round(ref["heldout"]["psnr_face"] - r["heldout"]["psnr_face"], 3),
                 expression_reduction_pct=round(100 * (1 - r["expression_mm_mean"] / ref["expression_mm_mean"]), 2))
        rows[name] = r
        log.info("%s: expression %.4f mm (%.1f %%), PSNR drop %.2f dB", name, r["expression_mm_mean"],
                 r["expression_reduction_pct"], r["psnr_drop_db"])
    plot = _plot(ROOT / "bench" / "results" / f"{args.name}.png", rows)
    figures = {"stage1": str(args.stage1), "s2_steps": args.s2_steps, "s2_lr_scale": args.s2_lr_scale,
               "frames_per_driver": args.frames, "heldout_frames": len(test_idx), "reference_stage1": ref,
               "variants": rows, "plot": str(plot.relative_to(ROOT)),
               "wall_s": round(time.perf_counter() - t_all, 1), "peak_rss_mib": round(peak_rss_mib(), 1)}
    out = BenchResult(args.name, figures=figures).write()
    print(json.dumps({k: {"expr_pct": v["expression_reduction_pct"], "psnr_drop": v["psnr_drop_db"]}
                      for k, v in rows.items()}))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
