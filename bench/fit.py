"""Benchmark: landmark fitting of the face model (engine.face.fit) on the CPU.

Figures per face model (``builtin`` always, ``ict`` when ../shared has it):

* ``synthetic/<model>``: a sequence synthesised from the model (known identity, expressions,
  head motion, focal; 0.5 px landmark noise) is fitted back: batch fit time per frame,
  stage timings, reprojection NME (against the noisy and the clean landmarks), focal error,
  coefficient errors; the online (frame-by-frame) fitter's time per frame and NME.
* ``real/<model>``: the first ``--real-frames`` frames of the primary actor plate
  (../shared/media/actor/EDTalk__pose_source2.mp4) tracked with mediapipe
  (engine.face.landmarks), then fitted: NME against mediapipe's landmarks (goal: mean <= 3%
  of the inter-ocular distance), time per frame, focal; mediapipe's own time per frame is
  recorded for the end-to-end budget (>= 25 fps on 2 cores for 256x256 plates).

Run: ``python -m bench.fit [--frames 500] [--real-frames 500] [--threads 1] [--models builtin,ict]``.
Without ../shared the real-footage part is skipped (noted in the result). If the face-model
loaders are unavailable, a random synthetic model stands in (noted).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from engine.benchmark import BenchResult, peak_rss_mib
from engine.errors import PortraitError
from engine.face.fit import (FitConfig, fit_frames_online, fit_sequence, head_to_camera_rotation,
                             project_landmarks)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ICT = SHARED / "models" / "ict_facekit" / "ict_face_model_light_basis.npz"
PLATE = SHARED / "media" / "actor" / "EDTalk__pose_source2.mp4"


def _load_models(names: list[str], notes: list[str]) -> dict:
    models = {}
    try:
        from engine.face.model import load_face_model
    except ImportError as exc:
        load_face_model = None
        notes.append(f"engine.face.model unavailable ({exc})")
    for name in names:
        if load_face_model is None:
            break
        if name == "ict" and not ICT.exists():
            notes.append(f"ict skipped: {ICT} not found")
            continue
        try:
            models[name] = load_face_model(name, ICT if name == "ict" else None)
        except PortraitError as exc:
            notes.append(f"{name} model not loadable: {exc}")
    if not models:
        # a random stand-in model (the unit tests' one), so that timings still mean something
        import importlib.util
        spec = importlib.util.spec_from_file_location("_fit_tests", REPO / "tests" / "test_face_fit.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        models["synthetic"] = mod.make_model()
        notes.append("no face model loadable: used the unit tests' random synthetic model")
    return models


def _synthetic_sequence(model, n: int, seed: int = 0, focal: float = 900.0, size=(256, 256)) -> dict:
    """Smooth random expressions (a third of the coefficients active), +-30 deg yaw, 0.5 px noise."""
    rng = np.random.default_rng(seed)
    k_id, k_exp = model.id_basis.shape[0], model.exp_basis.shape[0]
    id_std = np.asarray(getattr(model, "id_std", np.ones(k_id)), np.float64)
    ident = rng.normal(size=k_id) * 0.7 * id_std
    tt = np.arange(n) / 25.0
    exp = np.zeros((n, k_exp))
    rng_lo, rng_hi = np.asarray(model.exp_range, np.float64).T
    for k in rng.choice(k_exp, max(1, k_exp // 3), replace=False):
        f, ph = rng.uniform(0.2, 1.0), rng.uniform(0, 6.3)
        exp[:, k] = rng_lo[k] + (rng_hi[k] - rng_lo[k]) * np.clip(0.7 * np.sin(2 * np.pi * f * tt + ph)
                                                                   + rng.uniform(-0.4, 0.2), 0, 1)
    exp = np.clip(exp, rng_lo, rng_hi)
    head = np.stack([np.radians(12) * np.sin(1.3 * tt + 1), np.radians(30) * np.sin(1.9 * tt),
                     np.radians(8) * np.sin(1.1 * tt + 2)], -1)
    rot = head_to_camera_rotation(torch.tensor(head, dtype=torch.float32)).numpy()
    trans = np.stack([2 * np.sin(tt), 1.5 * np.cos(0.7 * tt), 110 + 8 * np.sin(0.5 * tt)], -1)
    pp = np.array(size, np.float32) / 2
    clean = project_landmarks(model, ident, exp, rot, trans, focal, pp)
    noisy = clean + rng.normal(size=clean.shape) * 0.5
    return dict(landmarks=noisy, clean=clean, identity=ident, expression=exp, focal=focal, size=size)


def _nme_vs(result, landmarks: np.ndarray, model) -> float:
    w = (np.asarray(model.landmark_tri) >= 0) & (np.asarray(model.landmark_weight) > 0)
    d = np.linalg.norm(result.landmarks_2d[:, w] - landmarks[:, w, :2], axis=-1).mean(-1)
    return float(np.mean((d / result.iod)[result.fitted]))


def _track_plate(n: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int], float]:
    import cv2

    from engine.face.landmarks import track_frames

    cap = cv2.VideoCapture(str(PLATE))
    frames = []
    while len(frames) < n:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    if not frames:
        raise RuntimeError(f"could not decode {PLATE}")
    t0 = time.perf_counter()
    track = track_frames(frames)
    per_frame = (time.perf_counter() - t0) / len(frames)
    return track.points, track.usable, track.image_size, per_frame


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.fit", description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=500, help="synthetic sequence length")
    ap.add_argument("--real-frames", type=int, default=500, help="plate frames to track and fit (0: skip)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads during fitting")
    ap.add_argument("--models", default="builtin,ict", help="comma-separated face models")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    notes: list[str] = [f"torch threads {args.threads}",
                        "ms_per_frame: wall time of the whole fit (focal sweep + identity + all frames) / frames;"
                        " cpu_ms_per_frame: process CPU time / frames (robust to a loaded machine);"
                        " frames_stage: the per-frame part alone (identity and focal are per actor / sequence)"]
    figures: dict = {}
    models = _load_models([m.strip() for m in args.models.split(",") if m.strip()], notes)
    cfg = FitConfig(num_threads=args.threads)

    for name, model in models.items():
        seq = _synthetic_sequence(model, args.frames)
        valid = np.ones(args.frames, bool)
        c0 = time.process_time()
        res = fit_sequence(model, seq["landmarks"], valid, seq["size"], cfg)
        c1 = time.process_time()
        online = fit_frames_online(model, seq["landmarks"], valid, seq["size"], cfg,
                                   identity=res.identity, focal=res.focal)
        c2 = time.process_time()
        fig = {
            "frames": args.frames,
            "n_id": int(model.id_basis.shape[0]), "n_exp": int(model.exp_basis.shape[0]),
            "batch_total_s": round(res.timings["total_s"], 3),
            "batch_ms_per_frame": round(res.timings["per_frame_ms"], 3),
            "batch_cpu_ms_per_frame": round(1000 * (c1 - c0) / args.frames, 3),
            "batch_frames_stage_ms_per_frame": round(1000 * res.timings["frames_s"] / args.frames, 3),
            "stage_s": {k: round(v, 3) for k, v in res.timings.items() if k.endswith("_s")},
            "nme_mean": round(float(np.nanmean(res.nme)), 5),
            "nme_vs_clean_mean": round(_nme_vs(res, seq["clean"], model), 5),
            "focal_rel_error": round(abs(res.focal / seq["focal"] - 1), 4),
            "identity_mae": round(float(np.abs(res.identity - seq["identity"]).mean()), 4) if res.identity.size else None,
            "expression_mae": round(float(np.abs(res.expression - seq["expression"]).mean()), 4),
            "converged": res.converged,
            "online_ms_per_frame": round(online.timings["per_frame_ms"], 3),
            "online_cpu_ms_per_frame": round(1000 * (c2 - c1) / args.frames, 3),
            "online_nme_vs_clean_mean": round(_nme_vs(online, seq["clean"], model), 5),
        }
        figures[f"synthetic/{name}"] = fig
        print(f"synthetic/{name}: {fig}", flush=True)

    if args.real_frames > 0 and PLATE.exists():
        try:
            points, usable, size, track_s = _track_plate(args.real_frames)
        except (ImportError, RuntimeError, PortraitError) as exc:
            notes.append(f"real plate skipped: {exc}")
        else:
            figures["mediapipe_ms_per_frame"] = round(1000 * track_s, 2)
            for name, model in models.items():
                if name == "synthetic":
                    continue
                c0 = time.process_time()
                res = fit_sequence(model, points, usable, size, cfg)
                cpu = time.process_time() - c0
                s = res.summary()
                fig = {
                    "frames": int(points.shape[0]), "fitted": s["fitted"],
                    "total_s": round(res.timings["total_s"], 3),
                    "ms_per_frame": round(res.timings["per_frame_ms"], 3),
                    "cpu_ms_per_frame": round(1000 * cpu / points.shape[0], 3),
                    "frames_stage_ms_per_frame": round(1000 * res.timings["frames_s"] / points.shape[0], 3),
                    "stage_s": {k: round(v, 3) for k, v in res.timings.items() if k.endswith("_s")},
                    "nme_mean": round(s["nme_mean"], 5), "nme_median": round(s["nme_median"], 5),
                    "nme_p95": round(s["nme_p95"], 5), "error_px_mean": round(s["error_px_mean"], 3),
                    "focal_px": round(res.focal, 1),
                    "identity_abs_max": round(float(np.abs(res.identity).max()), 3) if res.identity.size else None,
                    "converged": res.converged,
                    "goal_nme_mean_le_0.03": bool(s["nme_mean"] <= 0.03),
                }
                figures[f"real/{name}"] = fig
                print(f"real/{name}: {fig}", flush=True)
    elif args.real_frames > 0:
        notes.append(f"real plate skipped: {PLATE} not found")
    figures["peak_rss_mib"] = round(peak_rss_mib(), 1)
    out = BenchResult("fit", figures=figures, notes=notes).write()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
