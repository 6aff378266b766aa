"""`portrait run SHOT.yaml`: run (or resume) a shot end to end on its executor."""
from __future__ import annotations

import argparse
from fractions import Fraction
import logging
import sys

from engine.errors import ConfigError
from engine.shot import load_shot
from engine.shotgraph import run_shot


def parse_fps(text: str | None) -> Fraction | None:
    """``--fps`` text (``25``, ``23.976``, ``24000/1001``) -> a positive Fraction (None: not given)."""
    if text is None:
        return None
    try:
        fps = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"--fps must be a number or a ratio such as 24000/1001, got {text!r}") from None
    if fps <= 0:
        raise ConfigError(f"--fps must be positive, got {text}")
    return fps


def parse_frames(text: str | None) -> list[int] | None:
    """``1001-1048`` or ``1001`` -> list of frame numbers."""
    if not text:
        return None
    try:
        a, _, b = text.partition("-")
        first, last = int(a), int(b or a)
    except ValueError:
        raise ConfigError(f"--frames must be FIRST-LAST (e.g. 1001-1048), got {text!r}") from None
    if last < first:
        raise ConfigError(f"--frames {text}: last frame before first")
    return list(range(first, last + 1))


def report(result) -> None:
    for r in result.results:
        print(f"{r.name:8s} {r.state:8s} {r.reason or ''} ({r.wall_s:.1f}s)".rstrip())
    lay = result.layout
    for label, path in (("frames", lay.frame_pattern), ("movie", lay.review_movie),
                        ("report", lay.qc_dir / "report.html")):
        if label == "frames" or path.exists():
            print(f"{label + ':':8s} {path}")


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    shot = load_shot(args.shot)
    frames = parse_frames(args.frames)
    if frames:
        rng = shot.frames.render_frames()
        if frames[0] < rng.start or frames[-1] >= rng.stop:
            raise ConfigError(f"--frames {args.frames} is outside the shot ({rng.start}-{rng.stop - 1})")
    result = run_shot(shot, executor=args.executor, version=args.version, frames=frames, train=not args.no_train)
    report(result)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run or resume a shot end to end",
                       description="Run a shot's stages (skipping up-to-date ones) and write its version.")
    p.add_argument("shot", help="shot YAML")
    p.add_argument("--executor", choices=("local", "debug", "slurm"), help="override the shot's executor")
    p.add_argument("--version", type=int, help="resume or create this version number instead of 'auto'")
    p.add_argument("--frames", help="render only FIRST-LAST (a chunk; no movie or report)")
    p.add_argument("--no-train", action="store_true",
                   help="do not train an actor model: without actor.model the plate passes through "
                        "(pipeline, colour and QC checks of the plate itself)")
    p.set_defaults(func=_run)
