"""``portrait drive SHOT.yaml``: track what the shot needs and write its drive file.

Runs the shot's tracking stages (plate, and the driving video for ``drive.mode: video``;
cached by content under ``_cache/tracking``) and the drive stage, which writes
``portrait.drive/1`` into the output template's ``drive`` task folder (see
:mod:`engine.stages.drive`). ``--out`` overrides the shot's ``output.root``. A rerun with the
same inputs and settings does nothing. Prints the drive file, the transfer method and the
flagged frames; problems the user can fix are one ``error: ...`` line.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from engine.errors import ConfigError
from engine.pipeline import ExecutorConfig, run_stages

log = logging.getLogger("portrait.drive")


def _run(args: argparse.Namespace) -> int:
    from engine.drive.drive_file import read_drive_header
    from engine.shot import load_shot
    from engine.stages.drive import shot_drive_stage
    from engine.stages.track import shot_track_stages

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    target = args.shot
    if not target.lower().endswith((".yaml", ".yml")):
        raise ConfigError(f"portrait drive takes a shot file (.yaml), got {target}")
    shot = load_shot(target)
    root = Path(args.out).resolve() if args.out else None
    track, deps = shot_track_stages(shot, root=root)
    stage, needs = shot_drive_stage(shot, track, root=root)
    deps[stage.name] = needs
    quiet = logging.getLogger("engine.face.track")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        results = run_stages(track + [stage], ExecutorConfig(kind=args.executor or shot.executor.kind), deps=deps)
    finally:
        quiet.setLevel(level)
    for r in results:
        print(f"{r.name:20s} {r.state:8s} {r.reason or ''} ({r.wall_s:.1f}s)".rstrip())
    header = read_drive_header(stage.out_path)
    counts = {k: v for k, v in header.get("flag_counts", {}).items() if v}
    info = header.get("info", {})
    print(f"{'drive:':10s} {stage.out_path}")
    line = (f"{'':10s} mode {header['mode']}, frames {header['first_frame']}-{header['last_frame']} "
            f"({header['frame_count']})")
    if info.get("method"):
        line += f", method {info['method']}, pose {info.get('pose')}, region {info.get('region')}"
    print(line)
    if counts:
        print("warning: flagged frames: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
              file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("drive", help="make a shot's drive file (video- or audio-driven face parameters)",
                       description="Track the shot's plate (and driving video) and write the drive file: "
                                   "per-frame face-model parameters of the shot's frames, with flags and "
                                   "provenance (schema portrait.drive/1).")
    p.add_argument("shot", metavar="SHOT.yaml", help="the shot file")
    p.add_argument("--out", help="output root (default: the shot's output.root)")
    p.add_argument("--executor", choices=("local", "debug", "slurm"),
                   help="where the stages run (default: the shot's executor)")
    p.set_defaults(func=_run)
