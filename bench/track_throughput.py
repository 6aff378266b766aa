"""Benchmark: tracking throughput on 2 CPU cores for a 256x256 plate, end to end.

End to end = decode + MediaPipe landmarks + face-model fit (identity/focal/expressions/pose,
with the built-in model learned from the plate by default) + smoothing + crops
(:func:`engine.face.track.track_media`) + the conditioning maps of every frame
(:func:`engine.face.conditioning.render_conditioning`, 256 px crops, the default maps).
The two cores are used as a real run would: the main process tracks while a second process
starts up (imports torch, builds its renderer); then both render half of the frames' maps.
The MediaPipe-only rate (decode + landmarks, nothing else) is measured in the same run, on
the same frames, as the reference.

Figures: frames/s (wall) of each part and end to end; CPU ms per frame (process time,
robust to a loaded machine, which a shared machine inflates the wall times of); the 1-minute
load average before and after, and the cores this process may use.

Run: ``python -m bench.track_throughput [--frames 500] [--model builtin|ict] [--plate PATH]``.
Without ../shared the primary plate is replaced by the embedded demo plate (noted).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp_
import os
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
GOAL_FPS = 25.0


def _render_maps(model, identity, expression, rotation, translation, K, affine, size: int, batch: int) -> dict:
    """Conditioning maps of frames (arrays (n, ...)); returns timing and a coverage figure."""
    import torch

    from engine.face.camera import axis_angle_to_matrix
    from engine.face.conditioning import (ConditioningConfig, crop_intrinsics, normalise_canonical,
                                          render_conditioning)

    torch.set_num_threads(1)
    c0, t0 = time.process_time(), time.perf_counter()
    cfg = ConditioningConfig(size=size)
    canon = normalise_canonical(torch.as_tensor(model.neutral))
    uv = torch.as_tensor(model.uv)
    region = torch.as_tensor(model.vertex_region.astype(np.int64))
    faces = torch.as_tensor(model.triangles)
    Kt = torch.as_tensor(K, dtype=torch.float32)
    coverage = 0.0
    n = len(expression)
    with torch.inference_mode():
        # The actor's identity is fixed for the sequence: its shape is computed once and only
        # the expression offsets per frame (ICT: 100 identity components x 20k vertices).
        ident = torch.as_tensor(identity[None]) if model.n_id else None
        base = model.vertices(ident, torch.zeros(1, model.n_exp, dtype=torch.float32)).reshape(1, -1)
        exp_basis = torch.as_tensor(model.exp_basis, dtype=torch.float32).reshape(model.n_exp, -1)
        for a in range(0, n, batch):
            sl = slice(a, min(a + batch, n))
            exp = torch.as_tensor(np.nan_to_num(expression[sl]), dtype=torch.float32)
            verts = (base + exp @ exp_basis).reshape(exp.shape[0], -1, 3)
            rot = axis_angle_to_matrix(torch.as_tensor(np.nan_to_num(rotation[sl])))
            trans = torch.as_tensor(np.nan_to_num(translation[sl], nan=100.0))
            cam = verts @ rot.transpose(1, 2) + trans[:, None]
            Kc = crop_intrinsics(Kt, torch.as_tensor(affine[sl], dtype=torch.float32))
            maps = render_conditioning(cam, faces, Kc, canonical_verts=canon, uv=uv, vertex_region=region, config=cfg)
            coverage += float(maps["mask_face"].sum()) / (size * size)
    return {"frames": n, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "coverage": coverage / max(n, 1)}


def _worker(conn) -> None:
    """Second core: import and warm up while the main process tracks, then render its half."""
    t0 = time.perf_counter()
    import torch  # noqa: F401  (the import is the start-up cost being overlapped)

    import engine.face.conditioning  # noqa: F401
    conn.send({"ready_s": time.perf_counter() - t0})
    job = conn.recv()
    conn.send(_render_maps(**job))
    conn.close()


def _mediapipe_only(plate: Path, fps: Fraction, first: int, last: int) -> dict:
    from engine.face.landmarks import LandmarkConfig, LandmarkTracker
    from engine.io import open_plate

    c0, t0 = time.process_time(), time.perf_counter()
    n = 0
    with open_plate(plate, fps) as src, LandmarkTracker(LandmarkConfig()) as tracker:
        for _, frame in src.iter(first, last):
            tracker.process(frame)
            n += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"frames": n, "fps": round(n / wall, 2), "wall_s": round(wall, 3), "cpu_ms_per_frame": round(1000 * cpu / n, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.track_throughput", description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=500, help="plate frames (0: all)")
    ap.add_argument("--model", choices=("builtin", "ict"), default="builtin")
    ap.add_argument("--plate", type=Path, default=None)
    ap.add_argument("--batch", type=int, default=1, help="frames per conditioning render call")
    args = ap.parse_args(argv)

    import torch

    from engine.face.model import FaceModelConfig
    from engine.face.track import TrackConfig, track_media
    from engine.io import probe

    torch.set_num_threads(1)
    notes = ["CPU ms per frame are process times (each process's own); wall times are inflated by other "
             "load on a shared machine (see load_avg).",
             "end to end: main process = decode + landmarks + fit + smoothing + crops, then half of the "
             "conditioning maps; a second process (started at t=0, overlapping its start-up with tracking) "
             "renders the other half.",
             "cpu_critical_path: main-process CPU for tracking + the larger half of the conditioning CPU: "
             "the end-to-end rate of an idle 2-core machine (CPU times are themselves inflated somewhat by "
             "contention, so this is conservative); goal_met is judged on the measured wall rate."]
    plate = args.plate or PLATE
    scratch = tempfile.TemporaryDirectory()
    if not plate.exists():
        from engine.demo import build_demo
        shot = build_demo(Path(scratch.name), frames=100, executor="debug")
        plate = shot.parent / "plate" / "astronaut_plate.mp4"
        notes.append(f"{PLATE} not found: used the embedded demo plate (100 frames)")
    info = probe(plate)
    fps = info.fps
    n = info.frame_count if args.frames <= 0 else min(args.frames, info.frame_count)
    first, last = 1001, 1000 + n
    if args.model == "ict":
        if not ICT.exists():
            print(f"ICT model not found at {ICT}", file=sys.stderr)
            return 2
        spec = FaceModelConfig(kind="ict", path=str(ICT))
    else:
        spec = FaceModelConfig()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load0 = os.getloadavg()[0]

    mp_only = _mediapipe_only(plate, fps, first, last)
    print(f"mediapipe only: {mp_only}", flush=True)

    # ---- end to end ------------------------------------------------------------------------
    ctx = mp_.get_context("spawn")
    parent, child = ctx.Pipe()
    c0, t0 = time.process_time(), time.perf_counter()
    proc = ctx.Process(target=_worker, args=(child,), daemon=True)
    proc.start()
    result = track_media(plate, fps, TrackConfig(), spec, frames=(first, last))
    t_track = time.perf_counter() - t0
    c_track = time.process_time() - c0
    model = result.model if result.model.n_vertices < 5000 else result.model.face_only()
    fit, crops = result.fit, result.crops
    half = n // 2
    job = dict(model=model, identity=fit.identity, K=fit.intrinsics(), size=256, batch=args.batch)
    sl_w, sl_m = slice(0, half), slice(half, n)
    ready = parent.recv()
    parent.send({**job, "expression": fit.expression[sl_w], "rotation": fit.rotation[sl_w],
                 "translation": fit.translation[sl_w], "affine": crops.affine[sl_w]})
    mine = _render_maps(**job, expression=fit.expression[sl_m], rotation=fit.rotation[sl_m],
                        translation=fit.translation[sl_m], affine=crops.affine[sl_m])
    theirs = parent.recv()
    proc.join(30)
    wall = time.perf_counter() - t0
    cpu_main = time.process_time() - c0
    load1 = os.getloadavg()[0]
    tim = result.header["timings"]
    cond_cpu_ms = 1000 * (mine["cpu_s"] + theirs["cpu_s"]) / n
    figures = {
        "plate": str(plate), "frames": n, "size": list(result.image_size), "model": result.face_model_id,
        "cores_available": cores, "load_avg_1min": [round(load0, 2), round(load1, 2)],
        "mediapipe_only": mp_only,
        "track": {"fps": round(n / t_track, 2), "wall_s": round(t_track, 3),
                  "cpu_ms_per_frame": round(1000 * c_track / n, 3),
                  "stage_cpu_ms_per_frame": {"landmarks": round(1000 * tim["landmarks_cpu_s"] / n, 3)},
                  "stage_wall_s": {k: v for k, v in tim.items() if k.endswith("_s")}},
        "conditioning": {"cpu_ms_per_frame": round(cond_cpu_ms, 3), "worker_ready_s": round(ready["ready_s"], 3),
                         "main_wall_s": round(mine["wall_s"], 3), "worker_wall_s": round(theirs["wall_s"], 3),
                         "face_coverage": round((mine["coverage"] * len(range(half, n)) + theirs["coverage"] * half) / n, 4),
                         "batch": args.batch},
        "end_to_end": {"fps": round(n / wall, 2), "wall_s": round(wall, 3),
                       "cpu_ms_per_frame": round(1000 * cpu_main / n + 1000 * theirs["cpu_s"] / n, 3),
                       "cpu_bound_fps_2_cores": round(2000.0 / (1000 * cpu_main / n + 1000 * theirs["cpu_s"] / n), 2)},
        # The run's critical path in CPU time: tracking (main process), then the two halves of
        # the conditioning maps in parallel. On an otherwise idle 2-core machine the wall rate
        # approaches this; on a shared machine wall time is inflated by other load.
        "cpu_critical_path": {
            "ms_per_frame": round(1000 * (c_track + max(mine["cpu_s"], theirs["cpu_s"])) / n, 3),
            "fps": round(n / (c_track + max(mine["cpu_s"], theirs["cpu_s"])), 2)},
        "goal_fps": GOAL_FPS,
        "goal_met": bool(n / wall >= GOAL_FPS),
        "tracking_summary": result.header["summary"],
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    print(figures, flush=True)
    scratch.cleanup()
    out = BenchResult(f"track_throughput_{args.model}" if args.model != "builtin" else "track_throughput",
                      figures=figures, notes=notes).write()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
