"""Running one stage where it lands (this process, a local worker, a SLURM node).

:func:`execute_stage` is the whole contract of a stage run: skip if up to date, else hash
the inputs, run, hash the outputs, write the manifest atomically. :class:`StageJob` is the
picklable callable the executors submit; it turns any exception into a ``failed``
:class:`StageResult` carrying the formatted traceback (so the submitting side can raise a
one-line :class:`~engine.errors.StageError` with the remote traceback attached) and is a
``submitit.helpers.Checkpointable``: on preemption or timeout submitit requeues it with the
same stage, and the rerun resumes from what is on disk (finished items, training
checkpoints the stage wrote).
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import submitit

from engine import __version__
from engine.errors import StageError
from engine.util.atomic import atomic_write_json

from .stage import (MANIFEST_SCHEMA, Stage, StageContext, hash_entry, log, read_manifest)

ResultState = Literal["ran", "skipped", "failed"]


@dataclass
class StageResult:
    """What happened to one stage. Picklable: it travels back from the worker."""

    name: str
    state: ResultState
    reason: str = ""
    wall_s: float = 0.0
    job_id: str | None = None
    host: str | None = None
    manifest: Path | None = None
    error: str | None = None           # "ValueError: message" (one line) when failed
    traceback_text: str = ""           # the worker's formatted traceback when failed
    logs: dict[str, str] = field(default_factory=dict)  # "stdout"/"stderr" -> path


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def current_job_id() -> str | None:
    """The submitit job id when running inside a submitit job (local/debug/slurm)."""
    try:
        return str(submitit.JobEnvironment().job_id)
    except (RuntimeError, KeyError):
        return None


def execute_stage(stage: Stage, *, force: bool = False, progress_stream: Any = None) -> StageResult:
    """Run ``stage`` here unless it is up to date; record its manifest. Raises on failure."""
    name = stage.validate_name()
    job_id = current_job_id()
    host = socket.gethostname()
    status = stage.check()
    if status.state == "done" and not force:
        log.info("skip %s: up to date", name)
        return StageResult(name, "skipped", "up to date", job_id=job_id, host=host,
                           manifest=stage.manifest_path())
    reason = "forced" if force and status.state == "done" else status.reason
    log.info("run %s: %s", name, reason)

    manifest_path = stage.manifest_path()
    previous = read_manifest(manifest_path)
    fingerprint = stage.fingerprint(previous)
    # Until the new manifest is written the old one must not vouch for outputs that are
    # being replaced: a kill mid-run then leaves the stage 'missing', never falsely 'done'.
    manifest_path.unlink(missing_ok=True)

    ctx = StageContext(stage, fingerprint, job_id=job_id, progress_stream=progress_stream)
    started = _now_iso()
    t0 = time.perf_counter()
    stage.run(ctx)
    wall = time.perf_counter() - t0

    outputs = {}
    for k, p in stage.outputs().items():
        if not Path(p).exists():
            raise StageError(f"stage '{name}' finished without writing output '{k}' ({p})")
        outputs[k] = hash_entry(p, verify="hash")
    # An input rewritten while the stage ran makes the outputs a function of neither state.
    after = stage.fingerprint({"inputs": fingerprint.inputs})
    changed = [k for k in fingerprint.inputs if after.inputs[k]["sha256"] != fingerprint.inputs[k]["sha256"]]
    if changed:
        raise StageError(f"stage '{name}': input '{changed[0]}' changed while the stage ran; rerun it")

    items = stage.items()
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "stage": name,
        "stage_class": f"{type(stage).__module__}.{type(stage).__qualname__}",
        "stage_version": stage.version,
        "engine_version": __version__,
        "inputs": dict(fingerprint.inputs),
        "params": stage.params(),
        "params_sha256": fingerprint.params_sha256,
        "fingerprint": fingerprint.digest,
        "outputs": outputs,
        "items": len(items) if items is not None else None,
        "timings": {"started_at": started, "finished_at": _now_iso(), "wall_s": round(wall, 3)},
        "host": host,
        "pid": os.getpid(),
        "job_id": job_id,
        "python": platform.python_version(),
    }
    atomic_write_json(manifest_path, manifest)
    stage.failure_path().unlink(missing_ok=True)
    ctx.cleanup()
    return StageResult(name, "ran", reason, wall_s=wall, job_id=job_id, host=host, manifest=manifest_path)


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0]}" if msg else type(exc).__name__


def run_stage_job(stage: Stage) -> StageResult:
    """Job entry point: :func:`execute_stage`, with failures returned, not raised.

    Returning the failure keeps the exception's type and message structured (submitit
    would only pickle the traceback as text); the traceback also goes to the job's stderr
    log. SystemExit/KeyboardInterrupt (preemption, requeue, ^C) are not caught.
    """
    t0 = time.perf_counter()
    try:
        return execute_stage(stage)
    except Exception as exc:  # noqa: BLE001 -- every failure is reported, with its traceback
        tb = traceback.format_exc()
        print(tb, file=sys.stderr, flush=True)
        result = StageResult(getattr(stage, "name", "?"), "failed", "failed", wall_s=time.perf_counter() - t0,
                             job_id=current_job_id(), host=socket.gethostname(), error=_one_line(exc),
                             traceback_text=tb)
        write_failure(stage, result)
        return result


FAILURE_SCHEMA = "portrait.stage-failure/1"


def write_failure(stage: Stage, result: StageResult) -> None:
    """Leave the error and remote traceback next to the stage's manifest: ``portrait status``
    shows them without the job's result pickle (gone with a requeue) or sacct."""
    try:
        path = stage.failure_path()
    except Exception:  # noqa: BLE001 -- a stage too broken to name its files still reports via stderr
        return
    atomic_write_json(path, {"schema": FAILURE_SCHEMA, "stage": result.name, "error": result.error,
                             "traceback": result.traceback_text, "job_id": result.job_id, "host": result.host,
                             "failed_at": _now_iso(), "engine_version": __version__})


def _ensure_worker_logging() -> None:
    """In a fresh worker process nothing is configured and INFO lines ("skip x: up to date",
    "resume render: 30 of 48 frames already done") would be lost; send them to the job's
    stderr log. In-process (debug) runs keep the caller's logging untouched."""
    pipeline_log = logging.getLogger("portrait")
    if logging.getLogger().handlers or pipeline_log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    pipeline_log.addHandler(handler)
    pipeline_log.setLevel(logging.INFO)


class StageJob(submitit.helpers.Checkpointable):
    """The callable submitted for a stage: ``executor.submit(StageJob(), stage)``.

    Stateless on purpose: everything a rerun needs is on disk (manifest, item ledger,
    checkpoints the stage writes), so the default ``checkpoint`` -- resubmit ``self`` with
    the same stage -- continues where the preempted job stopped.
    """

    def __call__(self, stage: Stage) -> StageResult:
        _ensure_worker_logging()
        return run_stage_job(stage)

    def checkpoint(self, stage: Stage) -> submitit.helpers.DelayedSubmission:
        save_inflight_state(stage)
        log.info("checkpoint %s: requeued; finished work on disk will be kept", getattr(stage, "name", "?"))
        return submitit.helpers.DelayedSubmission(self, stage)


def save_inflight_state(stage: Stage) -> Any:
    """On preemption/timeout (submitit's checkpoint hook, inside the running job): let the
    stage save what it would otherwise lose -- its ``on_preempt()`` (a training stage saves
    the trainer's exact state) -- else save a trainer running in this process. Never raises:
    the requeue must happen even if saving fails (the last periodic checkpoint stands)."""
    try:
        hook = getattr(stage, "on_preempt", None)
        if callable(hook):
            return hook() or "in-flight state"
        train_mod = sys.modules.get("engine.neural.train")
        if train_mod is not None:
            return train_mod.checkpoint_active_trainer()
    except Exception as exc:  # noqa: BLE001 -- see docstring
        log.warning("checkpoint %s: could not save in-flight state (%s: %s)", getattr(stage, "name", "?"),
                    type(exc).__name__, exc)
    return None
