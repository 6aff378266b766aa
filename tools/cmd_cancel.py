"""`portrait cancel SHOT_OR_JOB`: scancel every queued or running job of a submitted shot.

Finished frames stay on disk (and in the chunks' ledgers): ``portrait retry`` later renders
only what is missing."""
from __future__ import annotations

import argparse

from engine.pipeline.submit import cancel_graph, load_plan, read_record
from engine.shotgraph import locate_jobs_dir


def _cancel(args: argparse.Namespace) -> int:
    jobs_dir = locate_jobs_dir(args.target)
    plan = load_plan(jobs_dir)
    if read_record(jobs_dir).get("cluster") != "slurm":
        print(f"{plan.label}: ran on the local executor; nothing queued to cancel")
        return 0
    ids = cancel_graph(plan)
    print(f"{plan.label}: cancelled {', '.join(ids)}" if ids else f"{plan.label}: no queued or running jobs")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cancel", help="cancel a submitted shot's queued and running jobs")
    p.add_argument("target", metavar="SHOT_OR_JOB", help="shot YAML, SLURM job id, or jobs folder")
    p.set_defaults(func=_cancel)
