"""`portrait train SHOT.yaml`: track the actor's training media and train the actor model (stage 1)."""
from __future__ import annotations

import argparse
import logging
import sys

from engine.errors import ConfigError
from engine.pipeline import run_stages
from engine.shot import load_shot
from engine.stages.track import shot_track_stages
from engine.stages.train import shot_train_stage
from engine.shotgraph import executor_config


def _parse_override(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set takes KEY=VALUE (e.g. steps=500), got {text!r}")
    return key.strip(), yaml.safe_load(value)


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    shot = load_shot(args.shot)
    if shot.actor.model is not None:
        print(f"actor model given in the shot ({shot.actor.model}): nothing to train")
        return 0
    track_stages, deps = shot_track_stages(shot)
    plate_track = track_stages[0]
    train = shot_train_stage(shot, plate_track.tracking_path(), preset=args.preset,
                             overrides=dict(_parse_override(s) for s in args.set))
    stages = [plate_track, train]
    results = run_stages(stages, executor_config(shot, args.executor),
                         deps={plate_track.name: [], train.name: [plate_track.name]})
    for r in results:
        print(f"{r.name:12s} {r.state:8s} {r.reason or ''} ({r.wall_s:.1f}s)".rstrip())
    print(f"{'model:':12s} {train.model_path()}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the shot's actor model (tracking first when needed)",
                       description="Track the actor's training media (the plate by default) and train the "
                                   "person-specific model; reruns resume from the last checkpoint, and a "
                                   "finished model with the same inputs and settings is reused.")
    p.add_argument("shot", metavar="SHOT.yaml")
    p.add_argument("--preset", choices=("tiny", "draft", "final"), help="override the shot's train.preset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="trainer override (repeatable), e.g. --set steps=500 --set loss.l1=2")
    p.add_argument("--executor", choices=("local", "debug", "slurm"),
                   help="where the stages run (default: the shot's executor)")
    p.set_defaults(func=_run)
