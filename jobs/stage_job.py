"""submitit-facing job definitions for pipeline stages.

The job callable itself, :class:`engine.pipeline.runner.StageJob` (a
``submitit.helpers.Checkpointable`` whose ``checkpoint`` resubmits itself with the same
stage, so a preempted or timed-out SLURM job is requeued and resumes from what is on
disk), lives in ``engine`` because ``engine.pipeline.executor`` submits it; ``jobs``
depends on ``engine``, never the reverse. This module adds the entry points a pipeline TD
uses by hand:

* :func:`run_stage_job` -- a plain module-level function for ``executor.submit(run_stage_job, stage)``;
* :func:`submit_stage` -- submit one stage and return the submitit job without waiting;
* ``python -m jobs.stage_job <folder>/<job id>_submitted.pkl`` -- rerun a farm job's stage
  in this process (with ``--pdb`` to debug it), straight from submitit's pickle.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

import submitit

from engine.errors import PortraitError
from engine.pipeline.executor import ExecutorConfig, worker_env, make_executor
from engine.pipeline.runner import StageJob, StageResult, execute_stage
from engine.pipeline.runner import run_stage_job as _run_stage_job
from engine.pipeline.stage import Stage

__all__ = ["StageJob", "run_stage_job", "submit_stage", "main"]


def run_stage_job(stage: Stage) -> StageResult:
    """Run ``stage`` (skipping it if up to date); failures come back as a failed result."""
    return _run_stage_job(stage)


def submit_stage(stage: Stage, config: ExecutorConfig | None = None) -> submitit.Job:
    """Submit one stage as a checkpointable job and return at once (fire and forget)."""
    config = config or ExecutorConfig()
    executor = make_executor(config, config.folder or stage.state_dir() / "submitit")
    with submitit.helpers.environment_variables(**worker_env()):
        return executor.submit(StageJob(), stage)


def _stage_from_pickle(path: Path) -> Stage:
    delayed = submitit.helpers.DelayedSubmission.load(path)
    for arg in (*delayed.args, *delayed.kwargs.values()):
        if isinstance(arg, Stage):
            return arg
    raise PortraitError(f"{path} holds no pipeline stage")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.stage_job",
                                     description="Rerun a submitted stage in this process.")
    parser.add_argument("pickle", type=Path, help="submitit's <job id>_submitted.pkl")
    parser.add_argument("--force", action="store_true", help="run even if up to date")
    parser.add_argument("--pdb", action="store_true", help="post-mortem debugger on failure")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        stage = _stage_from_pickle(args.pickle)
    except (OSError, AssertionError, PortraitError) as exc:
        print(f"error: cannot load a stage from {args.pickle}: {exc}", file=sys.stderr)
        return 2
    try:
        result = execute_stage(stage, force=args.force)
    except Exception:
        if args.pdb:
            import pdb
            pdb.post_mortem()
        raise
    print(f"{result.name}: {result.state} ({result.reason})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
