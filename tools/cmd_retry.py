"""`portrait retry SHOT_OR_JOB`: resubmit only what failed or is missing.

Stages that are done, queued or running are left alone; a failed or cancelled stage is
resubmitted with its dependents, and a render chunk reruns only its missing frames (its item
ledger keeps the finished ones). Uses the graph recorded at submission (``plan.pkl``), not
the shot YAML as it is now: a changed YAML is a new version, for ``portrait submit``."""
from __future__ import annotations

import argparse
import logging
import sys

from engine.errors import PortraitError
from engine.pipeline import ExecutorConfig, run_stages
from engine.pipeline.submit import load_plan, read_record, submit_graph, write_local_record
from engine.shotgraph import locate_jobs_dir


def _executor(record: dict, plan) -> ExecutorConfig:
    params = record.get("executor_params")
    if params is None:
        raise PortraitError(f"{plan.jobs_dir}: the job record has no executor settings; submit the shot again")
    return ExecutorConfig(kind=record.get("cluster", "slurm"), folder=plan.logs_dir, params=params)


def _retry(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    jobs_dir = locate_jobs_dir(args.target)
    plan = load_plan(jobs_dir)
    record = read_record(jobs_dir)
    cfg = _executor(record, plan)
    if cfg.kind == "slurm":
        sub = submit_graph(plan, cfg)
        if not sub.submitted:
            print(f"{plan.label}: nothing to retry" + (f" ({len(sub.active)} stage(s) still queued or running)"
                                                       if sub.active else " (every stage is done)"))
            if not sub.active and plan.seal is not None:
                plan.seal()
            return 0
        print(f"{plan.label}: resubmitted {len(sub.submitted)} stage(s)")
        for name, jid in sub.submitted.items():
            print(f"  {name:20s} {jid}")
        return 0
    results = run_stages(plan.stages, cfg, deps=plan.deps)
    write_local_record(plan, results, cfg.kind)
    ran = [r.name for r in results if r.state == "ran"]
    if plan.seal is not None:
        plan.seal()
    print(f"{plan.label}: " + ("ran " + ", ".join(ran) if ran else "nothing to retry (every stage is done)"))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("retry", help="resubmit a shot's failed tasks and missing frames only")
    p.add_argument("target", metavar="SHOT_OR_JOB", help="shot YAML, SLURM job id, or jobs folder")
    p.set_defaults(func=_retry)
