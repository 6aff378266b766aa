"""The main job: a shot YAML becomes a graph of stages, run through the pipeline.

The graph of one shot (stages join as their issues land; each node is one SLURM job, or one
job array where it says so)::

    track-plate ─┬─► train ──────────┐
    track-drive ─┴─► drive ──────────┴─► render-1001-1050 ┐
                                         render-1051-1100 ├─► review ─► qc
                                         ... (one array)  ┘

* **track** (``engine/stages/track.py``): one task per media file (plate, driving video),
  submitted together as one array. Not chunked over frames: the face-model fit solves the
  actor's identity jointly over all frames of a media file and smooths the per-frame
  parameters across time, so chunks would each get their own identity and a seam at every
  boundary; tracking runs at ~40 frames/s on 2 CPU cores (bench/results/track_throughput.json),
  minutes for a long plate, small next to training. Its files are keyed by media content,
  not by version: later versions and other shots on the same media reuse them.
* **train** (``engine/stages/train.py``, TrainStage): planned when the shot has no
  ``actor.model`` to use. Checkpointable: preempted or timed out, it saves its state and is
  requeued; the rerun resumes from the checkpoint.
* **drive** (``engine/stages/drive.py``): planned for ``drive.mode`` video or audio.
* **finetune** (``quality: offline``, ``engine/stages/finetune.py``): stage-2 fine-tuning of a
  per-shot copy of the actor model with the shot's drive parameters (test-time adaptation);
  the render then loads that copy. The actor's base model is never written.
* **render**: one stage per chunk of ``executor.slurm.chunk_frames`` frames, all chunks one
  job array capped at ``array_parallelism`` tasks at once. The neural render stage
  (``engine/stages/render.py``) when there is a model; the pass-through render until then.
* **review** (assemble the review movie) and **qc** (the report).

:func:`run_shot` runs the graph from this process (``portrait run``); :func:`submit_shot`
hands it to the cluster and returns (``portrait submit``), see
:mod:`engine.pipeline.submit`. A run allocates (or resumes) one version ``vNNN`` for the
shot: the render task's version folder is allocated under the shot config's hash, and the
review and qc tasks use the same number, so one version of a shot is one consistent set of
frames, movie and report. The submitted graph's files (``plan.pkl``, ``jobs.json``, per-task
logs) live in ``<render vNNN>/.portrait/jobs/``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from engine import __version__
from engine.io.ffmpeg import probe
from engine.errors import ConfigError
from engine.pipeline import ExecutorConfig, ItemStage, Stage, StageResult, VersionDir, allocate_version, run_stages
from engine.pipeline.chunk import FrameChunkStage, chunk_ranges
from engine.pipeline.submit import GraphPlan, Seal, Submission, submit_graph, write_local_record
from engine.qc.stage import shot_qc_stage
from engine.shot import Shot
from engine.stages.common import FrameTiming, ShotLayout
from engine.stages.drive import shot_drive_stage
from engine.stages.finetune import FinetuneStage
from engine.stages.plate_render import PassthroughRenderConfig, PassthroughRenderStage
from engine.stages.render import NeuralRenderStage
from engine.stages.review import ReviewConfig, ReviewStage
from engine.stages.train import shot_train_stage
from engine.util.hashing import file_sha256, path_sha256

log = logging.getLogger(__name__)

TASKS = ("render", "review", "qc")


@dataclass
class ShotPlan:
    shot: Shot
    layout: ShotLayout
    timing: FrameTiming
    stages: list[Any]
    deps: dict[str, list[str]]
    versions: list[VersionDir]
    groups: dict[str, list[str]] = field(default_factory=dict)

    @property
    def jobs_dir(self) -> Path:
        """Where the submitted graph's plan, job record and per-task logs go."""
        return self.versions[0].state_dir / "jobs"

    def graph(self) -> GraphPlan:
        """The picklable graph :func:`engine.pipeline.submit.submit_graph` submits."""
        # Tracking (mediapipe + least squares) and the drive are CPU work; the movie and the
        # report need neither a GPU nor many cores. Training and render get the shot's GPUs.
        resources: dict[str, dict[str, Any]] = {
            name: {"gpus_per_node": 0} for name in ("track", "track-plate", "track-drive", "drive")}
        resources.update({name: {"gpus_per_node": 0, "cpus_per_task": 2} for name in ("review", "qc")})
        return GraphPlan(list(self.stages), {k: list(v) for k, v in self.deps.items()}, self.jobs_dir,
                         groups={k: list(v) for k, v in self.groups.items()}, resources=resources,
                         label=f"{self.shot.shot}.{self.layout.version}",
                         seal=Seal(self.stages, self.versions))


@dataclass
class ShotRunResult:
    plan: ShotPlan
    results: list[StageResult]

    @property
    def layout(self) -> ShotLayout:
        return self.plan.layout


def executor_config(shot: Shot, kind: str | None = None) -> ExecutorConfig:
    """The pipeline executor for a shot: its YAML ``executor`` section, or ``kind`` override."""
    kind = kind or shot.executor.kind
    if kind != "slurm":
        return ExecutorConfig(kind=kind)
    return ExecutorConfig(kind="slurm", params=shot.executor.slurm.executor_params())


def _plate_audio(shot: Shot) -> Path | None:
    if shot.plate.audio is not None:
        return shot.plate.audio
    if not shot.plate.is_sequence and probe(shot.plate.path).has_audio:
        return shot.plate.path
    return None


def plan_shot(shot: Shot, *, version: int | str | None = None, frames: Sequence[int] | None = None,
              track: bool | None = None, chunk_frames: int | None = None,
              train: bool = False) -> ShotPlan:
    """Allocate (or resume) the shot's version folders and build its stage graph.

    ``track``: plan the face-tracking stages (None: when something consumes them: a drive or
    training). ``chunk_frames``: split the render into chunks of this many frames (stages
    ``render-FIRST-LAST``, one job array on SLURM); None: one ``render`` stage. ``train``:
    plan actor-model training when the shot names no ``actor.model`` (``portrait run`` and
    ``portrait submit`` do; without it and without a model the plate passes through)."""
    cfg_hash = shot.config_hash()
    want = shot.version if version is None else version
    fields = {"root": shot.output.root, "show": shot.show, "sequence": shot.sequence, "shot": shot.shot}
    render_v = allocate_version(shot.output.template, {**fields, "task": "render"}, config_hash=cfg_hash,
                                version=want)
    versions = [render_v]
    for task in TASKS[1:]:
        versions.append(allocate_version(shot.output.template, {**fields, "task": task},
                                         config_hash=cfg_hash, version=render_v.number))
    layout = ShotLayout(shot.show, shot.sequence, shot.shot, render_v.name,
                        render_dir=versions[0].path, review_dir=versions[1].path, qc_dir=versions[2].path)
    timing = FrameTiming(fps=shot.fps, first=shot.frames.render_first, last=shot.frames.render_last,
                         start_frame=shot.plate.start_frame, start_timecode=shot.plate.timecode)
    stages: list[Any] = []
    deps: dict[str, list[str]] = {}
    groups: dict[str, list[str]] = {}

    # -- upstream of the render: track -> train / drive ---------------------------------------
    upstream: list[str] = []
    model_path: Path | None = shot.actor.model
    drive_path: Path | None = None
    drive_name = "drive"
    by_name: dict[str, Stage] = {}
    if frames is None:  # a chunk render (--frames) renders, nothing else
        wants_train = bool(train) and shot.actor.model is None
        wants_drive = shot.drive.mode != "none"
        # The neural render reads the plate's tracking (its face model conditions the network).
        wants_track = track if track is not None else (wants_drive or wants_train or shot.actor.model is not None)
        track_stages: list[Stage] = []
        if wants_track or wants_train or wants_drive:
            from engine.stages.track import shot_track_stages

            track_stages, track_deps = shot_track_stages(shot)
            stages.extend(track_stages)
            deps.update(track_deps)
            if len(track_stages) > 1:
                groups["track"] = [s.name for s in track_stages]
        by_name = {s.name: s for s in track_stages}
        if wants_train:
            tr = shot_train_stage(shot, by_name["track-plate"].tracking_path())
            stages.append(tr)
            deps[tr.name] = ["track-plate"]
            upstream.append(tr.name)
            model_path = tr.model_path()
        if wants_drive:
            dr, dr_deps = shot_drive_stage(shot, track_stages)
            stages.append(dr)
            deps[dr.name] = list(dr_deps)
            upstream.append(dr.name)
            drive_path, drive_name = dr.out_path, dr.name
        if shot.quality == "offline" and model_path is not None and drive_path is not None:
            # Offline (high-quality) mode: the shot's driving parameters join stage-2
            # fine-tuning of a per-shot copy of the actor model (engine/stages/finetune.py);
            # the actor's base model is never written.
            ft = FinetuneStage(model_path, drive_path, by_name["track-plate"].tracking_path(),
                               drive_path.parent / f"{drive_path.name.split('.')[0]}.offline_model.pt")
            stages.append(ft)
            deps[ft.name] = ([tr.name] if wants_train else []) + [drive_name, "track-plate"]
            upstream.append(ft.name)
            model_path = ft.out
        if "track-plate" in by_name and model_path is not None:
            upstream.append("track-plate")

    # -- render (chunks), review, qc ---------------------------------------------------------
    plate_hash = (path_sha256(shot.plate.path.parent) if shot.plate.is_sequence
                  else file_sha256(shot.plate.path))
    space = shot.plate.colourspace
    neural_cls = NeuralRenderStage if model_path is not None else None
    prov = {"shotVersion": layout.version, "shotConfigHash": cfg_hash[:16], "plateHash": plate_hash[:16],
            "drivingSource": str(shot.drive.source or "none"),
            "actorModelHash": "none (pass-through)" if neural_cls is None else "see model file",
            "actor": shot.actor.id}

    def make_render(chunk: Sequence[int] | None, name: str | None) -> ItemStage:
        if neural_cls is not None:
            return neural_cls.for_shot(shot, layout, timing, model=model_path, drive=drive_path,
                                       frames=chunk, name=name or "render")
        return PassthroughRenderStage(shot.plate.path, layout, timing, PassthroughRenderConfig(
            compression=shot.render.compression, colourspace=space, owner=shot.show,
            provenance=prov), frames=chunk, name=name)

    if frames is not None:
        # A chunk (array task) keeps its own manifest and ledger: chunks never share state files.
        renders = [make_render(list(frames), f"render-{frames[0]}-{frames[-1]}")]
    elif chunk_frames is None:
        renders = [make_render(None, None)]
    else:
        renders = [FrameChunkStage(make_render(list(range(a, b + 1)), f"render-{a}-{b}"))
                   for a, b in chunk_ranges(timing.first, timing.last, chunk_frames)]
        if len(renders) > 1:
            groups["render"] = [r.name for r in renders]
    for r in renders:
        stages.append(r)
        deps[r.name] = list(upstream)
    if frames is None:
        rm = shot.render.review_movie
        if rm.enabled:
            stages.append(ReviewStage(layout, timing, ReviewConfig(colourspace=space, burn_in=rm.burn_in,
                                                                   side_by_side=rm.side_by_side),
                                      shot.plate.path, _plate_audio(shot)))
            deps["review"] = [r.name for r in renders]
            qc_prov = {**prov, "engineVersion": __version__, "shotFile": str(shot.source)}
            # The QC report (engine/qc): landmark targets from the drive and plate tracking.
            plate_track = by_name.get("track-plate") if drive_path is not None else None
            stages.append(shot_qc_stage(shot, layout, timing, qc_prov, drive=drive_path,
                                        tracking=plate_track.tracking_path() if plate_track is not None else None))
            deps["qc"] = ["review"] + ([drive_name, "track-plate"] if plate_track is not None else [])
    # Historical order (tests, reports): render first, then review/qc, then track stages.
    order = [s for s in stages if not s.name.startswith("track")] + [s for s in stages if s.name.startswith("track")]
    return ShotPlan(shot, layout, timing, order, deps, versions, groups)


def run_shot(shot: Shot, *, executor: str | None = None, version: int | str | None = None,
             frames: Sequence[int] | None = None, track: bool | None = None,
             chunk_frames: int | None = None, train: bool = True) -> ShotRunResult:
    """Run (or resume) a shot end to end -- track, train the actor model (unless the shot
    names one), drive, render, review, QC -- in this process's executor; marks the version
    complete when every stage is done."""
    plan = _plan_fresh(shot, version=version, frames=frames, track=track, chunk_frames=chunk_frames,
                       train=train)
    cfg = executor_config(shot, executor)
    # Per-task logs and submitit files in the shot version's jobs folder (as `portrait submit`
    # does), not in whichever stage happens to be first (a shared tracking cache).
    cfg.folder = plan.graph().logs_dir
    try:
        results = run_stages(plan.stages, cfg, deps=plan.deps, version=plan.versions[0])
        if frames is None and all(s.is_up_to_date() for s in plan.stages):
            for v in plan.versions:
                if not v.is_complete:
                    v.mark_complete()
    finally:
        for v in plan.versions:
            v.release()
    return ShotRunResult(plan, results)


def _plan_fresh(shot: Shot, **kw: Any) -> ShotPlan:
    version = kw.get("version")
    plan = plan_shot(shot, **kw)
    if (version in (None, "auto") and shot.version == "auto" and plan.versions[0].is_complete
            and not all(s.is_up_to_date() for s in plan.stages)):
        # Same shot config, but what the stages would write differs (new code, edited or
        # deleted outputs): a complete version is never written into, so take a new one.
        log.info("%s is complete but out of date: writing a new version", plan.layout.version)
        for v in plan.versions:
            v.release()
        plan = plan_shot(shot, **{**kw, "version": "new"})
    return plan


@dataclass
class ShotSubmitResult:
    """What :func:`submit_shot` did for one shot."""

    plan: ShotPlan
    cluster: str
    submission: Submission | None = None       # slurm: the jobs just submitted
    results: list[StageResult] | None = None   # local/debug: the stages run

    @property
    def jobs_dir(self) -> Path:
        return self.plan.jobs_dir


def submit_shot(shot: Shot, *, cluster: str | None = None, version: int | str | None = None,
                track: bool | None = None, chunk_frames: int | None = None,
                train: bool = True) -> ShotSubmitResult:
    """Hand the shot's whole graph to its cluster.

    ``slurm``: every stage that is neither done nor already queued goes out at once with
    ``afterok`` dependencies (render chunks as one array) and this returns; job ids and logs
    are recorded in the version's jobs folder. ``local``/``debug``: the same graph runs here,
    blocking. Either way a finished shot runs nothing, and a shot whose config changed gets a
    new version that reuses the content-keyed upstream work (tracking, training, drive)."""
    kind = cluster or shot.executor.kind
    chunk = chunk_frames or shot.executor.slurm.chunk_frames
    plan = _plan_fresh(shot, version=version, track=track, chunk_frames=chunk, train=train)
    try:
        graph = plan.graph()
        if kind == "slurm":
            if plan.versions[0].is_complete:
                log.info("%s is complete: nothing to submit", plan.layout.version)
                return ShotSubmitResult(plan, kind, Submission(graph, {}, {}, [s.name for s in plan.stages]))
            sub = submit_graph(graph, executor_config(shot, "slurm"))
            if not sub.submitted and not sub.active:
                graph.seal()  # every stage done: nothing left to seal it on the cluster
            return ShotSubmitResult(plan, kind, submission=sub)
        cfg = executor_config(shot, kind)
        cfg.folder = graph.logs_dir
        try:
            results = run_stages(plan.stages, cfg, deps=plan.deps, version=plan.versions[0])
        finally:
            if not plan.versions[0].is_complete:
                _record_local(graph, plan, kind, cfg.params)
        graph.seal()
        return ShotSubmitResult(plan, kind, results=results)
    finally:
        for v in plan.versions:
            v.release()


def _record_local(graph: GraphPlan, plan: ShotPlan, kind: str, params: dict[str, Any]) -> None:
    from engine.pipeline.runner import StageResult as _R
    from engine.pipeline.stage import read_manifest

    results = []
    for s in plan.stages:
        man = read_manifest(s.manifest_path()) or {}
        jid = man.get("job_id")
        if jid is None:
            from engine.pipeline.submit import _failure
            jid = (_failure(s) or {}).get("job_id")
        logs = ({"stdout": str(graph.logs_dir / f"{jid}_0_log.out"), "stderr": str(graph.logs_dir / f"{jid}_0_log.err")}
                if jid and kind == "local" else {})
        results.append(_R(s.name, "ran" if man else "failed", job_id=jid, logs=logs))
    write_local_record(graph, results, kind, params)


def locate_jobs_dir(target: str | Path) -> Path:
    """The jobs folder of a submitted shot, from what a user types after ``portrait status``:
    a shot YAML (its latest version made from this config, else its latest version), a
    SLURM job id (``123`` or ``123_4``, through sacct), or the jobs folder itself."""
    import re

    from engine.pipeline.submit import PLAN_NAME, jobs_dir_of_job
    from engine.pipeline.versions import existing_versions, render_parent, version_name
    from engine.pipeline.stage import read_json_schema
    from engine.pipeline.versions import VERSION_SCHEMA
    from engine.shot import load_shot

    text = str(target)
    path = Path(text)
    if path.is_dir():
        for cand in (path, path / ".portrait" / "jobs"):
            if (cand / PLAN_NAME).exists():
                return cand
        raise ConfigError(f"{path} holds no submitted shot graph")
    if re.fullmatch(r"\d+(_\d+)?", text):
        return jobs_dir_of_job(text)
    if not path.exists():
        raise ConfigError(f"{text} is neither a shot YAML, a job id nor a jobs folder")
    shot = load_shot(path)
    _root, parent = render_parent(shot.output.template, {"root": shot.output.root, "show": shot.show,
                                                         "sequence": shot.sequence, "shot": shot.shot,
                                                         "task": "render"})
    nums = existing_versions(parent)
    if not nums:
        raise ConfigError(f"shot {shot.shot} has not been run or submitted (nothing in {parent})")
    cfg = shot.config_hash()
    same = [n for n in nums if (read_json_schema(parent / version_name(n) / ".portrait" / "version.json",
                                                 VERSION_SCHEMA) or {}).get("config_hash") == cfg]
    for n in reversed(same or nums):
        jobs = parent / version_name(n) / ".portrait" / "jobs"
        if (jobs / PLAN_NAME).exists():
            return jobs
    raise ConfigError(f"shot {shot.shot}: no version was submitted with portrait submit (no jobs record in {parent})")
