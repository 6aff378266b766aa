"""`portrait demo`: build the embedded demo shot and run every stage end to end."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from engine.demo import DEMO_PRESET, DEMO_STEPS, build_demo
from engine.shot import load_shot
from engine.shotgraph import run_shot
from tools.cmd_run import report


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    t0 = time.time()
    shot_path = build_demo(Path(args.out), frames=args.frames, executor=args.executor, preset=args.preset,
                           steps=args.steps)
    print(f"demo shot: {shot_path}")
    result = run_shot(load_shot(shot_path))
    report(result)
    print(f"done in {time.time() - t0:.1f}s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the embedded demo shot end to end",
                       description="Build a small shot from data shipped with the dependencies and run the main "
                                   "job on it: track, train the actor model, render, review movie, QC.")
    p.add_argument("--out", default="demo_out", help="work folder (default: ./demo_out)")
    p.add_argument("--frames", type=int, default=50, help="plate length in frames (default 50)")
    p.add_argument("--executor", choices=("local", "debug"), default="local")
    p.add_argument("--preset", choices=("tiny", "draft", "final"), default=DEMO_PRESET,
                   help=f"actor-model training preset (default {DEMO_PRESET}; tiny for smoke tests)")
    p.add_argument("--steps", type=int, default=DEMO_STEPS, help=f"training steps (default {DEMO_STEPS})")
    p.set_defaults(func=_run)
