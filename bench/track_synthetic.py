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

Run: ``python -m bench.track_synthetic [--frames 60] [--models builtin,ict]``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from engine.benchmark import BenchResult, peak_rss_mib

REPO = Path(__file__).resolve().parents[1]
ICT = REPO.parent / "shared" / "models" / "ict_facekit" / "ict_face_model_light_basis.npz"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.track_synthetic", description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--models", default="builtin,ict")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import torch

    from engine.face.model import FaceModelConfig
    from engine.face.synthetic import round_trip

    torch.set_num_threads(1)
    figures: dict = {}
    notes = ["goal (issue): recovered_landmarks_nme < 0.01. MediaPipe's landmarks on the renders deviate "
             "from the rendered model's own landmarks by mediapipe_vs_truth_nme (non-rigidly: a learned "
             "regressor with its own shape prior); the fit can remove only part of that.",
             "built-in model: tracked as the generic model (builtin_identity='generic') so that coefficients "
             "are in the rendering basis; its named shapes and PCA shapes overlap, so some coefficients "
             "trade off against each other.",
             "translation z and focal trade off (perspective is weak at 1 m): their errors are large while "
             "the image-space errors are small."]
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name == "ict" and not ICT.exists():
            notes.append(f"ict skipped: {ICT} not found")
            continue
        spec = FaceModelConfig(kind="ict", path=str(ICT)) if name == "ict" else FaceModelConfig()
        with tempfile.TemporaryDirectory() as tmp:
            fig = round_trip(spec, args.frames, tmp, seed=args.seed)
        fig["goal_recovered_nme_lt_0.01"] = bool(fig["recovered_landmarks_nme"] < 0.01)
        figures[name] = fig
        print(f"{name}: {fig}", flush=True)
    figures["peak_rss_mib"] = round(peak_rss_mib(), 1)
    out = BenchResult("track_synthetic", figures=figures, notes=notes).write()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
