"""Benchmark (issue 7): frames/s of one chunk of the final render on a 1080p plate.

    .venv/bin/python -m bench.render_chunk [--frames 24] [--size 1920x1080] [--threads 2]
        [--device cpu] [--preset draft] [--checkpoint MODEL.pt --tracking T.npz --plate PLATE]
        [--layout multilayer] [--segmentation selfie] [--name render_chunk]

What runs is exactly what a cluster array task runs: :class:`NeuralRenderStage` over a chunk
of a 1080p H.264 plate (decode -> OCIO -> crop renderer -> matte + selfie segmentation ->
temporal filter -> paste-back -> all six EXR passes, ZIP, atomic writes, ledger), through
the pipeline's in-process executor. The crop renderer is the lead's
:class:`engine.neural.online.CropRenderer` (conditioning rasterised from the face model +
the actor network), driven by:

* default: the ``--preset`` generator architecture (``draft``: 128 px) with seeded, untrained
  weights, on the built-in face model posed frontally with a slow head turn in the plate
  (a network's cost does not depend on its weight values; this measures the render path
  without waiting for training);
* ``--checkpoint`` + ``--tracking`` + ``--plate``: a trained actor model, the tracking of its
  plate and the plate (at its own size).

Reported: frames/s of the chunk (frames written / stage wall time, the temporal overlap's
extra rendered frames included), per-phase seconds (decode, network, matte, composite, EXR
write), the share of the time spent writing EXRs, MB per EXR frame.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

FIRST = 1001


def plate_frames(n: int, width: int, height: int, seed: int = 0):
    """A gradient + grain background with a skin-toned oval that drifts (compresses and
    decodes like real footage, unlike flat or pure-noise frames)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([0.25 + 0.3 * xx / width, 0.3 + 0.2 * yy / height,
                     0.35 + 0.1 * np.sin(xx / 53.0) * np.cos(yy / 41.0)], -1)
    for i in range(n):
        cx = width / 2 + 40 * np.sin(i / 12.0)
        cy = height * 0.45
        oval = (((xx - cx) / (0.11 * width)) ** 2 + ((yy - cy) / (0.2 * height)) ** 2) < 1.0
        img = np.where(oval[..., None], np.array([0.78, 0.58, 0.48], np.float32), base)
        img = img + rng.normal(0, 0.012, img.shape).astype(np.float32)
        yield np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def posed_params(face_model, frame_numbers, size: tuple[int, int], crop_size: int = 512):
    """FrameParams: the face model frontal at 60 cm (OpenCV camera: model +Y up / +Z to the
    viewer -> rotate pi about X), turning +-15 degrees, crops framing the projected mesh."""
    import cv2

    from engine.face.crop import crop_affine
    from engine.face.params import FrameParams

    w, h = size
    n = len(frame_numbers)
    focal = 1.2 * w                    # a close-up: the face ~1/3 of the frame width
    pp = np.array([w / 2, h / 2], np.float32)
    rot = np.zeros((n, 3), np.float32)
    trans = np.tile(np.array([0.0, -2.0, 60.0], np.float32), (n, 1))
    verts = np.asarray(face_model.neutral, np.float64)
    centers, sides = [], []
    for i in range(n):
        yaw = np.deg2rad(15.0) * np.sin(i / 10.0)
        R = cv2.Rodrigues(np.array([0.0, yaw, 0.0]))[0] @ cv2.Rodrigues(np.array([np.pi, 0.0, 0.0]))[0]
        rot[i] = cv2.Rodrigues(R)[0][:, 0]
        cam = verts @ R.T + trans[i]
        uv = cam[:, :2] / cam[:, 2:3] * focal + pp
        lo, hi = uv.min(0), uv.max(0)
        centers.append((lo + hi) / 2)
        sides.append(1.7 * float((hi - lo).max()))
    aff = crop_affine(np.array(centers), np.array(sides), np.zeros(n), crop_size)
    return FrameParams(frame_numbers=np.asarray(frame_numbers, np.int64),
                       identity=np.zeros(getattr(face_model, "n_id", 0), np.float32),
                       expression=np.zeros((n, face_model.n_exp), np.float32), rotation=rot, translation=trans,
                       focal=float(focal), principal_point=pp, image_size=(w, h), crop_affine=aff,
                       crop_size=crop_size, usable=np.ones(n, bool))


def draft_renderer(face_model, preset: str, device: str):
    """The lead's CropRenderer around a ``preset`` generator with seeded untrained weights."""
    import torch

    from engine.neural.checkpoint import ModelMeta
    from engine.neural.generator import PortraitGenerator
    from engine.neural.infer import Renderer
    from engine.neural.online import CropRenderer
    from engine.neural.train import make_config, resolve_device

    torch.manual_seed(0)
    gen = PortraitGenerator(make_config(preset).generator)
    meta = ModelMeta(actor_id="bench", face_model_id=face_model.model_id(), consent="synthetic benchmark")
    return CropRenderer(Renderer(gen, meta, device=resolve_device(device)), face_model)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=24, help="chunk length (frames written)")
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--threads", type=int, default=2, help="torch / OpenCV threads (0: leave)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="draft", help="generator preset when no --checkpoint")
    ap.add_argument("--checkpoint", help="a trained actor model (needs --tracking)")
    ap.add_argument("--tracking", help="the tracking file of the checkpoint's plate")
    ap.add_argument("--plate", help="the plate the tracking file belongs to")
    ap.add_argument("--layout", default="multilayer", choices=("multilayer", "multipart"))
    ap.add_argument("--segmentation", default="selfie", choices=("selfie", "none"))
    ap.add_argument("--out", help="working folder (default: a temporary one, removed)")
    ap.add_argument("--name", default="render_chunk")
    args = ap.parse_args(argv)

    import cv2
    import torch

    from engine.benchmark import BenchResult, peak_rss_mib
    from engine.face.model import load_face_model
    from engine.io.synthetic import encode_video
    from engine.pipeline import ExecutorConfig, run_stages
    from engine.render.composite import MatteConfig
    from engine.stages.common import FrameTiming, ShotLayout
    from engine.stages.render import NeuralRenderConfig, NeuralRenderStage

    if args.threads > 0:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    w, h = (int(v) for v in args.size.lower().split("x"))
    fps = Fraction(24)
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="render_chunk."))
    work.mkdir(parents=True, exist_ok=True)
    result = BenchResult(args.name)
    try:
        if args.checkpoint:
            if not (args.tracking and args.plate):
                ap.error("--checkpoint needs --tracking and --plate")
            from engine.face.params import FrameParams
            from engine.face.tracking_file import load_tracking
            from engine.render.model import load_crop_renderer

            tr = load_tracking(args.tracking)
            params = FrameParams.from_tracking(tr)
            renderer = load_crop_renderer(args.checkpoint, tr.face_model(), device=args.device)
            plate = Path(args.plate)
            fps = Fraction(tr.fps)
            first = int(params.frame_numbers[0])
            w, h = params.image_size
            model_note = f"trained checkpoint {args.checkpoint}"
        else:
            face_model = load_face_model("builtin")
            first = FIRST
            n_plate = args.frames + 8            # room for the temporal overlap
            plate = encode_video(work / "plate.mp4", plate_frames(n_plate, w, h), fps, crf=18)
            params = posed_params(face_model, range(first, first + n_plate), (w, h))
            renderer = draft_renderer(face_model, args.preset, args.device)
            model_note = (f"preset '{args.preset}' generator ({renderer.size} px) with seeded untrained weights "
                          f"on the built-in face model; throughput does not depend on weight values")
        chunk = list(range(first + 4, first + 4 + args.frames))   # a mid-shot chunk: overlap both sides
        layout = ShotLayout("bench", "sq", "sh010", "v001", work / "render", work / "review", work / "qc")
        timing = FrameTiming(fps, first, first + len(params) - 1, first, "01:00:00:00")
        cfg = NeuralRenderConfig(colourspace="Rec.709", layout=args.layout, device=args.device,
                                 matte=MatteConfig(segmentation=args.segmentation))
        stage = NeuralRenderStage(plate, layout, timing, cfg, frames=chunk, name="render-bench",
                                  renderer=renderer, params=params)
        t0 = time.perf_counter()
        res = run_stages([stage], ExecutorConfig(kind="debug"))
        wall = time.perf_counter() - t0
        if res[0].state != "ran":
            print(f"render stage did not run: {res[0]}", file=sys.stderr)
            return 1
        t = json.loads(stage.timings_path.read_text())
        sizes = [layout.frame_path(f).stat().st_size for f in chunk]
        total = t["total"]
        figures = {
            "plate": f"{w}x{h} H.264 (Rec.709)", "crop_size": int(renderer.size), "device": args.device,
            "threads": args.threads, "layout": args.layout, "segmentation": args.segmentation,
            "frames_written": t["frames_written"], "frames_rendered": t["frames_rendered"],
            "frames_per_s": round(t["frames_written"] / total, 3),
            "stage_wall_s": round(total, 3), "pipeline_wall_s": round(wall, 3),
            "seconds": {k: round(t[k], 3) for k in ("decode", "network", "matte", "composite", "exr_write")},
            "share": {k: round(t[k] / total, 3) for k in ("decode", "network", "matte", "composite", "exr_write")},
            "exr_write_share": round(t["exr_write"] / total, 3),
            "exr_mb_per_frame": round(float(np.mean(sizes)) / 2**20, 2),
            "peak_rss_mib": round(peak_rss_mib(), 1),
        }
        result.figures = figures
        result.notes = [model_note, "frames_per_s counts written frames; the chunk also renders the temporal "
                        "filter's overlap frames (frames_rendered) that neighbouring chunks write"]
        out = result.write()
        print(json.dumps(figures, indent=2))
        print(f"wrote {out}")
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
