"""Benchmark (issue 5): the measurement floor of the cross-reenactment expression error.

    .venv/bin/python -m bench.expression_floor --tracking PLATE.tracking.npz \
        --model stage1=MODEL.pt [--model stage12=MODEL.pt ...] [--frames 60] [--span 330]

``bench/neural_stage2.py`` scores renders by re-tracking them and comparing the re-fitted
landmarks with the transferred targets (:func:`engine.drive.metrics.expression_error`). Part of
that error is the re-tracking itself (a single-frame re-fit against the temporally smoothed
tracking). This measures it: the plate's own frames against their own tracking (a perfect
render), and each model re-rendering the plate's own parameters (self-reenactment, in the
expression range it was trained on), on ``--frames`` evenly spaced usable frames of the first
``--span`` frames (the frames the drives of ``neural_stage2`` land on). What a model can still
gain on a driver is its error minus the ``plate_frames`` floor.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from engine.benchmark import BenchResult, peak_rss_mib

KEYS = ("landmark_error_mm", "landmark_motion_error_mm", "coefficient_rmse", "mouth_open_correlation", "tracked")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracking", type=Path, required=True, help="the plate tracking the models were trained from")
    ap.add_argument("--model", action="append", default=[], help="TAG=MODEL.pt (repeatable)")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--span", type=int, default=330)
    ap.add_argument("--name", default="expression_floor")
    args = ap.parse_args(argv)
    from bench.neural_stage2 import PLATE, _plate_frames
    if not PLATE.is_file():
        print(f"skipped: {PLATE} not found (../shared is needed)")
        return 0
    from engine.drive.metrics import expression_error
    from engine.face.crop import paste_back
    from engine.face.params import FrameParams
    from engine.face.tracking_file import load_tracking
    from engine.neural.online import CropRenderer

    tr = load_tracking(args.tracking)
    p = FrameParams.from_tracking(tr)
    fm = tr.face_model()
    usable = np.flatnonzero(p.usable[:args.span])
    idx = usable[np.unique(np.linspace(0, len(usable) - 1, min(args.frames, len(usable))).round().astype(int))]
    plates = _plate_frames([int(p.frame_numbers[i]) for i in idx])
    target = p.select(idx).expression

    def score(images: list[np.ndarray]) -> dict:
        e = expression_error(images, target, fm, identity=p.identity, focal=p.focal, principal_point=p.principal_point)
        return {k: (round(float(e[k]), 4) if isinstance(e.get(k), float) else e.get(k)) for k in KEYS}

    figures: dict = {"plate": PLATE.name, "face_model": tr.face_model_id, "frames": int(len(idx)),
                     "plate_frames": score([plates[int(p.frame_numbers[i])] for i in idx]), "models": {}}
    for spec in args.model:
        tag, _, path = spec.partition("=")
        r = CropRenderer.from_checkpoint(path, fm, device="cpu")
        pasted = []
        for a in range(0, len(idx), 8):
            sl = idx[a:a + 8]
            pl = [plates[int(p.frame_numbers[i])] for i in sl]
            o = r.render(p, sl, pl)
            pasted += [paste_back(pl[k], o.composite[k].permute(1, 2, 0).numpy(), o.affine[k]) for k in range(len(sl))]
        figures["models"][tag] = {"checkpoint": path, "self_reenactment": score(pasted)}
        print(tag, figures["models"][tag]["self_reenactment"], flush=True)
    figures["peak_rss_mib"] = round(peak_rss_mib(), 1)
    path = BenchResult(args.name, figures=figures, notes=[
        "plate_frames: the plate's own frames re-tracked against their tracking = the floor of expression_error",
        "models: each model re-rendering the plate's own parameters (self-reenactment)"]).write()
    print(f"plate frames (floor): {figures['plate_frames']}\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
