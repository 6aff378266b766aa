"""The main job: a shot YAML becomes a graph of stages, run through the pipeline.

Today's graph (stages arrive as their issues land):

    render (plate -> EXR frames, per-frame resumable)  ->  review (movie)  ->  qc (report)
    track-plate, track-drive (media -> tracking files in the output root's content-keyed cache)

The track stages are planned when something needs the face track: a drive (``drive.mode``
video or audio), or ``track=True``. Their files are keyed by media content, not by version,
so a shot's later versions (and other shots on the same media) reuse them.

A run allocates (or resumes) one version ``vNNN`` for the shot: the render task's version
folder is allocated under the shot config's hash, and the review and qc tasks use the same
number, so one version of a shot is one consistent set of frames, movie and report.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from engine import __version__
from engine.io.ffmpeg import probe
from engine.pipeline import ExecutorConfig, StageResult, VersionDir, allocate_version, run_stages
from engine.qc.basic import BasicQcConfig, BasicQcStage
from engine.shot import Shot
from engine.stages.common import FrameTiming, ShotLayout
from engine.stages.plate_render import PassthroughRenderConfig, PassthroughRenderStage
from engine.stages.review import ReviewConfig, ReviewStage
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
              track: bool | None = None) -> ShotPlan:
    """Allocate (or resume) the shot's version folders and build its stage graph.

    ``track``: plan the face-tracking stages (None: when the shot has a drive)."""
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
    plate_hash = (path_sha256(shot.plate.path.parent) if shot.plate.is_sequence
                  else file_sha256(shot.plate.path))
    prov = {"shotVersion": layout.version, "shotConfigHash": cfg_hash[:16], "plateHash": plate_hash[:16],
            "drivingSource": str(shot.drive.source or "none"), "actorModelHash": "none (pass-through)",
            "actor": shot.actor.id}
    space = shot.plate.colourspace
    render = PassthroughRenderStage(shot.plate.path, layout, timing, PassthroughRenderConfig(
        compression=shot.render.compression, colourspace=space, owner=shot.show,
        provenance=prov), frames=frames,
        # A chunk (array task) keeps its own manifest and ledger: chunks never share state files.
        name=f"render-{frames[0]}-{frames[-1]}" if frames else None)
    stages: list[Any] = [render]
    deps: dict[str, list[str]] = {render.name: []}
    if frames is None:  # a chunk render (--frames) stops after its frames
        rm = shot.render.review_movie
        if rm.enabled:
            stages.append(ReviewStage(layout, timing, ReviewConfig(colourspace=space, burn_in=rm.burn_in,
                                                                   side_by_side=rm.side_by_side),
                                      shot.plate.path, _plate_audio(shot)))
            deps["review"] = ["render"]
            th = shot.qc.thresholds
            stages.append(BasicQcStage(layout, timing, BasicQcConfig(colourspace=space, psnr_min=th.psnr_min,
                                                                     flicker_max=th.flicker_max),
                                       shot.plate.path, {**prov, "engineVersion": __version__,
                                                         "shotFile": str(shot.source)}))
            deps["qc"] = ["review"]
        # Tracking is planned where a stage needs it: every drive mode re-animates the
        # plate's tracked face; today's pass-through render (drive none) does not.
        wants_track = track if track is not None else shot.drive.mode != "none"
        if wants_track:
            from engine.stages.track import shot_track_stages

            track_stages, track_deps = shot_track_stages(shot)
            stages.extend(track_stages)
            deps.update(track_deps)
    return ShotPlan(shot, layout, timing, stages, deps, versions)


def run_shot(shot: Shot, *, executor: str | None = None, version: int | str | None = None,
             frames: Sequence[int] | None = None, track: bool | None = None) -> ShotRunResult:
    """Run (or resume) a shot end to end; marks the version complete when every stage is done."""
    plan = plan_shot(shot, version=version, frames=frames, track=track)
    if (version in (None, "auto") and shot.version == "auto" and plan.versions[0].is_complete
            and not all(s.is_up_to_date() for s in plan.stages)):
        # Same shot config, but what the stages would write differs (new code, edited or
        # deleted outputs): a complete version is never written into, so take a new one.
        log.info("%s is complete but out of date: writing a new version", plan.layout.version)
        for v in plan.versions:
            v.release()
        plan = plan_shot(shot, version="new", frames=frames, track=track)
    try:
        results = run_stages(plan.stages, executor_config(shot, executor), deps=plan.deps, version=plan.versions[0])
        if frames is None and all(s.is_up_to_date() for s in plan.stages):
            for v in plan.versions:
                if not v.is_complete:
                    v.mark_complete()
    finally:
        for v in plan.versions:
            v.release()
    return ShotRunResult(plan, results)
