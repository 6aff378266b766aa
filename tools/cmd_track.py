"""``portrait track VIDEO_OR_SHOT``: track the face in a video / image sequence, or in a shot's
plate and driving video, and write the tracking file(s) (and optionally overlay movies).

Outputs go to the tracking cache under ``--out`` (default: the shot's ``output.root``, or
``./portrait_out`` for a bare video): ``_cache/tracking/<media hash>/<model>-<settings>.tracking.npz``.
A rerun with the same media, model and settings does nothing. A video without a face is not
an error: every frame is flagged ``no_face``, a warning is printed and the exit code is 0.
Unreadable media give a one-line ``error: ...`` and a non-zero exit code.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from engine.errors import ConfigError
from engine.face.model import FaceModelConfig
from engine.face.tracking_file import read_header
from engine.pipeline import ExecutorConfig, run_stages
from engine.stages.track import TrackOverlayStage, TrackStage, shot_track_stages
from tools.cmd_run import parse_fps, parse_frames

log = logging.getLogger("portrait.track")


def _is_shot(path: str) -> bool:
    return path.lower().endswith((".yaml", ".yml"))


def _face_model(args: argparse.Namespace, default: FaceModelConfig | None = None) -> FaceModelConfig | None:
    if args.face_model is None and args.face_model_path is None:
        return default
    kind = args.face_model or (default.kind if default else "builtin")
    path = args.face_model_path
    if kind in ("ict", "flame") and path is None:
        raise ConfigError(f"--face-model {kind} needs --face-model-path")
    return FaceModelConfig(kind=kind, path=None if path is None else str(Path(path).resolve()))


def _stages(args: argparse.Namespace) -> tuple[list, dict, str]:
    target = args.target
    if _is_shot(target):
        from engine.shot import load_shot

        shot = load_shot(target)
        stages, deps = shot_track_stages(shot, overlay=args.overlay, face_model=_face_model(args),
                                         root=Path(args.out).resolve() if args.out else None)
        return stages, deps, shot.executor.kind
    from engine.face.track import open_media

    # Options first, then probe: a missing or corrupt file is one line here, not a failed stage.
    fps = parse_fps(args.fps)
    frames = parse_frames(args.frames)
    face_model = _face_model(args, FaceModelConfig())
    source, _, _ = open_media(target, fps, args.start_frame)
    source.close()
    root = Path(args.out or "portrait_out").resolve()
    track = TrackStage(Path(target).resolve(), root,
                       fps=fps, start_frame=args.start_frame, face_model=face_model,
                       frames=(frames[0], frames[-1]) if frames else None, name="track")
    stages: list = [track]
    deps: dict[str, list[str]] = {"track": []}
    if args.overlay:
        ov = TrackOverlayStage(track)
        stages.append(ov)
        deps[ov.name] = ["track"]
    return stages, deps, "debug"


def _report(stages: list, results: list) -> int:
    warned = 0
    for r in results:
        print(f"{r.name:20s} {r.state:8s} {r.reason or ''} ({r.wall_s:.1f}s)".rstrip())
    for s in stages:
        if isinstance(s, TrackOverlayStage):
            print(f"{'overlay:':10s} {s.movie_path()}")
            continue
        path = s.tracking_path()
        header = read_header(path)
        summ = header.get("summary", {})
        counts = header.get("status_counts", {})
        n = int(header.get("frame_count", 0))
        flagged = n - int(counts.get("ok", 0))
        print(f"{'tracking:':10s} {path}")
        line = f"{'':10s} {s.media.name}: {n} frames, {summ.get('fitted', 0)} fitted, {flagged} flagged"
        if summ.get("nme_mean") is not None:
            line += (f"; reprojection NME mean {100 * summ['nme_mean']:.2f}% (p95 {100 * summ['nme_p95']:.2f}%)"
                     f" of the inter-ocular distance")
        if summ.get("jitter_reduction") is not None:
            line += f"; jitter -{100 * summ['jitter_reduction']:.0f}%"
        print(line + f"; face model {header['face_model']['id']}")
        if n and counts.get("no_face", 0) == n:
            log.warning("%s: no face found in any of the %d frames; every frame is flagged no_face", s.media, n)
            warned += 1
        elif flagged:
            detail = ", ".join(f"{k} {v}" for k, v in counts.items() if v and k != "ok")
            log.warning("%s: %d of %d frames flagged (%s)", s.media, flagged, n, detail)
            warned += 1
    return warned


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # Warnings about the media are stated once, by the summary, as "warning: ..." lines on
    # stderr (the tracker's own log line would repeat them).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    log.addHandler(handler)
    log.propagate = False
    quiet = logging.getLogger("engine.face.track")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        stages, deps, kind = _stages(args)
        results = run_stages(stages, ExecutorConfig(kind=args.executor or kind), deps=deps)
        _report(stages, results)
    finally:
        log.removeHandler(handler)
        quiet.setLevel(level)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("track", help="track faces: landmarks, face-model fit, crops -> tracking file",
                       description="Track the face in a video or image sequence (or in a shot's plate and "
                                   "driving video) and write versioned tracking files; --overlay also "
                                   "writes a review movie of the fitted mesh and landmarks.")
    p.add_argument("target", metavar="VIDEO_OR_SHOT", help="a video, an image sequence (name.%%04d.exr) or a shot YAML")
    p.add_argument("--face-model", choices=("builtin", "ict", "flame"),
                   help="face model (default: the shot's, else builtin)")
    p.add_argument("--face-model-path", help="face model file (required for ict and flame; for builtin a "
                                             "saved actor model)")
    p.add_argument("--out", help="output root (default: the shot's output.root, else ./portrait_out)")
    p.add_argument("--overlay", action="store_true", help="also write the overlay review movie")
    p.add_argument("--fps", help="a video's expected rate (refused if different) / an image sequence's rate")
    p.add_argument("--start-frame", type=int, default=1001, help="frame number of a video's first frame (default 1001)")
    p.add_argument("--frames", help="track only FIRST-LAST (frame numbers)")
    p.add_argument("--executor", choices=("local", "debug", "slurm"),
                   help="where the stages run (default: in this process; for a shot, its executor)")
    p.set_defaults(func=_run)
