"""Benchmark (issue 5): generalisation of stage 2 and of the offline mode, by cross-reenactment.

    .venv/bin/python -m bench.neural_stage2 [--stage1 MODEL.pt] [--cache DIR] [--tracking FILE]
        [--drivers a.mp4,b.mp4,c.mp4] [--s2-steps 600] [--offline-steps 300] [--frames 100]
        [--eval-frames 0] [--prior plate|loo] [--threads 2] [--name neural_stage2] [--tiny]

Protocol (plate ``../shared/media/actor/EDTalk__pose_source2.mp4``, drivers from
``../shared/media/driving/``, at least three):

1. Stage 1 is the actor model of ``bench/neural_draft.py`` (``--stage1``; default
   ``/tmp/portrait_bench/neural_draft/train_neural_draft/model.pt``), with the frame cache
   and plate tracking it was trained from (same folder). Drivers are tracked with the same
   face-model kind (pipeline TrackStage, content-keyed cache ``--track-cache``) and transferred
   onto the plate's frames (:func:`engine.drive.transfer.transfer_video`, pose ``plate``).
2. Stage 1+2: ``--s2-steps`` of stage 2 from the stage-1 weights
   (:func:`engine.stages.finetune.finetune_model` with no drive). ``--prior plate``: the
   expression prior sees the plate's expressions only (and the broad Gaussian): no driver
   data at all. ``--prior loo``: one stage-1+2 model per driver whose prior also holds the
   *other* drivers' transferred expressions (leave-one-out: the evaluated driver is never seen).
3. Offline: per driver, ``--offline-steps`` of fine-tuning of the stage-1+2 model with that
   driver's transferred parameters (test-time adaptation; the base model file is untouched).
4. Expression error: each model renders the driven frames (``--frames`` evenly spaced usable
   frames per driver), the crops are pasted into the plate frames, re-tracked and re-fitted,
   and compared with the transferred targets (:func:`engine.drive.metrics.expression_error`:
   landmark error in mm of the model's landmarks, its static-bias-free "motion" variant,
   coefficient RMSE, mouth-opening correlation). Headline: ``landmark_error_mm``.
5. Realism / regression: held-out self-reenactment (the plate's last 10 %, never trained on)
   PSNR / SSIM / ST-LPIPS of the face region for every model (:func:`engine.neural.evaluate.evaluate`).
6. Contact sheets per driver (rows: frames; columns: driver crop | stage 1 | stage 1+2 |
   offline) under ``bench/results/<name>/``.

Goals (issue 5): stage 1+2 lowers the mean expression error by >= 20 % against stage 1;
offline lowers it further; held-out PSNR drops by <= 0.5 dB.

``--tiny`` is a smoke run of the whole protocol in a minute or two of CPU: when no stage-1
model exists it trains a 32 px ``tiny`` one on the first frames of the plate; a few steps,
frames and held-out frames. Its figures say nothing about quality (``"smoke": true``).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PLATE = SHARED / "media" / "actor" / "EDTalk__pose_source2.mp4"
ICT = SHARED / "models" / "ict_facekit" / "ict_face_model_light_basis.npz"
DRIVERS = ("DPE__d.mp4", "DPE__s.mp4", "EDTalk__expression_source.mp4", "EDTalk__mouth_source.mp4")
DRAFT = Path("/tmp/portrait_bench/neural_draft")
log = logging.getLogger("bench.neural_stage2")


def _track(media: Path, root: Path, fps, start: int, spec):
    from engine.face.tracking_file import load_tracking
    from engine.pipeline import ExecutorConfig, run_stages
    from engine.stages.track import TrackStage

    stage = TrackStage(media, root, fps=fps, start_frame=start, face_model=spec, name="track")
    run_stages([stage], ExecutorConfig(kind="debug"))
    return load_tracking(stage.tracking_path()), stage.tracking_path()


def _plate_frames(numbers: list[int]) -> dict[int, np.ndarray]:
    from engine.face.track import display_frames, open_media

    want = set(int(n) for n in numbers)
    src, _, _ = open_media(PLATE, Fraction(25), 1001)
    out = {}
    with src:
        for n, f in display_frames(src, min(want), max(want), "Rec.709"):
            if n in want:
                out[n] = f.astype(np.float32) / 255.0
    return out


def _driver_crops(media: Path, driver, positions: np.ndarray, size: int) -> list[np.ndarray]:
    """The driver's own face crop at each driving position (for the contact sheet)."""
    from engine.face.crop import warp_to_crop
    from engine.face.track import display_frames, open_media

    from engine.drive.timing import nearest_driver_frames

    idx = [int(i) for i in nearest_driver_frames(positions, len(driver))]
    src, _, _ = open_media(media, driver.fps, 0)
    frames = {}
    with src:
        for n, f in display_frames(src, min(idx), max(idx), "Rec.709"):
            if n in set(idx):
                frames[n] = f.astype(np.float32) / 255.0
    scale = size / float(driver.crops.size)
    return [warp_to_crop(frames[i], np.asarray(driver.crops.affine[i], np.float64) * scale, size) for i in idx]


def transfer_driver(clip: str, plate, track_cache: Path, spec, frames: int, *, max_plate_frames: int | None = None):
    """Track driving clip ``clip`` (``../shared/media/driving/``, cached), transfer it onto the
    plate's frames (pose ``plate``, 25 fps, from frame 1001) and pick ``frames`` evenly spaced
    usable frames: (media path, driver tracking, transfer result, picked row indices)."""
    from engine.drive.transfer import VideoDriveConfig, transfer_video

    media = SHARED / "media" / "driving" / clip
    driver, _ = _track(media, track_cache, None, 0, spec)
    n = min(int(math.floor(len(driver) / driver.fps * Fraction(25))), len(plate))
    numbers = np.arange(1001, 1001 + n)
    if max_plate_frames is not None:
        numbers = numbers[:max_plate_frames]
    res = transfer_video(plate, driver, numbers, plate_start_frame=1001, plate_fps=Fraction(25), pose="plate",
                         config=VideoDriveConfig())
    usable = np.flatnonzero(np.asarray(res.params.usable, bool))
    idx = usable[np.unique(np.linspace(0, len(usable) - 1, min(frames, len(usable))).round().astype(int))]
    return media, driver, res, idx


def _render_eval(model_path: Path, drive, idx: np.ndarray, plates: dict[int, np.ndarray], face_model):
    """Render frames ``idx`` of the drive, paste back, re-track: expression error + crops."""
    from engine.drive.metrics import expression_error
    from engine.face.crop import paste_back
    from engine.neural.online import CropRenderer

    r = CropRenderer.from_checkpoint(model_path, face_model, device="cpu")
    p = drive.params
    pasted, crops = [], []
    for a in range(0, len(idx), 8):
        sl = idx[a:a + 8]
        pl = [plates[int(p.frame_numbers[i])] for i in sl]
        out = r.render(p, sl, pl)
        for k in range(len(sl)):
            c = out.composite[k].permute(1, 2, 0).numpy()
            crops.append(c)
            pasted.append(paste_back(pl[k], c, out.affine[k]))
    err = expression_error(pasted, p.select(idx).expression, face_model, identity=p.identity, focal=p.focal,
                           principal_point=p.principal_point)
    return err, crops


def _heldout(model_path: Path, cache, test_idx, metric) -> dict:
    from engine.neural.evaluate import evaluate
    from engine.neural.infer import Renderer

    r = Renderer.from_checkpoint(model_path, device="cpu")
    rep = evaluate(lambda b: r.render_batch(b).composite, cache, test_idx, metric=metric)
    return {k: round(float(v), 4) for k, v in rep.summary.items()}


def _contact_sheet(path: Path, columns: list[list[np.ndarray]], labels: list[str]) -> Path:
    import cv2
    from engine.util.atomic import atomic_path

    rows = []
    for i in range(len(columns[0])):
        rows.append(np.concatenate([col[i] for col in columns], 1))
    sheet = (np.clip(np.concatenate(rows, 0), 0, 1) * 255 + 0.5).astype(np.uint8)
    S = columns[0][0].shape[0]
    head = np.full((24, sheet.shape[1], 3), 255, np.uint8)
    for k, lab in enumerate(labels):
        cv2.putText(head, lab, (k * S + 3, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.4 if S < 200 else 0.6, (0, 0, 0), 1,
                    cv2.LINE_AA)
    sheet = np.concatenate([head, sheet], 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        ok, buf = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError(f"cannot encode {path}")
        Path(tmp).write_bytes(buf.tobytes())
    return path


def _tiny_stage1(tracking, out: Path, size: int, frames: int) -> tuple[Path, Path]:
    """Smoke runs only: a tiny 32 px stage-1 model on the first ``frames`` usable plate frames."""
    from engine.neural.checkpoint import ModelMeta
    from engine.neural.dataset_build import CacheBuildConfig, build_frame_cache
    from engine.neural.train import Trainer, make_config

    usable = tracking.frame_numbers[np.asarray(tracking.usable, bool)][:frames]
    cache_dir = out / "tiny_stage1" / "cache"
    cache = build_frame_cache(tracking, PLATE, cache_dir, CacheBuildConfig(size=size, batch=8), frames=usable)
    meta = ModelMeta(actor_id="edtalk_pose_source2", face_model_id=tracking.face_model_id,
                     consent="benchmark on public research footage (../shared/MEDIA.md)",
                     media_hashes={PLATE.name: tracking.media_sha256})
    cfg = make_config("tiny", {"generator.image_size": size, "generator.expr_dim": cache.expr_dim, "steps": 20,
                               "device": "cpu"})
    t = Trainer(cfg, cache, out / "tiny_stage1", meta)
    t.fit(handle_signals=False)
    return t.export_model(), cache_dir


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage1", type=Path, default=DRAFT / "train_neural_draft" / "model.pt")
    ap.add_argument("--cache", type=Path, default=None, help="the stage-1 frame cache (default: next to the draft)")
    ap.add_argument("--tracking", type=Path, default=None, help="the plate tracking stage 1 was trained from")
    ap.add_argument("--drivers", default=",".join(DRIVERS))
    ap.add_argument("--s2-steps", type=int, default=600)
    ap.add_argument("--offline-steps", type=int, default=300)
    ap.add_argument("--frames", type=int, default=100, help="driven frames evaluated per driver")
    ap.add_argument("--eval-frames", type=int, default=0, help="held-out frames evaluated (0: all)")
    ap.add_argument("--prior", choices=("plate", "loo"), default="plate")
    ap.add_argument("--s2-lr-scale", type=float, default=0.5, help="stage-2 learning rates x the stage-1 run's")
    ap.add_argument("--s2-set", action="append", default=[], metavar="KEY=VALUE",
                    help="training-config override for stage 2 and offline (e.g. stage2.adversarial_recon=false)")
    ap.add_argument("--sheet-rows", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--track-cache", type=Path, default=Path("/tmp/portrait_bench_cache"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/portrait_bench/neural_stage2"))
    ap.add_argument("--name", default="neural_stage2")
    ap.add_argument("--tiny", action="store_true", help="smoke run (see the module doc)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if not PLATE.is_file():
        print(f"skipped: {PLATE} not found (../shared is needed)")
        return 0
    import torch
    torch.set_num_threads(args.threads)

    from engine.benchmark import BenchResult, peak_rss_mib
    from engine.face.model import FaceModelConfig
    from engine.face.tracking_file import load_tracking
    from engine.neural.checkpoint import Checkpoint
    from engine.neural.data import FrameCache, split_holdout
    from engine.neural.perceptual import STLPIPS, weights_available
    from engine.stages.finetune import FinetuneConfig, finetune_model

    if args.tiny:
        args.s2_steps, args.offline_steps = min(args.s2_steps, 4), min(args.offline_steps, 3)
        args.frames, args.eval_frames, args.sheet_rows = min(args.frames, 4), args.eval_frames or 4, 3
        if args.name == "neural_stage2":
            args.name = "neural_stage2_smoke"
    t_all = time.perf_counter()
    out = args.out / args.name
    out.mkdir(parents=True, exist_ok=True)
    results = ROOT / "bench" / "results"
    smoke = False
    stage1 = args.stage1
    if not stage1.is_file():
        if not args.tiny:
            path = BenchResult(args.name, figures={"status": "pending", "reason": f"no stage-1 model at {stage1} "
                                                   "(run bench/neural_draft.py first, or pass --stage1)"}).write()
            print(f"pending: no stage-1 model at {stage1}; wrote {path}")
            return 0
        smoke = True
    spec_ict = FaceModelConfig(kind="ict", path=str(ICT))
    if smoke:
        plate, plate_tpath = _track(PLATE, args.track_cache, Fraction(25), 1001, spec_ict)
        stage1, cache_dir = _tiny_stage1(plate, out, 32, 40)
    base = Checkpoint.load(stage1)
    fm_id = base.meta.face_model_id
    spec = spec_ict if fm_id.startswith("ict") else FaceModelConfig()
    if not smoke:
        plate_tpath = args.tracking
        if plate_tpath is None:
            cands = sorted(DRAFT.glob(f"{PLATE.stem}.*.tracking.npz"))
            plate_tpath = next((c for c in cands if load_tracking(c).face_model_id == fm_id), None)
        if plate_tpath is None:
            plate, plate_tpath = _track(PLATE, args.track_cache, Fraction(25), 1001, spec)
        else:
            plate = load_tracking(plate_tpath)
        cache_dir = args.cache or DRAFT / f"cache_{fm_id}_{base.generator_config['image_size']}"
    if plate.face_model_id != fm_id:
        print(f"error: plate tracking {plate_tpath} uses {plate.face_model_id}, the stage-1 model {fm_id}",
              file=sys.stderr)
        return 2
    cache = FrameCache.open(cache_dir)
    _, test_idx = split_holdout(len(cache), 0.1)
    if args.eval_frames:
        test_idx = test_idx[:args.eval_frames]
    face_model = plate.face_model()
    metric = STLPIPS() if weights_available() else None
    S = int(base.generator_config["image_size"])

    # -- drives
    drives: dict[str, dict] = {}
    for clip in [c for c in args.drivers.split(",") if c]:
        # the tiny stage-1 model only knows the first frames' contexts; any frame renders
        media, driver, res, idx = transfer_driver(clip, plate, args.track_cache, spec, args.frames,
                                                  max_plate_frames=max(args.frames * 2, 8) if smoke else None)
        drives[clip] = {"media": media, "driver": driver, "drive": res, "idx": idx}
    if len(drives) < 3 and not smoke:
        print("warning: the issue's protocol needs at least three drivers", file=sys.stderr)

    # -- models
    s2_over = dict(kv.split("=", 1) for kv in args.s2_set)
    def s2_model(tag: str, sets: list[np.ndarray]) -> Path:
        path = out / "models" / f"stage12_{tag}.pt"
        if not path.is_file():
            finetune_model(stage1, None, plate, path, cache=cache_dir, expression_sets=sets,
                           config=FinetuneConfig(steps=args.s2_steps, drive_fraction=0.0, lr_scale=args.s2_lr_scale,
                                                 warmup_steps=min(100, args.s2_steps // 4), overrides=s2_over))
        return path

    t0 = time.perf_counter()
    s12: dict[str, Path] = {}
    if args.prior == "plate":
        shared = s2_model("plate", [])
        s12 = {c: shared for c in drives}
    else:
        for c in drives:
            others = [d["drive"].params.expression[np.asarray(d["drive"].params.usable, bool)]
                      for k, d in drives.items() if k != c]
            s12[c] = s2_model("loo_" + Path(c).stem, others)
    s2_wall = time.perf_counter() - t0
    figures: dict = {"smoke": smoke, "plate": PLATE.name, "face_model": fm_id, "size_px": S,
                     "stage1": str(stage1), "stage1_step": int(base.step), "prior": args.prior,
                     "s2_steps": args.s2_steps, "offline_steps": args.offline_steps,
                     "s2_lr_scale": args.s2_lr_scale, "s2_overrides": s2_over,
                     "frames_per_driver": args.frames, "heldout_frames": len(test_idx),
                     "stage2_train_wall_s": round(s2_wall, 1), "drivers": {}}
    held = {"stage1": _heldout(stage1, cache, test_idx, metric)}
    for p in sorted(set(s12.values())):
        held[p.stem] = _heldout(p, cache, test_idx, metric)
    for clip, d in drives.items():
        t0 = time.perf_counter()
        off = out / "models" / f"offline_{Path(clip).stem}.pt"
        if not off.is_file():
            finetune_model(s12[clip], d["drive"], plate, off, cache=cache_dir,
                           config=FinetuneConfig(steps=args.offline_steps, warmup_steps=min(50, args.offline_steps // 4),
                                                 overrides=s2_over))
        off_wall = time.perf_counter() - t0
        p = d["drive"].params
        plates = _plate_frames([int(p.frame_numbers[i]) for i in d["idx"]])
        entry: dict = {"frames": int(len(d["idx"])), "offline_train_wall_s": round(off_wall, 1)}
        crops = {}
        for tag, path in (("stage1", stage1), ("stage12", s12[clip]), ("offline", off)):
            err, crops[tag] = _render_eval(path, d["drive"], d["idx"], plates, face_model)
            entry[tag] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in err.items()}
        entry["heldout_offline"] = _heldout(off, cache, test_idx, metric)
        rows = np.unique(np.linspace(0, len(d["idx"]) - 1, min(args.sheet_rows, len(d["idx"]))).round().astype(int))
        pos = d["drive"].positions[d["idx"][rows]]
        drv = _driver_crops(d["media"], d["driver"], pos, S)
        sheet = _contact_sheet(results / args.name / f"{Path(clip).stem}.png",
                               [drv] + [[crops[t][r] for r in rows] for t in ("stage1", "stage12", "offline")],
                               ["driver", "stage 1", "stage 1+2", "offline"] if S >= 96 else ["drv", "s1", "s12", "off"])
        entry["contact_sheet"] = str(sheet.relative_to(ROOT))
        figures["drivers"][clip] = entry
        print(f"{clip}: landmark error mm s1 {entry['stage1']['landmark_error_mm']} / s1+2 "
              f"{entry['stage12']['landmark_error_mm']} / offline {entry['offline']['landmark_error_mm']}", flush=True)

    def mean(tag: str, key: str = "landmark_error_mm") -> float | None:
        v = [e[tag][key] for e in figures["drivers"].values() if e[tag].get(key) is not None]
        return float(np.mean(v)) if v else None
    e1, e12, eo = mean("stage1"), mean("stage12"), mean("offline")
    psnr1 = held["stage1"].get("psnr_face")
    psnr12 = min(h.get("psnr_face", float("nan")) for k, h in held.items() if k != "stage1")
    red12 = (e1 - e12) / e1 if e1 and e12 is not None else None
    figures["heldout"] = held
    figures["summary"] = {
        "expression_error_mm": {"stage1": e1, "stage12": e12, "offline": eo},
        "motion_error_mm": {t: mean(t, "landmark_motion_error_mm") for t in ("stage1", "stage12", "offline")},
        "coefficient_rmse": {t: mean(t, "coefficient_rmse") for t in ("stage1", "stage12", "offline")},
        "stage12_reduction": red12, "offline_reduction_vs_stage12": (e12 - eo) / e12 if e12 and eo is not None else None,
        "heldout_psnr_face": {"stage1": psnr1, "stage12_min": psnr12},
        "heldout_psnr_drop_db": (psnr1 - psnr12) if psnr1 is not None else None}
    sm = figures["summary"]
    figures["goals"] = {"stage12_reduction_ge_20pct": bool(red12 is not None and red12 >= 0.2),
                        "offline_lower_than_stage12": bool(eo is not None and e12 is not None and eo < e12),
                        "psnr_drop_le_0_5db": bool(sm["heldout_psnr_drop_db"] is not None
                                                   and sm["heldout_psnr_drop_db"] <= 0.5),
                        "drivers_ge_3": len(drives) >= 3}
    figures["total_s"] = round(time.perf_counter() - t_all, 1)
    figures["peak_rss_mib"] = round(peak_rss_mib(), 1)
    notes = ["expression error: landmark_error_mm of the re-tracked, re-fitted renders vs the transferred targets "
             "(engine.drive.metrics.expression_error), mean over drivers",
             "held-out: the plate's last 10 % (never trained on), face-region PSNR"]
    if smoke:
        notes.append("SMOKE RUN (--tiny): tiny 32 px models, a few steps; the figures say nothing about quality")
    path = BenchResult(args.name, figures=figures, notes=notes).write()
    print(json.dumps({"summary": figures["summary"], "goals": figures["goals"]}, indent=1, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
