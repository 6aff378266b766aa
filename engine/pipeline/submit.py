"""Fire-and-forget submission of a stage graph to SLURM, and what ``status``/``retry``/``cancel`` read.

:func:`run_stages` keeps a process alive that submits each stage when its inputs are ready.
A farm wants the opposite: ``portrait submit`` hands the whole graph to the scheduler and
returns. :func:`submit_graph` submits every stage that needs to run at once, each SLURM job
waiting on its upstream jobs with ``--dependency=afterok:...`` (``--kill-on-invalid-dep``:
when an upstream job fails, its dependents are cancelled instead of pending forever).
Stages of one *group* (the chunks of a render, the media of tracking) go out as ONE job
array, throttled by ``array_parallelism`` (``--array=0-N%P``). Jobs receive the pickled
stage (paths and small configs), never models or frames.

Everything the other commands need lives in the graph's *jobs folder* (on the shared
filesystem, inside the shot's output version): ``plan.pkl`` (the stages and their
dependencies, so ``status`` and ``retry`` never re-plan from a YAML that may have changed
since), ``jobs.json`` (schema ``portrait.submission/1``: stage -> SLURM job id, log paths and
earlier attempts) and submitit's per-task files under ``logs/`` (``<job>_0_log.out``/``.err``).
Every job runs with its working directory set to the jobs folder, so ``sacct``'s WorkDir
leads from a bare job id back to its shot.

A stage's state comes from disk first (its manifest says done; ``<stage>.failure.json`` holds
the error and remote traceback of a failed run) and from ``sacct`` for what is queued or
running. ``retry`` = submit again: stages that are done or still queued/running are left
alone, so only failed or cancelled tasks are resubmitted -- and inside a render chunk the
item ledger makes the job render only the frames that are missing.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import cloudpickle
import submitit

from engine.errors import ConfigError, PortraitError, StageError
from engine.util.atomic import atomic_path, atomic_write_json

from .executor import ExecutorConfig, _dependency_order, make_executor, worker_env
from .progress import read_progress
from .runner import StageResult, _ensure_worker_logging, run_stage_job, save_inflight_state
from .stage import Stage, read_json_schema

log = logging.getLogger("portrait.pipeline")

RECORD_SCHEMA = "portrait.submission/1"
RECORD_NAME = "jobs.json"
PLAN_NAME = "plan.pkl"
LOGS_NAME = "logs"

# sacct states of a job that may still run (or run again).
ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
                           "SUSPENDED", "CONFIGURING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESV_DEL_HOLD"})
FAILED_STATES = frozenset({"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
                           "DEADLINE", "PREEMPTED", "REVOKED"})


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------
@dataclass
class GraphPlan:
    """A stage graph ready to submit: picklable, saved as ``plan.pkl`` in ``jobs_dir``.

    ``groups``: group name -> stage names submitted together as one job array (members must
    share their dependencies). ``resources``: group or stage name -> executor parameter
    overrides (e.g. ``{"gpus_per_node": 0}`` for the movie assembly). ``label``: prefix of the
    SLURM job names (``sh010.render``). ``seal``: callable run after the last stage succeeds
    (marks the shot version complete), or None.
    """

    stages: list[Stage]
    deps: dict[str, list[str]]
    jobs_dir: Path
    groups: dict[str, list[str]] = field(default_factory=dict)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    label: str = "portrait"
    seal: Any = None

    def __post_init__(self) -> None:
        self.jobs_dir = Path(self.jobs_dir)
        names = {s.validate_name() for s in self.stages}
        seen: set[str] = set()
        for g, members in self.groups.items():
            unknown = sorted(set(members) - names)
            if unknown:
                raise ValueError(f"group {g!r} names unknown stage(s) {', '.join(unknown)}")
            if seen & set(members):
                raise ValueError(f"stage(s) {', '.join(sorted(seen & set(members)))} in more than one group")
            seen |= set(members)
            dep_sets = {tuple(sorted(self.deps.get(m, ()))) for m in members}
            if len(dep_sets) > 1:
                raise ValueError(f"members of group {g!r} must share their dependencies")

    @property
    def by_name(self) -> dict[str, Stage]:
        return {s.name: s for s in self.stages}

    def group_of(self, name: str) -> str:
        for g, members in self.groups.items():
            if name in members:
                return g
        return name

    def sinks(self) -> list[str]:
        needed = {d for ds in self.deps.values() for d in ds}
        return [s.name for s in self.stages if s.name not in needed]

    def downstream(self, names: Iterable[str]) -> set[str]:
        out, frontier = set(), set(names)
        while frontier:
            nxt = {n for n, ds in self.deps.items() if set(ds) & frontier} - out
            out |= nxt
            frontier = nxt
        return out

    # -- files -------------------------------------------------------------------------------
    @property
    def record_path(self) -> Path:
        return self.jobs_dir / RECORD_NAME

    @property
    def plan_path(self) -> Path:
        return self.jobs_dir / PLAN_NAME

    @property
    def logs_dir(self) -> Path:
        return self.jobs_dir / LOGS_NAME

    def save(self) -> Path:
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.plan_path) as tmp:
            tmp.write_bytes(cloudpickle.dumps(self))
        return self.plan_path


def load_plan(jobs_dir: str | os.PathLike) -> GraphPlan:
    path = Path(jobs_dir) / PLAN_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PortraitError(f"no submitted graph in {jobs_dir} (no {PLAN_NAME})") from None
    try:
        plan = cloudpickle.loads(data)
    except Exception as exc:  # noqa: BLE001 -- any unpickling problem is one user-facing line
        raise PortraitError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(plan, GraphPlan):
        raise PortraitError(f"{path} does not hold a stage graph")
    plan.jobs_dir = Path(jobs_dir)
    return plan


def read_record(jobs_dir: str | os.PathLike) -> dict[str, Any]:
    rec = read_json_schema(Path(jobs_dir) / RECORD_NAME, RECORD_SCHEMA)
    return rec or {"schema": RECORD_SCHEMA, "stages": {}, "submissions": []}


# --------------------------------------------------------------------------------------
# the job
# --------------------------------------------------------------------------------------
class Seal:
    """Run in the job of a sink stage after it succeeded: when every stage of the graph is
    up to date, mark the version folders complete (no later run writes into them)."""

    def __init__(self, stages: Sequence[Stage], versions: Sequence[Any]) -> None:
        self.stages = list(stages)
        self.versions = list(versions)

    def __call__(self) -> bool:
        if not all(s.is_up_to_date() for s in self.stages):
            return False
        for v in self.versions:
            if not v.is_complete:
                v.mark_complete()
        return True


class GraphStageJob(submitit.helpers.Checkpointable):
    """The callable a graph job runs: the stage (skipped if up to date), then ``seal``.

    Unlike :class:`~engine.pipeline.runner.StageJob`, a failure RAISES here: the SLURM job
    must end FAILED so that ``afterok`` keeps its dependents from running (they are cancelled
    by ``--kill-on-invalid-dep``). The error and traceback are also in the stage's
    ``.failure.json`` and the job's stderr log. Checkpointable: on preemption or timeout
    (USR2) the stage's in-flight state is saved where it can be (a running trainer writes
    its checkpoint) and the same job is requeued; the rerun resumes from disk.
    """

    def __init__(self, seal: Any = None) -> None:
        self.seal = seal

    def __call__(self, stage: Stage) -> StageResult:
        _ensure_worker_logging()
        result = run_stage_job(stage)
        if result.state == "failed":
            raise StageError(f"stage '{result.name}' failed: {result.error}", traceback_text=result.traceback_text)
        if self.seal is not None and self.seal():
            log.info("all stages done: version sealed")
        return result

    def checkpoint(self, stage: Stage) -> submitit.helpers.DelayedSubmission:
        saved = save_inflight_state(stage)
        log.info("checkpoint %s: requeued (%s)", getattr(stage, "name", "?"),
                 f"saved {saved}" if saved else "finished work on disk is kept")
        return submitit.helpers.DelayedSubmission(self, stage)


# --------------------------------------------------------------------------------------
# sacct
# --------------------------------------------------------------------------------------
def _slurm_cmd(name: str) -> str:
    return shutil.which(name) or name


def sacct_states(job_ids: Iterable[str]) -> dict[str, dict[str, str]]:
    """Latest accounting row per job id (``123`` or array task ``123_4``): State, ExitCode,
    Reason, Start, End, NodeList. Pending array tasks appear as ``123_[2-5%2]`` in sacct and
    are expanded here. Empty when sacct cannot be reached."""
    ids = sorted({str(j) for j in job_ids if j})
    if not ids:
        return {}
    mains = sorted({j.split("_")[0] for j in ids})
    fields = ["JobID", "State", "ExitCode", "Reason", "Start", "End", "NodeList"]
    try:
        proc = subprocess.run([_slurm_cmd("sacct"), "--noheader", "--parsable2", "--allocations",
                               f"--format={','.join(fields)}", f"--jobs={','.join(mains)}"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if proc.returncode != 0:
        return {}
    rows: dict[str, dict[str, str]] = {}
    for line in proc.stdout.splitlines():
        parts = line.split("|")
        if len(parts) != len(fields):
            continue
        row = dict(zip(fields, parts))
        row["State"] = row["State"].split()[0]  # "CANCELLED by 0" -> "CANCELLED"
        for jid in _expand_job_id(row["JobID"]):
            rows[jid] = row
    # slurmctld hands jobs to the accounting database asynchronously: a job sbatch has just
    # queued (or just requeued) may be missing or behind in sacct. squeue is the live view.
    for jid, row in _squeue_states(mains).items():
        rows[jid] = {**rows.get(jid, {k: "" for k in fields}), **row}
    return rows


def _squeue_states(mains: list[str]) -> dict[str, dict[str, str]]:
    try:
        # Not --jobs: squeue fails outright when one of them has left slurmctld's memory.
        proc = subprocess.run([_slurm_cmd("squeue"), "--noheader", "--array", "--format=%i|%T|%r|%N"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    out: dict[str, dict[str, str]] = {}
    for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
        parts = line.strip().split("|")
        if len(parts) == 4 and parts[0].split("_")[0] in mains:
            for jid in _expand_job_id(parts[0]):
                out[jid] = {"JobID": jid, "State": parts[1], "Reason": parts[2], "NodeList": parts[3]}
    return out


def _expand_job_id(text: str) -> list[str]:
    """``123`` / ``123_4`` / ``123_[0-3,7%2]`` -> concrete ids."""
    if "_[" not in text:
        return [text]
    main, rest = text.split("_[", 1)
    spec = rest.rstrip("]").split("%")[0]
    out = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        if a.isdigit():
            out.extend(f"{main}_{i}" for i in range(int(a), int(b or a) + 1))
    return out


# --------------------------------------------------------------------------------------
# submit
# --------------------------------------------------------------------------------------
@dataclass
class Submission:
    """What :func:`submit_graph` did: stage -> new job id, and what it left alone."""

    plan: GraphPlan
    submitted: dict[str, str]
    active: dict[str, str]
    done: list[str]

    @property
    def job_ids(self) -> list[str]:
        def key(j: str) -> tuple[int, int]:
            main, _, task = j.partition("_")
            return int(main) if main.isdigit() else 0, int(task) if task.isdigit() else -1
        return sorted(set(self.submitted.values()), key=key)


def _stage_job_state(rec: Mapping[str, Any], states: Mapping[str, Mapping[str, str]]) -> str | None:
    jid = rec.get("job_id")
    row = states.get(str(jid)) if jid else None
    return row["State"] if row else None


def submit_graph(plan: GraphPlan, config: ExecutorConfig, *, only: Iterable[str] | None = None) -> Submission:
    """Submit the stages of ``plan`` that are neither done nor queued/running, with SLURM
    dependencies, and return at once. ``only``: restrict to these stages (and what depends
    on them). Writes ``plan.pkl`` and ``jobs.json`` in ``plan.jobs_dir``."""
    if config.kind != "slurm":
        raise ConfigError(f"submit_graph needs the slurm executor, not {config.kind!r} (use run_stages)")
    order, graph = _dependency_order(plan.stages, plan.deps)
    by_name = plan.by_name
    record = read_record(plan.jobs_dir)
    stage_recs: dict[str, dict[str, Any]] = record.setdefault("stages", {})
    states = sacct_states(r.get("job_id") for r in stage_recs.values())

    active: dict[str, str] = {}
    for name, rec in stage_recs.items():
        if name in by_name and _stage_job_state(rec, states) in ACTIVE_STATES:
            active[name] = str(rec["job_id"])
    restrict = None if only is None else set(only) | plan.downstream(only)
    to_submit: list[str] = []
    done: list[str] = []
    for stage in order:
        n = stage.name
        if n in active:
            continue
        upstream_moving = any(d in active or d in to_submit for d in graph[n])
        if restrict is not None and n not in restrict and not upstream_moving:
            continue
        if not upstream_moving and stage.check().state == "done":
            done.append(n)
            continue
        # Its inputs are being remade, or it is not done: it runs (and skips itself on the
        # node if what its upstream rewrites turns out identical).
        to_submit.append(n)

    submitted: dict[str, str] = {}
    if to_submit:
        plan.save()
        plan.logs_dir.mkdir(parents=True, exist_ok=True)
        sinks = set(plan.sinks())
        units: list[tuple[str, list[str]]] = []
        for n in to_submit:
            g = plan.group_of(n)
            if units and any(u == g for u, _ in units):
                next(m for u, m in units if u == g).append(n)
            else:
                units.append((g, [n]))
        arrays: dict[str, set[str]] = {}  # array job id -> the stages it runs (this call)
        for unit, members in units:
            dep_names = [d for m in members for d in graph[m] if d not in members]
            dep_ids: list[str] = []
            for main, names in arrays.items():
                # A whole array as ONE dependency: SLURM treats a dependency on an array task
                # that was cancelled before it started (it leaves no record) as satisfied.
                if names <= set(dep_names) and main not in dep_ids:
                    dep_ids.append(main)
            for d in dep_names:
                jid = submitted.get(d) or active.get(d)
                if jid and jid.split("_")[0] not in dep_ids and jid not in dep_ids:
                    dep_ids.append(jid)
            jobs = _submit_unit(plan, config, unit, [by_name[m] for m in members], dep_ids,
                                seal=plan.seal if sinks & set(members) else None)
            if len(jobs) > 1:
                arrays[str(jobs[0].job_id).split("_")[0]] = set(members)
            for m, job in zip(members, jobs):
                submitted[m] = str(job.job_id)
                prev = stage_recs.get(m, {})
                history = list(prev.get("history", []))
                if prev.get("job_id"):
                    history.append(prev["job_id"])
                stage_recs[m] = {"job_id": str(job.job_id), "group": unit, "depends_on": dep_ids,
                                 "submitted_at": _now_iso(), "history": history,
                                 "logs": {"stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)}}
                log.info("submitted %s: job %s%s", m, job.job_id,
                         f" (after {', '.join(dep_ids)})" if dep_ids else "")
        record["submissions"] = [*record.get("submissions", []),
                                 {"at": _now_iso(), "stages": dict(submitted)}]
    record.update(schema=RECORD_SCHEMA, label=plan.label, cluster=config.kind, jobs_dir=str(plan.jobs_dir),
                  executor_params=dict(config.params))
    plan.jobs_dir.mkdir(parents=True, exist_ok=True)
    if not plan.plan_path.exists():
        plan.save()
    atomic_write_json(plan.record_path, record)
    return Submission(plan, submitted, active, done)


def _submit_unit(plan: GraphPlan, config: ExecutorConfig, unit: str, stages: list[Stage], dep_ids: list[str],
                 seal: Any) -> list[Any]:
    params = dict(config.params)
    for key in (unit, *(s.name for s in stages)):
        params.update(plan.resources.get(key, {}))
    extra = dict(params.get("additional_parameters") or {})
    # The jobs folder as working directory: sacct's WorkDir leads from a job id to its shot.
    extra["chdir"] = str(plan.jobs_dir)
    if dep_ids:
        extra["dependency"] = "afterok:" + ":".join(dep_ids)
        extra["kill-on-invalid-dep"] = "yes"
    params["additional_parameters"] = extra
    params["job_name"] = f"{plan.label}.{unit}"
    ex = make_executor(ExecutorConfig(kind="slurm", folder=plan.logs_dir, params=params), plan.logs_dir)
    with submitit.helpers.environment_variables(**worker_env()):
        if len(stages) > 1:
            with ex.batch():
                jobs = [ex.submit(GraphStageJob(seal), s) for s in stages]
        else:
            jobs = [ex.submit(GraphStageJob(seal), stages[0])]
    return jobs


# --------------------------------------------------------------------------------------
# status
# --------------------------------------------------------------------------------------
@dataclass
class StageRow:
    """One line of ``portrait status``."""

    stage: str
    state: str                 # done | running | pending | failed
    detail: str = ""
    job_id: str | None = None
    slurm_state: str | None = None
    items_done: int | None = None
    items_total: int | None = None
    unit: str = ""
    logs: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    traceback: str = ""
    progress: dict[str, Any] | None = None


def _item_counts(stage: Stage) -> tuple[int, int] | None:
    """(items whose outputs exist, items) -- outputs are written atomically, so a file
    that exists is complete."""
    try:
        items = stage.items()
    except Exception:  # noqa: BLE001 -- status must not die on one odd stage
        return None
    if items is None:
        return None
    items = list(items)
    done = sum(1 for it in items if all(Path(p).exists() for p in it.outputs.values()))
    return done, len(items)


def _failure(stage: Stage) -> dict[str, Any] | None:
    from .runner import FAILURE_SCHEMA
    try:
        return read_json_schema(stage.failure_path(), FAILURE_SCHEMA)
    except Exception:  # noqa: BLE001
        return None


def _tail(path: str | None, n: int = 20) -> str:
    if not path:
        return ""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def graph_status(plan: GraphPlan, record: Mapping[str, Any] | None = None, *,
                 states: Mapping[str, Mapping[str, str]] | None = None) -> list[StageRow]:
    """Per stage: done / running / pending / failed, items done of total, job, logs and, for
    a failure, its one-line error and the remote traceback."""
    record = record if record is not None else read_record(plan.jobs_dir)
    recs: Mapping[str, Any] = record.get("stages", {})
    if states is None:
        states = sacct_states(r.get("job_id") for r in recs.values()) if record.get("cluster") == "slurm" else {}
    order, graph = _dependency_order(plan.stages, plan.deps)
    rows: dict[str, StageRow] = {}
    for stage in order:
        n = stage.name
        rec = recs.get(n, {})
        row = StageRow(n, "pending", job_id=rec.get("job_id"), logs=dict(rec.get("logs", {})),
                       unit=getattr(stage, "item_unit", "items"))
        counts = _item_counts(stage)
        if counts:
            row.items_done, row.items_total = counts
        row.progress = read_progress(stage.progress_path())
        sacct = states.get(str(row.job_id)) if row.job_id else None
        row.slurm_state = sacct["State"] if sacct else None
        failure = _failure(stage)
        status = stage.check()
        if status.state == "done":
            row.state, row.detail = "done", "up to date"
        elif row.slurm_state in ("RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING"):
            row.state, row.detail = "running", f"on {sacct.get('NodeList') or '?'}"
        elif row.slurm_state in ACTIVE_STATES:
            reason = (sacct or {}).get("Reason") or ""
            row.state, row.detail = "pending", f"queued ({reason})" if reason and reason != "None" else "queued"
            if row.slurm_state.startswith("REQUEUE"):
                row.detail = "requeued (resumes from its checkpoint / finished items)"
        elif failure is not None and (row.slurm_state in (None, "FAILED", "COMPLETED")
                                      or failure.get("job_id") == row.job_id):
            row.state, row.detail = "failed", failure.get("error") or "failed"
            row.error, row.traceback = failure.get("error"), failure.get("traceback", "")
        elif row.slurm_state == "CANCELLED" and ("Dependency" in ((sacct or {}).get("Reason") or "")
                                                 or any(rows[d].state != "done" for d in graph[n])):
            # Killed by --kill-on-invalid-dep (an afterok job cannot have started while an
            # upstream stage was not done; sacct's Reason/Start for it vary with timing).
            row.state, row.detail = "pending", "blocked: an upstream stage failed (portrait retry)"
        elif row.slurm_state in FAILED_STATES:
            exit_code = (sacct or {}).get("ExitCode", "")
            row.state = "failed"
            row.detail = f"job {row.job_id} {row.slurm_state.lower()}" + (f" (exit {exit_code})" if exit_code else "")
            row.error = row.detail
            row.traceback = _tail(row.logs.get("stderr"))
        elif row.slurm_state == "COMPLETED":
            # Done once, out of date now (code or inputs changed since): a resubmit reruns it.
            row.state, row.detail = "pending", f"out of date since job {row.job_id}: {status.reason}"
        elif row.job_id and row.slurm_state is None and states:
            # Known to neither squeue nor sacct: an array task cancelled before it started
            # leaves no accounting record.
            row.state, row.detail = "failed", f"job {row.job_id} ended without accounting (cancelled before it started?)"
            row.error = row.detail
        else:
            row.detail = status.reason if not row.job_id else f"job {row.job_id}: {row.slurm_state or 'no accounting (sacct unreachable?)'}"
            if not row.job_id and any(d not in rows or rows[d].state != "done" for d in graph[n]):
                row.detail = "waiting for upstream stages"
        rows[n] = row
    return [rows[s.name] for s in order]  # upstream first: read top to bottom


# --------------------------------------------------------------------------------------
# cancel, locate
# --------------------------------------------------------------------------------------
def cancel_graph(plan: GraphPlan) -> list[str]:
    """scancel every queued or running job of the graph; the job ids cancelled."""
    record = read_record(plan.jobs_dir)
    recs = record.get("stages", {})
    states = sacct_states(r.get("job_id") for r in recs.values())
    ids = sorted({str(r["job_id"]) for r in recs.values()
                  if r.get("job_id") and states.get(str(r["job_id"]), {}).get("State") in ACTIVE_STATES})
    if ids:
        proc = subprocess.run([_slurm_cmd("scancel"), *ids], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise PortraitError(f"scancel failed: {proc.stderr.strip().splitlines()[0] if proc.stderr.strip() else proc.returncode}")
    return ids


def jobs_dir_of_job(job_id: str) -> Path:
    """The jobs folder of a SLURM job (its working directory, from sacct)."""
    main = str(job_id).split("_")[0]
    try:
        proc = subprocess.run([_slurm_cmd("sacct"), "--noheader", "--parsable2", "--allocations",
                               "--format=JobID,WorkDir", f"--jobs={main}"], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PortraitError(f"cannot look up job {job_id}: {exc}") from None
    for line in proc.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 2 and parts[1] and (Path(parts[1]) / PLAN_NAME).exists():
            return Path(parts[1])
    # slurmdbd records a job a few seconds after it ends; until then (and for jobs still
    # queued or running) slurmctld's own view has the working directory.
    try:
        ctl = subprocess.run([_slurm_cmd("scontrol"), "show", "job", "-o", main], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        ctl = None
    for token in (ctl.stdout.split() if ctl is not None else []):
        if token.startswith("WorkDir="):
            work = Path(token.partition("=")[2])
            if (work / PLAN_NAME).exists():
                return work
    raise PortraitError(f"job {job_id} is not a Portrait job known to sacct or scontrol (no jobs folder found)")


def write_local_record(plan: GraphPlan, results: Sequence[StageResult], cluster: str,
                       params: Mapping[str, Any] | None = None) -> None:
    """Record a graph run by the local or debug executor, so status/retry read it the same way."""
    plan.save()
    record = read_record(plan.jobs_dir)
    recs = record.setdefault("stages", {})
    for r in results:
        recs[r.name] = {"job_id": r.job_id, "state": r.state, "logs": dict(r.logs), "finished_at": _now_iso()}
    record.update(schema=RECORD_SCHEMA, label=plan.label, cluster=cluster, jobs_dir=str(plan.jobs_dir))
    if params is not None or "executor_params" not in record:
        record["executor_params"] = dict(params or {})
    atomic_write_json(plan.record_path, record)


def format_rows(rows: Sequence[StageRow], *, tracebacks: bool = True) -> str:
    """The text ``portrait status`` prints."""
    lines = []
    width = max([len(r.stage) for r in rows] + [5])
    for r in rows:
        items = f"{r.items_done}/{r.items_total} {r.unit}" if r.items_total is not None else ""
        job = f"job {r.job_id}" if r.job_id else ""
        lines.append(f"{r.stage:<{width}}  {r.state:<8} {items:<14} {job:<16} {r.detail}".rstrip())
    by_unit: dict[str, list[int]] = {}
    for r in rows:
        if r.items_total is not None and r.stage.startswith("render"):
            acc = by_unit.setdefault(r.unit, [0, 0])
            acc[0] += r.items_done or 0
            acc[1] += r.items_total
    for unit, (d, t) in by_unit.items():
        lines.append(f"rendered: {d}/{t} {unit}")
    for r in rows:
        if r.logs and r.state in ("failed", "running"):
            lines.append(f"logs {r.stage}: {r.logs.get('stderr', '')}  {r.logs.get('stdout', '')}".rstrip())
    if tracebacks:
        for r in rows:
            if r.state == "failed":
                lines.append(f"--- {r.stage}: {r.error or r.detail}")
                if r.traceback:
                    lines.append(r.traceback.rstrip())
    return "\n".join(lines)


def rows_to_json(rows: Sequence[StageRow]) -> list[dict[str, Any]]:
    return [dict(r.__dict__) for r in rows]


def dump_json(rows: Sequence[StageRow]) -> str:
    return json.dumps(rows_to_json(rows), indent=2, default=str)
