"""Benchmark: video-driven reenactment of the primary actor plate by other people's clips.

Plate ``../shared/media/actor/EDTalk__pose_source2.mp4`` (25 fps); drivers from
``../shared/media/driving/`` (30 fps clips go through the exact fps conversion). Each driver
drives the plate from its first frame (``drive.offset`` 0) for the driver's duration, with
the shot's default pose mode ``plate`` and region ``face``. Tracking goes through the
pipeline's TrackStage (content-keyed cache under ``--cache``, so a rerun only transfers).

Figures per driver (:func:`engine.drive.metrics.transfer_statistics`): correlation and gain
(least-squares slope) of the actor's transferred mouth opening and eye apertures against the
driver's, each relative to its own rest, sampled at the exact driving positions; correlations
of the named coefficients both models have; the fraction of flagged frames and why; and the
same for pose ``driving`` / ``relative`` on the first clip (pose-independent measures, so
they should not change). A side-by-side review movie per driver (driver | driven mesh over
the plate | normal-map conditioning) goes next to the results
(``bench/results/drive_video_<clip>.mp4``, or ``--movies DIR``).

The end-to-end figure of the issue, the expression error of the *re-tracked neural render*
against the driver's transferred coefficients (:func:`engine.drive.metrics.expression_error`),
needs an actor checkpoint: a ``bench/results/neural_draft*.json`` naming one (``checkpoint``)
enables it; otherwise it is reported as pending.

Run: ``python -m bench.drive_video [--drivers a.mp4,b.mp4] [--face-model builtin|ict] [--no-movies]``.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from engine.benchmark import BenchResult, peak_rss_mib

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PLATE = SHARED / "media" / "actor" / "EDTalk__pose_source2.mp4"
ICT = SHARED / "models" / "ict_facekit" / "ict_face_model_light_basis.npz"
DRIVERS = ("LivePortrait__d3.mp4", "LivePortrait__d18.mp4", "EDTalk__expression_source.mp4",
           "EDTalk__mouth_source.mp4")


def _track(media: Path, root: Path, fps, start: int, spec) -> tuple:
    from engine.face.tracking_file import load_tracking
    from engine.pipeline import ExecutorConfig, run_stages
    from engine.stages.track import TrackStage

    stage = TrackStage(media, root, fps=fps, start_frame=start, face_model=spec, name="track")
    t0 = time.perf_counter()
    [res] = run_stages([stage], ExecutorConfig(kind="debug"))
    return load_tracking(stage.tracking_path()), round(time.perf_counter() - t0, 2), res.state


def _checkpoint() -> Path | None:
    for p in sorted((REPO / "bench" / "results").glob("neural_draft*.json")):
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        for key in ("checkpoint", "checkpoint_path"):
            ck = data.get(key) or data.get("figures", {}).get(key)
            if ck and Path(ck).is_file():
                return Path(ck)
    return None


def _driver_frames(media: Path, driver, index: np.ndarray) -> dict[int, np.ndarray]:
    """The driver's own frames (uint8 RGB) at the given frame indices."""
    from engine.face.track import display_frames, open_media

    want = set(int(i) for i in index)
    src, _, _ = open_media(media, driver.fps, 0)
    with src:
        return {n: f for n, f in display_frames(src, min(want), max(want), "Rec.709") if n in want}


def _neural_error(ckpt: Path, drive, plate, max_frames: int = 0, *, movie: Path | None = None,
                  driver=None, driver_media: Path | None = None) -> dict:
    """Render the driven frames with the actor model, paste them back, re-track, compare.
    With ``movie``: a side-by-side review movie driver | plate | neural render of those frames."""
    import cv2

    from engine.drive.metrics import expression_error
    from engine.face.crop import paste_back
    from engine.face.track import display_frames, open_media
    from engine.io.movie import ReviewMovieWriter
    from engine.neural.online import CropRenderer

    model = plate.face_model()
    renderer = CropRenderer.from_checkpoint(ckpt, model)
    params = drive.params
    idx = np.flatnonzero(params.usable)
    if max_frames:
        idx = idx[:max_frames]
    src, _, _ = open_media(PLATE, plate.fps, int(plate.header["media"]["start_frame"]))
    out = []
    with src:
        frames = {n: f for n, f in display_frames(src, int(params.frame_numbers[idx[0]]),
                                                  int(params.frame_numbers[idx[-1]]), "Rec.709")}
    for a in range(0, len(idx), 16):
        sl = idx[a:a + 16]
        plates = [frames[int(params.frame_numbers[i])].astype(np.float32) / 255.0 for i in sl]
        r = renderer.render(params, sl, plates)
        for k, i in enumerate(sl):
            crop = r.composite[k].permute(1, 2, 0).numpy()
            out.append(paste_back(plates[k], crop, r.affine[k]))
    fig = expression_error(out, params.select(idx).expression, model, identity=params.identity, focal=params.focal,
                           principal_point=params.principal_point)
    fig["checkpoint"] = str(ckpt)
    fig["face_model"] = model.model_id()
    if movie is not None and driver is not None and driver_media is not None:
        from engine.drive.timing import nearest_driver_frames

        drv_idx = nearest_driver_frames(drive.positions[idx], len(driver))
        drv = _driver_frames(driver_media, driver, drv_idx)
        h, w = out[0].shape[:2]
        with ReviewMovieWriter(movie, Fraction(25), (3 * w - (3 * w) % 2, h - h % 2), overwrite=True) as mov:
            for k, i in enumerate(idx):
                d = drv[int(drv_idx[k])]
                d = cv2.resize(d, (w, h), interpolation=cv2.INTER_AREA)
                pl = frames[int(params.frame_numbers[i])]
                nr = (np.clip(out[k], 0, 1) * 255 + 0.5).astype(np.uint8)
                row = np.concatenate([d, pl, nr], 1)
                for j, lab in enumerate(("driver", "plate", "neural render")):
                    cv2.putText(row, lab, (j * w + 6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1,
                                cv2.LINE_AA)
                mov.write(row[:h - h % 2, :3 * w - (3 * w) % 2])
        fig["movie"] = str(movie.relative_to(REPO) if movie.is_relative_to(REPO) else movie)
    return fig


def main(argv=None) -> int:
    from engine.drive.metrics import transfer_statistics
    from engine.drive.review import write_drive_review
    from engine.drive.transfer import VideoDriveConfig, transfer_video
    from engine.face.model import FaceModelConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--drivers", default=",".join(DRIVERS))
    ap.add_argument("--face-model", default="builtin", choices=("builtin", "ict"))
    ap.add_argument("--cache", default="/tmp/portrait_bench_cache", help="tracking cache root")
    ap.add_argument("--movies", default=None, help="folder for the review movies (default bench/results)")
    ap.add_argument("--no-movies", action="store_true")
    ap.add_argument("--movie-frames", type=int, default=0, help="limit the movies to this many frames (0: all)")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="actor model for the neural expression error (default: one named by "
                         "bench/results/neural_draft*.json); it must use the tracking's face model")
    ap.add_argument("--neural-frames", type=int, default=0, help="re-track at most this many frames per driver")
    ap.add_argument("--name", default=None, help="result name (default drive_video[_<face model>])")
    args = ap.parse_args(argv)
    if not PLATE.is_file():
        print(f"skipped: {PLATE} not found (../shared is test data, absent here)")
        return 0
    spec = FaceModelConfig(kind="ict", path=str(ICT)) if args.face_model == "ict" else FaceModelConfig()
    name = args.name or ("drive_video" if args.face_model == "builtin" else f"drive_video_{args.face_model}")
    bench = BenchResult(name)
    root = Path(args.cache)
    plate, t_plate, st = _track(PLATE, root, Fraction(25), 1001, spec)
    figures: dict = {"plate": {"media": PLATE.name, "frames": len(plate), "track_wall_s": t_plate, "track_state": st,
                               "face_model": plate.face_model_id}, "drivers": {}}
    movies = Path(args.movies) if args.movies else REPO / "bench" / "results"
    ckpt = args.checkpoint or _checkpoint()
    first = True
    for clip in [c for c in args.drivers.split(",") if c]:
        media = SHARED / "media" / "driving" / clip
        driver, t_drv, st = _track(media, root, None, 0, spec)
        n = min(int(math.floor(len(driver) / driver.fps * Fraction(25))), len(plate))
        frames = np.arange(1001, 1001 + n)
        entry: dict = {"driver_frames": len(driver), "driver_fps": str(driver.fps), "shot_frames": n,
                       "track_wall_s": t_drv, "track_state": st, "face_model": driver.face_model_id,
                       "driver_status_counts": driver.status_counts()}
        poses = ("plate", "driving", "relative") if first else ("plate",)
        for pose in poses:
            t0 = time.perf_counter()
            res = transfer_video(plate, driver, frames, plate_start_frame=1001, plate_fps=Fraction(25), pose=pose,
                                 config=VideoDriveConfig())
            wall = time.perf_counter() - t0
            stats = transfer_statistics(res, driver, plate.face_model(), driver.face_model(), plate.fit.identity,
                                        driver.fit.identity)
            stats.update(transfer_wall_s=round(wall, 3), method=res.info["method"],
                         scales=res.info["map"].get("scales"), rest_actor=res.info["map"]["rest_actor"],
                         rest_driver=res.info["map"]["rest_driver"])
            entry[f"pose_{pose}"] = stats
            if pose == "plate":
                keep = res
        if not args.no_movies:
            out = movies / f"{name}_{Path(clip).stem}.mp4"
            t0 = time.perf_counter()
            write_drive_review(keep, plate, out, driver_tracking=driver,
                               max_frames=args.movie_frames or None)
            entry["movie"] = str(out.relative_to(REPO) if out.is_relative_to(REPO) else out)
            entry["movie_wall_s"] = round(time.perf_counter() - t0, 2)
        if ckpt is not None:
            entry["neural_expression_error"] = _neural_error(
                ckpt, keep, plate, args.neural_frames, driver=driver, driver_media=media,
                movie=None if args.no_movies else movies / f"{name}_neural_{Path(clip).stem}.mp4")
        figures["drivers"][clip] = entry
        first = False
        print(f"{clip}: mouth r={entry['pose_plate']['mouth_open']['correlation']:.3f} "
              f"gain={entry['pose_plate']['mouth_open']['gain']:.2f}, eyes r="
              f"{entry['pose_plate']['eye_left']['correlation']}/{entry['pose_plate']['eye_right']['correlation']}, "
              f"flagged {entry['pose_plate']['flagged_fraction_face_or_time']:.3f} "
              f"(+ clamped {entry['pose_plate']['clamped_fraction']:.3f})", flush=True)
    mouth = [d["pose_plate"]["mouth_open"]["correlation"] for d in figures["drivers"].values()]
    eyes = [c for d in figures["drivers"].values() for c in (d["pose_plate"]["eye_left"]["correlation"],
                                                               d["pose_plate"]["eye_right"]["correlation"]) if c is not None]
    figures["summary"] = {"drivers": len(mouth), "mouth_open_correlation_min": min(mouth) if mouth else None,
                          "mouth_open_correlation_mean": float(np.mean(mouth)) if mouth else None,
                          "eye_correlation_mean": float(np.mean(eyes)) if eyes else None,
                          "flagged_fraction_face_or_time_mean": float(np.mean(
                              [d["pose_plate"]["flagged_fraction_face_or_time"] for d in figures["drivers"].values()])),
                          "clamped_fraction_mean": float(np.mean([d["pose_plate"]["clamped_fraction"]
                                                                  for d in figures["drivers"].values()])),
                          "neural_expression_error": f"measured with {ckpt}" if ckpt else
                          "pending: no actor checkpoint (bench/results/neural_draft*.json) yet"}
    figures["peak_rss_mib"] = round(peak_rss_mib(), 1)
    bench.figures = figures
    print(bench.write())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
