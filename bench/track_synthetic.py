"""Benchmark: synthetic round trip of face tracking (known parameters -> render -> track -> compare).

For the built-in model (always) and ICT (when ../shared has it):
:func:`engine.face.synthetic.round_trip` renders the model with smooth known expressions,
head motion (+-20 deg yaw about the texture photo's pose) and a pinhole camera, textured with
scikit-image's astronaut photo by projective texture mapping; encodes it as H.264; tracks it
with :func:`engine.face.track.track_media`; and compares.

Figures (normalised by the ground-truth inter-ocular distance, per frame): the fit's
reprojection error against MediaPipe's landmarks; the recovered model landmarks against the
ground truth (the issue's goal: < 1 %); MediaPipe's own landmarks against the ground truth (the
measurement's error, which bounds the recovery); rotation, translation, focal and coefficient
errors (MAE and Pearson r of each animated expression; identity RMSE for ICT).

Also (the error budget, why < 1 % is not reached): MediaPipe's own precision floor on the
texture photo (its landmarks move by ~0.5-1.1 % of the inter-ocular distance when the same photo
is shifted by 0.25-1 px), the systematic/varying split of every error, and ablations of the render
(``--ablations``: photo background, no extra shading, 512 px frames, the photo's own identity).

Run: ``python -m bench.track_synthetic [--frames 60] [--models builtin,ict] [--ablations builtin]``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from engine.benchmark import BenchResult, peak_rss_mib

REPO = Path(__file__).resolve().parents[1]
ICT = REPO.parent / "shared" / "models" / "ict_facekit" / "ict_face_model_light_basis.npz"


PLATE = REPO.parent / "shared" / "media" / "actor" / "EDTalk__pose_source2.mp4"


def _calibration_check(spec, arrays: dict, aligned_mean_residual, frames: int = 300) -> dict:
    """Would a landmark-embedding calibration learned from *real* tracking remove the
    synthetic error? The real plate's systematic fit residual (MediaPipe - fitted model, per
    landmark, eye-aligned) is compared with the synthetic renders' systematic MediaPipe error
    (MediaPipe - true model landmarks): if they agreed, moving the embedding by the former
    would cancel the latter."""
    from engine.face.track import TrackConfig, track_media
    from engine.io import probe

    res = track_media(PLATE, probe(PLATE).fps, TrackConfig(builtin_identity="generic"), spec,
                      frames=(1001, 1000 + frames))
    used = arrays["used"]
    real = aligned_mean_residual(res.landmarks.points[..., :2], res.fit.landmarks_2d, used)[used]
    syn = aligned_mean_residual(arrays["mediapipe"], arrays["truth"], used)[used]
    ok = np.isfinite(real).all(1) & np.isfinite(syn).all(1)
    real, syn = real[ok], syn[ok]
    cos = (real * syn).sum(1) / (np.linalg.norm(real, axis=1) * np.linalg.norm(syn, axis=1) + 1e-12)
    scale = float((real * syn).sum() / max((real * real).sum(), 1e-12))
    return {"real_frames": frames,
            "real_systematic_residual_nme": round(float(np.linalg.norm(real, axis=1).mean()), 5),
            "synthetic_systematic_mediapipe_nme": round(float(np.linalg.norm(syn, axis=1).mean()), 5),
            "cosine_mean": round(float(cos.mean()), 3),
            "synthetic_after_subtracting_real": round(float(np.linalg.norm(syn - real, axis=1).mean()), 5),
            "best_scale": round(scale, 3),
            "synthetic_after_best_scaled_real": round(float(np.linalg.norm(syn - scale * real, axis=1).mean()), 5)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.track_synthetic", description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--models", default="builtin,ict")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ablations", default="builtin",
                    help="models (comma list, or 'none') to also run with render variants")
    args = ap.parse_args(argv)
    import torch

    from engine.face.model import FaceModelConfig
    from engine.face.synthetic import aligned_mean_residual, mediapipe_shift_sensitivity, photo_pose_check, round_trip

    torch.set_num_threads(1)
    figures: dict = {}
    notes = ["goal (issue): recovered_landmarks_nme < 0.01. MediaPipe's landmarks on the renders deviate "
             "from the rendered model's own landmarks by mediapipe_vs_truth_nme (non-rigidly: a learned "
             "regressor with its own shape prior); the fit can remove only part of that.",
             "built-in model: tracked as the generic model (builtin_identity='generic') so that coefficients "
             "are in the rendering basis; its named shapes and PCA shapes overlap, so some coefficients "
             "trade off against each other.",
             "translation z and focal trade off (perspective is weak at 1 m): their errors are large while "
             "the image-space errors are small.",
             "error budget: diagnostics.*_systematic_nme is the per-landmark mean residual over frames (the same "
             "on every frame), *_varying_nme the rest. MediaPipe's error on the renders is mostly systematic "
             "(~1.4-1.6 %); the fit averages out part of the varying part (~1 %) but cannot see the systematic "
             "one. mediapipe_shift_sensitivity: MediaPipe's landmarks on the *same photo* shifted by a "
             "fraction of a pixel move by ~0.5-1.1 % of the inter-ocular distance: per-image precision floor.",
             "ablations (same seed, frames): render resolution, background and shading do not bring "
             "MediaPipe's landmarks closer to the model's; the goal is blocked by MediaPipe's disagreement "
             "with the rendered model's landmark positions, not by the fit (reprojection_nme ~0.9-1.0 %).",
             "real_plate_calibration_check: the real plate's systematic fit residual is not aligned with the "
             "synthetic renders' systematic MediaPipe error (cosine ~0), so an embedding calibration learned "
             "from real tracking cannot remove it (it is specific to the photo-textured renders).",
             "photo_pose_check: even a render at the photo's own camera, pose and expression, over the photo, "
             "without extra shading (nearly the photo itself) gets MediaPipe landmarks render_vs_truth away "
             "from the model's, and render_vs_photo away from MediaPipe's landmarks on the photo."]
    figures["mediapipe_shift_sensitivity"] = mediapipe_shift_sensitivity()
    ablate = {m.strip() for m in args.ablations.split(",") if m.strip() and m.strip() != "none"}
    variants = {"photo_background": dict(background="photo"), "no_shading": dict(shading=0.0),
                "size_512": dict(size=512), "photo_identity": dict(identity="photo")}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name == "ict" and not ICT.exists():
            notes.append(f"ict skipped: {ICT} not found")
            continue
        spec = FaceModelConfig(kind="ict", path=str(ICT)) if name == "ict" else FaceModelConfig()
        arrays: dict = {}
        with tempfile.TemporaryDirectory() as tmp:
            fig = round_trip(spec, args.frames, tmp, seed=args.seed, arrays=arrays)
        if PLATE.exists():
            fig["real_plate_calibration_check"] = _calibration_check(spec, arrays, aligned_mean_residual)
        fig["goal_recovered_nme_lt_0.01"] = bool(fig["recovered_landmarks_nme"] < 0.01)
        fig["photo_pose_check"] = photo_pose_check(spec.load())
        if name in ablate:
            fig["ablations"] = {}
            for vname, kw in variants.items():
                if vname == "photo_identity" and name != "ict":
                    continue  # the built-in model is tracked as the generic model (no identity)
                with tempfile.TemporaryDirectory() as tmp:
                    v = round_trip(spec, args.frames, tmp, seed=args.seed, **kw)
                fig["ablations"][vname] = {k: v[k] for k in ("recovered_landmarks_nme", "mediapipe_vs_truth_nme",
                                                             "reprojection_nme", "rotation_error_deg_mean",
                                                             "diagnostics")}
        figures[name] = fig
        print(f"{name}: {fig}", flush=True)
    figures["peak_rss_mib"] = round(peak_rss_mib(), 1)
    out = BenchResult("track_synthetic", figures=figures, notes=notes).write()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
