"""`portrait status SHOT_OR_JOB`: where a submitted shot is, stage by stage.

SHOT_OR_JOB: a shot YAML, a SLURM job id (``1234`` or array task ``1234_5``), or a jobs
folder (``<render vNNN>/.portrait/jobs``). Prints per stage done / running / pending / failed,
frames rendered of total, job ids and log paths, and for a failed stage its error and remote
traceback. Exit code 0 when every stage is done, 3 when some stage failed, 1 otherwise.
"""
from __future__ import annotations

import argparse

from engine.pipeline.submit import dump_json, format_rows, graph_status, load_plan
from engine.shotgraph import locate_jobs_dir


def _status(args: argparse.Namespace) -> int:
    jobs_dir = locate_jobs_dir(args.target)
    plan = load_plan(jobs_dir)
    rows = graph_status(plan)
    if args.json:
        print(dump_json(rows))
    else:
        print(f"{plan.label}  ({jobs_dir})")
        print(format_rows(rows, tracebacks=not args.brief))
    if all(r.state == "done" for r in rows):
        return 0
    return 3 if any(r.state == "failed" for r in rows) else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="per-stage state of a submitted shot",
                       description="Show each stage of a submitted shot: done/running/pending/failed, "
                                   "frames rendered, job ids, logs and the remote traceback of failures. "
                                   "Exit 0: all done; 3: something failed; 1: still running or pending.")
    p.add_argument("target", metavar="SHOT_OR_JOB", help="shot YAML, SLURM job id, or jobs folder")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--brief", action="store_true", help="no tracebacks")
    p.set_defaults(func=_status)
