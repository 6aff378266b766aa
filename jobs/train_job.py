"""submitit job for actor-model training (stage 1), requeued and resumed on preemption.

:class:`TrainJob` is a ``submitit.helpers.Checkpointable``: when SLURM (or submitit's
LocalExecutor) signals a timeout/preemption, submitit calls :meth:`TrainJob.checkpoint`
inside the running job. It asks the running trainer to save its exact state now
(:func:`engine.neural.train.checkpoint_active_trainer`; if the signal landed inside an
optimiser update the last periodic checkpoint stands) and returns a ``DelayedSubmission``
of the same job and spec, which submitit requeues; the requeued job's
:func:`engine.neural.train.run_training` resumes from ``<out_dir>/checkpoint.pt``.

All the work lives in :mod:`engine.neural.train`; this module is glue (jobs -> engine).
"""
from __future__ import annotations

import logging
from pathlib import Path

import submitit

from engine.neural.train import TrainResult, TrainSpec, checkpoint_active_trainer, run_training
from engine.pipeline.executor import ExecutorConfig, make_executor, worker_env

__all__ = ["TrainJob", "submit_training"]

log = logging.getLogger("portrait.jobs.train")


class TrainJob(submitit.helpers.Checkpointable):
    """Callable submitted with a :class:`~engine.neural.train.TrainSpec`."""

    def __call__(self, spec: TrainSpec) -> TrainResult:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        # submitit owns the job's signals (USR2 -> checkpoint + requeue); the trainer must
        # not turn SIGTERM into a clean "interrupted" exit that submitit would not requeue.
        return run_training(spec, handle_signals=False)

    def checkpoint(self, spec: TrainSpec) -> submitit.helpers.DelayedSubmission:
        saved = checkpoint_active_trainer()
        log.info("requeue requested: %s", f"saved {saved}" if saved else "resuming from the last periodic checkpoint")
        return submitit.helpers.DelayedSubmission(TrainJob(), spec)


def submit_training(spec: TrainSpec, config: ExecutorConfig | None = None) -> submitit.Job:
    """Submit one training job (local worker by default) and return it without waiting."""
    config = config or ExecutorConfig()
    folder = config.folder or Path(spec.out_dir) / "submitit"
    executor = make_executor(config, folder)
    with submitit.helpers.environment_variables(**worker_env()):
        return executor.submit(TrainJob(), spec)
