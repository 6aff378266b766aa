"""``portrait render SHOT.yaml --frames 1001-1048``: render one chunk of a shot's final frames.

This is what a cluster array task runs: it allocates (or resumes) the shot's version like
``portrait run``, renders only the chunk's frames (each chunk has its own ledger, so array
tasks never share state), and writes nothing else (no movie, no QC report). The stages the
render reads -- the plate's tracking and, for a driven shot, the drive file -- must be up to
date (``portrait run`` / the cluster graph makes them first); ``--prepare`` makes them here.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from engine.errors import ConfigError
from engine.pipeline import ExecutorConfig, run_stages
from engine.shot import load_shot
from engine.shotgraph import plan_shot
from engine.stages.render import shot_render_stage
from tools.cmd_run import parse_frames


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    shot = load_shot(args.shot)
    frames = parse_frames(args.frames)
    rng = shot.frames.render_frames()
    if frames and (frames[0] < rng.start or frames[-1] >= rng.stop):
        raise ConfigError(f"--frames {args.frames} is outside the shot ({rng.start}-{rng.stop - 1})")
    # The version: allocated (or resumed) exactly as `portrait run` does; a chunk plan holds
    # only the render task, whose stage is replaced by the neural one.
    plan = plan_shot(shot, version=args.version, frames=frames or list(rng))
    try:
        render, upstream, deps = shot_render_stage(shot, plan.layout, plan.timing, frames=frames)
        stale = [s.name for s in upstream if not s.is_up_to_date()]
        if stale and not args.prepare:
            raise ConfigError(f"render needs {', '.join(stale)} first: run `portrait run {args.shot}` "
                              "or add --prepare")
        executor = ExecutorConfig(kind=args.executor or "debug")
        if stale:
            run_stages(upstream, executor, deps={s.name: deps.get(s.name, []) for s in upstream})
        results = run_stages([render], executor, deps={render.name: []}, version=plan.versions[0])
    finally:
        for v in plan.versions:
            v.release()
    for r in results:
        print(f"{r.name:20s} {r.state:8s} {r.reason or ''} ({r.wall_s:.1f}s)".rstrip())
    print(f"{'frames:':8s} {plan.layout.frame_pattern}")
    sidecar = render.sidecar_path
    if sidecar.exists():
        flagged = json.loads(sidecar.read_text()).get("no_face", [])
        print(f"{'no face:':8s} {len(flagged)} of {len(render.frames)} frame(s) passed through ({sidecar.name})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="render one chunk of a shot's final EXR frames (an array task)",
                       description="Render a shot's frames (or the chunk --frames FIRST-LAST) into the "
                                   "version's delivery EXRs: composite + neural, matte, depth, normal and "
                                   "ST passes. Resumes: only missing or invalid frames are rendered.")
    p.add_argument("shot", help="shot YAML")
    p.add_argument("--frames", help="FIRST-LAST frame numbers of the chunk (default: the whole shot)")
    p.add_argument("--version", type=int, help="resume or create this version number instead of 'auto'")
    p.add_argument("--executor", choices=("local", "debug", "slurm"),
                   help="where the stage runs (default: in this process, as an array task does)")
    p.add_argument("--prepare", action="store_true",
                   help="also run the tracking / drive stages the render reads when they are not up to date")
    p.set_defaults(func=_run)
