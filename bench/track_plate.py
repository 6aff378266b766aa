"""Benchmark: face tracking of the primary actor plate, and the bad-input behaviour.

``real/<model>`` (the whole plate ../shared/media/actor/EDTalk__pose_source2.mp4, 1,499
frames, through :func:`engine.face.track.track_media`, for the default built-in model and
for ICT):

* fitted-model landmark reprojection NME against MediaPipe's landmarks, normalised per frame
  by the inter-ocular (outer eye corner) distance, over the landmarks the model embeds with
  a positive weight (goal: mean <= 3 %); also without the face-oval contour;
* temporal jitter: mean landmark acceleration (norm of the second difference, pixels per
  frame^2) of the fitted landmarks vs raw MediaPipe on the same points (goal: >= 40 % below),
  with the fit alone (no output filter) for comparison; lag of the fitted landmarks behind
  MediaPipe's, from the cross-correlation of their velocities (goal: <= 1 frame);
* wall and CPU time per frame.

``bad_input``: ``portrait track`` (a subprocess, as a user runs it) on a generated video with
no face (goal: every frame flagged, a warning, exit 0) and on a corrupt file (goal: a one-line
``error: ...``, non-zero exit).

Run: ``python -m bench.track_plate [--frames 0] [--models builtin,ict]``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from engine.benchmark import BenchResult, peak_rss_mib

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PLATE = SHARED / "media" / "actor" / "EDTalk__pose_source2.mp4"
ICT = SHARED / "models" / "ict_facekit" / "ict_face_model_light_basis.npz"


def _real(model_name: str, frames: int) -> dict:
    from engine.face.fit import fit_sequence
    from engine.face.landmarks import FACE_OVAL
    from engine.face.model import FaceModelConfig
    from engine.face.smoothing import mean_acceleration
    from engine.face.track import TrackConfig, estimate_lag_frames, fitted_landmark_mask, track_media

    spec = FaceModelConfig(kind="ict", path=str(ICT)) if model_name == "ict" else FaceModelConfig()
    cfg = TrackConfig()
    rng = None if frames <= 0 else (1001, 1000 + frames)
    c0, t0 = time.process_time(), time.perf_counter()
    res = track_media(PLATE, Fraction(25), cfg, spec, frames=rng)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    model = res.model
    mask = fitted_landmark_mask(model)
    inner = mask.copy()
    inner[list(FACE_OVAL)] = False
    ok = res.fit.fitted
    raw = res.landmarks.points[..., :2]
    fitted = res.fit.landmarks_2d
    iod = res.fit.iod

    def nme(sel: np.ndarray) -> np.ndarray:
        return (np.linalg.norm(fitted[:, sel] - raw[:, sel], axis=-1).mean(1) / iod)[ok]

    e_all, e_inner = nme(mask), nme(inner)
    jit_raw = mean_acceleration(raw[:, mask], ok)
    jit_fit = mean_acceleration(fitted[:, mask], ok)
    # the fit alone (its own temporal term, no output filter), on the same landmarks
    plain = fit_sequence(model, res.landmarks.points, res.landmarks.usable, res.image_size, cfg.fit)
    jit_plain = mean_acceleration(plain.landmarks_2d[:, mask], plain.fitted)
    lag = estimate_lag_frames(raw[:, mask], fitted[:, mask], ok)
    n = len(res)
    tim = res.header["timings"]
    return {
        "frames": n, "fitted": int(ok.sum()), "status_counts": res.status_counts(), "face_model": res.face_model_id,
        "landmarks_used": int(mask.sum()),
        "nme_mean": round(float(e_all.mean()), 5), "nme_median": round(float(np.median(e_all)), 5),
        "nme_p95": round(float(np.percentile(e_all, 95)), 5), "nme_max": round(float(e_all.max()), 5),
        "nme_mean_without_oval": round(float(e_inner.mean()), 5),
        "goal_nme_mean_le_0.03": bool(e_all.mean() <= 0.03),
        "jitter_raw_px": round(jit_raw, 4), "jitter_fit_px": round(jit_fit, 4),
        "jitter_reduction": round(1 - jit_fit / jit_raw, 4),
        "jitter_reduction_fit_without_filter": round(1 - jit_plain / jit_raw, 4),
        "lag_frames": round(lag, 3),
        "goal_jitter_reduction_ge_0.40": bool(1 - jit_fit / jit_raw >= 0.40),
        "goal_lag_le_1": bool(abs(lag) <= 1.0),
        "focal_px": round(float(res.fit.focal), 1),
        "wall_s": round(wall, 2), "cpu_ms_per_frame": round(1000 * cpu / n, 3),
        "stage_wall_s": {k: v for k, v in tim.items() if k.endswith("_s") and "cpu" not in k},
    }


def _bad_input(work: Path) -> dict:
    from engine.face.tracking_file import load_tracking
    from engine.io import ReviewMovieWriter

    out: dict = {}
    noface = work / "no_face.mp4"
    with ReviewMovieWriter(noface, Fraction(25), (160, 120), overwrite=True) as mov:
        y, x = np.mgrid[0:120, 0:160]
        for i in range(30):   # a drifting colour gradient: structure, no face
            mov.write(np.stack([(x * 2 + 3 * i) % 256, (y * 2) % 256, (x + y + i) % 256], -1).astype(np.uint8))
    corrupt = work / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(4096))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name, path in (("no_face", noface), ("corrupt", corrupt)):
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "tools.cli", "track", str(path), "--out", str(work / "out")],
                           cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
        lines = [ln for ln in p.stderr.splitlines() if ln.startswith(("warning:", "error:"))]
        fig = {"exit_code": p.returncode, "messages": lines, "wall_s": round(time.perf_counter() - t0, 2)}
        if name == "no_face":
            files = sorted((work / "out").rglob("*.tracking.npz"))
            if files:
                tr = load_tracking(files[0])
                fig.update(frames=len(tr), flagged=int(tr.flagged.sum()), status_counts=tr.status_counts(),
                           params_all_nan=bool(np.isnan(tr.fit.expression).all()))
            fig["goal_met"] = bool(p.returncode == 0 and files and fig.get("flagged") == fig.get("frames")
                                   and any(ln.startswith("warning:") for ln in lines))
        else:
            errs = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
            fig["stderr_lines"] = len(errs)
            fig["goal_met"] = bool(p.returncode != 0 and len(errs) == 1 and errs[0].startswith("error:"))
        out[name] = fig
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.track_plate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=0, help="plate frames (0: all 1,499)")
    ap.add_argument("--models", default="builtin,ict")
    ap.add_argument("--skip-bad-input", action="store_true")
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    figures: dict = {"load_avg_1min_at_start": round(os.getloadavg()[0], 2)}
    notes = ["NME: mean over the model's embedded, positively weighted landmarks (MediaPipe mesh points; "
             "irises for ICT) of |fitted model landmark - MediaPipe landmark|, divided by the frame's "
             "outer-eye-corner distance of the MediaPipe landmarks, averaged over fitted frames.",
             "jitter: mean |x[t+1] - 2x[t] + x[t-1]| over those landmarks (px/frame^2); lag: peak of the "
             "velocity cross-correlation, fitted vs MediaPipe (positive = fitted is late).",
             "builtin = the shipped generic model with the identity learned from the plate's own landmarks "
             "(TrackConfig.builtin_identity='media', the default).",
             "wall times are inflated on a shared machine; CPU ms per frame is this process's CPU time."]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if PLATE.exists():
        for name in models:
            if name == "ict" and not ICT.exists():
                notes.append(f"ict skipped: {ICT} not found")
                continue
            fig = _real(name, args.frames)
            figures[f"real/{name}"] = fig
            print(f"real/{name}: {fig}", flush=True)
    else:
        notes.append(f"real plate skipped: {PLATE} not found")
    if not args.skip_bad_input:
        with tempfile.TemporaryDirectory() as tmp:
            figures["bad_input"] = _bad_input(Path(tmp))
        print(f"bad_input: {figures['bad_input']}", flush=True)
    figures["peak_rss_mib"] = round(peak_rss_mib(), 1)
    out = BenchResult("track_plate", figures=figures, notes=notes).write()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
