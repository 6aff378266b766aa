"""Run stages through submitit: in-process (debug), in local worker processes, or on SLURM.

``run_stages`` walks the stages in dependency order. A stage that is up to date is skipped
in this process without submitting anything; the others are submitted as
:class:`~engine.pipeline.runner.StageJob` jobs as soon as their dependencies have finished
(several at once where the DAG and ``max_parallel`` allow; on SLURM, stages that become
ready together go out as one job array). A failure stops new submissions, lets running
stages finish (their work is kept for the rerun), and raises a :class:`StageError` whose
message is one line and whose ``traceback_text`` holds the remote traceback and log paths.
"""
from __future__ import annotations

import logging
import os
import pickle
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import cloudpickle
import submitit
from submitit.core.utils import UncompletedJobError

import engine
from engine.errors import ConfigError, OutputExistsError, StageError

from .runner import StageJob, StageResult
from .stage import Stage
from .progress import format_duration, format_rate, read_progress

log = logging.getLogger("portrait.pipeline")

EXECUTOR_KINDS = ("local", "debug", "slurm")

# Parameter name -> (accepted types, how submitit's AutoExecutor(cluster="slurm") spells it).
_SLURM_PARAMS: dict[str, tuple[tuple[type, ...], str]] = {
    "partition": ((str,), "slurm_partition"),
    "time_min": ((int,), "timeout_min"),
    "gpus_per_node": ((int,), "gpus_per_node"),
    "cpus_per_task": ((int,), "cpus_per_task"),
    "mem_gb": ((int, float), "mem_gb"),
    "array_parallelism": ((int,), "slurm_array_parallelism"),
    "job_name": ((str,), "name"),
    "qos": ((str,), "slurm_qos"),
    "account": ((str,), "slurm_account"),
    "constraint": ((str,), "slurm_constraint"),
    "exclude": ((str,), "slurm_exclude"),
    "comment": ((str,), "slurm_comment"),
    "gres": ((str,), "slurm_gres"),
    "signal_delay_s": ((int,), "slurm_signal_delay_s"),
    "setup": ((list,), "slurm_setup"),          # shell lines before srun, e.g. module load
    "additional_parameters": ((dict,), "slurm_additional_parameters"),
    "max_num_timeout": ((int,), ""),            # requeues allowed after preemption/timeout
}
_LOCAL_PARAMS: dict[str, tuple[type, ...]] = {
    "time_min": (int, float),
    "gpus_per_node": (int,),
    "visible_gpus": (list,),
    "signal_delay_s": (int,),
    "max_parallel": (int,),
    "max_num_timeout": (int,),
}
_DEBUG_PARAMS: dict[str, tuple[type, ...]] = {}

# A local worker has no scheduler wall clock; submitit's default (2 min) would kill renders.
_LOCAL_DEFAULT_TIME_MIN = 7 * 24 * 60


def valid_params(kind: str) -> dict[str, tuple[type, ...]]:
    if kind == "slurm":
        return {k: v[0] for k, v in _SLURM_PARAMS.items()}
    return dict(_LOCAL_PARAMS if kind == "local" else _DEBUG_PARAMS)


@dataclass
class ExecutorConfig:
    """How to run stages. ``kind``: "local" (default: a separate worker process per stage,
    submitit.LocalExecutor), "debug" (in this process, submitit.DebugExecutor: breakpoints
    work) or "slurm". ``folder`` holds submitit's pickles and logs (default: ``submitit/``
    in the first stage's state folder; on SLURM it must be on a shared filesystem).
    ``params`` are checked against :func:`valid_params` for the kind."""

    kind: str = "local"
    folder: Path | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in EXECUTOR_KINDS:
            raise ConfigError(f"executor kind {self.kind!r} is unknown; valid kinds: {', '.join(EXECUTOR_KINDS)}")
        if self.folder is not None:
            self.folder = Path(self.folder)
        self.params = dict(self.params or {})
        valid = valid_params(self.kind)
        unknown = sorted(set(self.params) - set(valid))
        if unknown:
            listed = ", ".join(sorted(valid)) or "(none)"
            raise ConfigError(f"unknown {self.kind} executor parameter(s) {', '.join(unknown)}; "
                              f"valid: {listed}")
        for k, v in self.params.items():
            types = valid[k]
            if isinstance(v, bool) or not isinstance(v, types):
                want = " or ".join(t.__name__ for t in types)
                raise ConfigError(f"{self.kind} executor parameter {k} must be {want}, got {v!r}")
            if types[0] in (int, float) and v < 0:
                raise ConfigError(f"{self.kind} executor parameter {k} must be >= 0, got {v!r}")
        if self.params.get("max_parallel", 1) < 1:
            raise ConfigError("local executor parameter max_parallel must be >= 1")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> "ExecutorConfig":
        """From a flat mapping as written in a shot YAML ``executor:`` section:
        ``{"kind": "slurm", "folder": ..., "partition": "gpu", "time_min": 60, ...}``."""
        data = dict(data or {})
        kind = data.pop("kind", "local")
        folder = data.pop("folder", None)
        return cls(kind=str(kind), folder=Path(folder) if folder else None, params=data)

    @property
    def max_parallel(self) -> int | None:
        """How many stages may run at once (None: as many as are ready)."""
        if self.kind == "debug":
            return 1
        if self.kind == "local":
            return int(self.params.get("max_parallel", 1))
        return None

    @property
    def poll_s(self) -> float:
        # SLURM state comes from sacct, which submitit throttles; local jobs are processes.
        return 10.0 if self.kind == "slurm" else 0.1


# --------------------------------------------------------------------------------------
def _repo_root() -> Path:
    return Path(engine.__file__).resolve().parent.parent


def worker_env() -> dict[str, str]:
    """Environment additions so workers import this very checkout of engine/jobs.

    Local workers and sbatch (``--export=ALL`` by default) inherit the submitting
    process's environment at submission time.
    """
    root = str(_repo_root())
    current = os.environ.get("PYTHONPATH", "")
    parts = [p for p in current.split(os.pathsep) if p]
    if root in parts:
        return {}
    return {"PYTHONPATH": os.pathsep.join([root, *parts])}


def _local_gpu_params() -> dict[str, Any]:
    """submitit's LocalExecutor sets CUDA_VISIBLE_DEVICES from gpus_per_node (default 0,
    which hides every GPU); unless told otherwise, give workers the GPUs this process sees."""
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        ids = [x.strip() for x in cvd.split(",") if x.strip()]
        if ids and all(x.isdigit() for x in ids):
            return {"visible_gpus": [int(x) for x in ids], "gpus_per_node": len(ids)}
        return {"gpus_per_node": 0} if not ids else {}
    n = sum(1 for p in Path("/dev").glob("nvidia[0-9]*") if p.name[6:].isdigit())
    return {"gpus_per_node": n}


def make_executor(config: ExecutorConfig, folder: Path) -> submitit.Executor:
    """A configured submitit executor for ``config`` writing its files under ``folder``."""
    p = config.params
    if config.kind == "debug":
        return submitit.DebugExecutor(folder=folder)
    if config.kind == "local":
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=int(p.get("max_num_timeout", 3)))
        params: dict[str, Any] = {"timeout_min": p.get("time_min", _LOCAL_DEFAULT_TIME_MIN)}
        if "gpus_per_node" in p or "visible_gpus" in p:
            params["gpus_per_node"] = int(p.get("gpus_per_node", len(p.get("visible_gpus", ()))))
            if "visible_gpus" in p:
                params["visible_gpus"] = list(p["visible_gpus"])
        else:
            params.update(_local_gpu_params())
        if "signal_delay_s" in p:
            params["signal_delay_s"] = int(p["signal_delay_s"])
        try:
            ex.update_parameters(**params)
        except ValueError as exc:
            raise ConfigError(f"local executor: {exc}") from None
        return ex
    # slurm
    try:
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm",
                                   slurm_max_num_timeout=int(p.get("max_num_timeout", 3)))
    except RuntimeError as exc:
        raise ConfigError(f"executor kind 'slurm' but SLURM is not available here ({exc})") from None
    kwargs = {_SLURM_PARAMS[k][1]: v for k, v in p.items() if _SLURM_PARAMS[k][1]}
    try:
        ex.update_parameters(**kwargs)
    except (ValueError, NameError, AssertionError) as exc:
        raise ConfigError(f"slurm executor: {str(exc).splitlines()[0]}") from None
    return ex


# --------------------------------------------------------------------------------------
def _dependency_order(stages: Sequence[Stage], deps: Mapping[str, Sequence[str]] | None
                      ) -> tuple[list[Stage], dict[str, list[str]]]:
    names = [s.validate_name() for s in stages]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"duplicate stage name(s): {', '.join(dup)}")
    if deps is None:  # a plain list runs in order, each stage after the previous one
        graph = {n: ([names[i - 1]] if i else []) for i, n in enumerate(names)}
    else:
        unknown = sorted(set(deps) - set(names)) + sorted(
            {d for ds in deps.values() for d in ds} - set(names))
        if unknown:
            raise ValueError(f"dependencies name unknown stage(s): {', '.join(sorted(set(unknown)))}")
        graph = {n: list(deps.get(n, ())) for n in names}
    # Kahn's algorithm, keeping list order among stages that are ready together.
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(names):
        ready = [n for n in names if n not in done and all(d in done for d in graph[n])]
        if not ready:
            cyc = sorted(n for n in names if n not in done)
            raise ValueError(f"dependency cycle among stages: {', '.join(cyc)}")
        order.extend(ready)
        done.update(ready)
    by_name = dict(zip(names, stages))
    return [by_name[n] for n in order], graph


@dataclass
class _Running:
    stage: Stage
    job: Any
    t0: float


def _log_paths(job: Any) -> dict[str, str]:
    try:
        return {"stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)}
    except (AttributeError, ValueError):
        return {}


def _format_logs(logs: Mapping[str, str]) -> str:
    return "".join(f"\n  {k}: {v}" for k, v in logs.items())


def _last_exception_line(failed_job_text: str) -> str | None:
    """The ``Type: message`` line ending the traceback inside a FailedJobError's text."""
    lines = failed_job_text.splitlines()
    dashes = [i for i, ln in enumerate(lines) if ln.startswith("-" * 10)]
    body = lines[dashes[0] + 1:dashes[1]] if len(dashes) >= 2 else lines
    for ln in reversed(body):
        if ln.strip() and not ln.startswith(" "):
            return ln.strip()
    return None


def _collect(run: _Running) -> StageResult:
    """The finished job's StageResult, or raise StageError for a failure or a crash."""
    name, job = run.stage.name, run.job
    logs = _log_paths(job)
    exc = job.exception()  # for the DebugExecutor this is where the stage actually runs
    if exc is not None:
        if isinstance(exc, UncompletedJobError):
            text = str(exc)
            if "failed during processing" in text:
                # The job function itself raised (rare: run_stage_job catches Exception).
                summary = _last_exception_line(text) or "job raised an exception"
            else:
                summary = (f"job {job.job_id} ended without a result "
                           "(killed, out of memory, or timed out too many times?)")
        else:  # DebugExecutor hands back the exception object itself
            text = "".join(traceback.format_exception(exc))
            summary = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
        raise StageError(f"stage '{name}' failed: {summary.strip()}",
                         traceback_text=f"{text}\nlogs:{_format_logs(logs)}")
    result: StageResult = job.result()
    result.logs = logs
    if result.state == "failed":
        raise StageError(f"stage '{name}' failed: {result.error}",
                         traceback_text=f"{result.traceback_text}\nlogs:{_format_logs(logs)}")
    return result


_RELAY_EVERY_S = 5.0


def _relay_progress(running: Mapping[str, "_Running"], relayed: dict[str, tuple[float, str]]) -> None:
    """Log the progress line of stages running in other processes (their progress JSON),
    at most every few seconds per stage and only when it changed: long work shows progress
    in the submitting terminal, not only in the worker's log file."""
    now = time.monotonic()
    for name, run in running.items():
        last_t, last_line = relayed.get(name, (0.0, ""))
        if now - last_t < _RELAY_EVERY_S:
            continue
        snap = read_progress(run.stage.progress_path())
        if not snap or snap.get("state") != "running" or not snap.get("done"):
            continue
        total = snap.get("total")
        line = (f"[{snap.get('stage', name)}] {snap.get('done')}/{total if total is not None else '?'} "
                f"{snap.get('unit', '')}  {format_rate(snap.get('rate'), snap.get('unit', ''))}  "
                f"ETA {format_duration(snap['eta_s']) if snap.get('eta_s') is not None else '?'}")
        if line != last_line:
            log.info("%s", line)
            relayed[name] = (now, line)


def run_stages(stages: Sequence[Stage], config: ExecutorConfig | None = None, *,
               deps: Mapping[str, Sequence[str]] | None = None, version: Any = None) -> list[StageResult]:
    """Run ``stages`` (in list order, or by ``deps``: name -> names it needs) through the
    executor ``config`` describes; return one :class:`StageResult` per stage, in the
    order they were given. ``version`` (a VersionDir) guards against writing into a
    version marked complete. Raises :class:`StageError` on the first failure."""
    config = config or ExecutorConfig()
    order, graph = _dependency_order(stages, deps)
    if not order:
        return []
    folder = config.folder or (order[0].state_dir() / "submitit")
    executor: submitit.Executor | None = None
    results: dict[str, StageResult] = {}
    pending: list[Stage] = list(order)
    running: dict[str, _Running] = {}
    failure: StageError | None = None
    cap = config.max_parallel
    relayed: dict[str, tuple[float, str]] = {}

    try:
        while pending or running:
            to_submit: list[Stage] = []
            if failure is None:
                progressed = True
                while progressed:  # skips can make further stages ready at once
                    progressed = False
                    for stage in list(pending):
                        if cap is not None and len(running) + len(to_submit) >= cap:
                            break
                        if not all(d in results for d in graph[stage.name]):
                            continue
                        pending.remove(stage)
                        status = stage.check()
                        if status.state == "done":
                            log.info("skip %s: up to date", stage.name)
                            results[stage.name] = StageResult(stage.name, "skipped", "up to date",
                                                              manifest=stage.manifest_path())
                            progressed = True
                            continue
                        if version is not None and getattr(version, "is_complete", False):
                            raise OutputExistsError(
                                f"{version.name} is complete and stage '{stage.name}' is not up to date "
                                f"({status.reason}); use version: auto")
                        missing = stage.missing_inputs()
                        if missing:
                            k, p = next(iter(missing.items()))
                            failure = StageError(f"stage '{stage.name}' cannot run: input '{k}' not found: {p}")
                            break
                        try:
                            payload = cloudpickle.dumps(stage)
                        except (TypeError, pickle.PicklingError, AttributeError) as exc:
                            failure = StageError(f"stage '{stage.name}' cannot be sent to a worker "
                                                 f"(not picklable: {exc})")
                            break
                        if config.kind == "debug":
                            # Run a copy, as a worker would: a stage mutating itself in run()
                            # must not behave differently under debug.
                            stage = pickle.loads(payload)
                        log.info("run %s: %s", stage.name, status.reason)
                        to_submit.append(stage)
                    if failure is not None:
                        break
                if failure is not None:
                    pending.clear()
                    to_submit = []  # a failed precondition: start nothing new
            if to_submit:
                if executor is None:
                    executor = make_executor(config, folder)
                with submitit.helpers.environment_variables(**worker_env()):
                    if config.kind == "slurm" and len(to_submit) > 1:
                        with executor.batch():
                            jobs = [executor.submit(StageJob(), s) for s in to_submit]
                    else:
                        jobs = [executor.submit(StageJob(), s) for s in to_submit]
                for s, job in zip(to_submit, jobs):
                    if config.kind == "local":
                        # The worker process has exited when done() says so; there is no
                        # shared filesystem lag to wait out (submitit's default is 15 s).
                        job._results_timeout_s = 2
                    running[s.name] = _Running(s, job, time.perf_counter())
            if not running:
                if failure is not None or not pending:
                    break
                continue
            finished = [n for n, r in running.items() if r.job.done()]
            if not finished:
                _relay_progress(running, relayed)
                time.sleep(config.poll_s)
                continue
            for n in finished:
                run = running.pop(n)
                try:
                    results[n] = _collect(run)
                except StageError as exc:
                    log.error("%s", exc)
                    if failure is None:
                        failure = exc
                    pending.clear()  # nothing downstream can run; running stages may finish
                else:
                    r = results[n]
                    log.info("%s %s (%.1f s)", "finished" if r.state == "ran" else "skip", n, r.wall_s)
    except KeyboardInterrupt:
        for r in running.values():
            try:
                r.job.cancel(check=False)
            except Exception:  # noqa: BLE001 -- best effort on the way out
                pass
        raise
    if failure is not None:
        raise failure
    return [results[s.name] for s in stages]
