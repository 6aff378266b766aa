"""The full QC: :func:`run_qc` (any render + plate [+ audio, drive, tracking]) and :class:`QcStage`
(the shot graph's ``qc`` task), plus :func:`shot_qc_inputs` (a shot's latest version as QC inputs).

Outputs in ``out_dir``: ``report.html`` (self-contained) and ``metrics.json`` (schema
``portrait.qc-report/2``: verdict, gates, summary, every per-frame value, lip-sync detail,
inputs with content hashes, provenance, thresholds), both written atomically.
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import logging
import math
import platform
import socket
import sys
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine import __version__
from engine.errors import ConfigError, MediaError
from engine.io import colour
from engine.io.plate import open_plate
from engine.pipeline import Stage, StageContext
from engine.qc.gates import default_thresholds, evaluate_gates, verdict
from engine.qc.measure import MeasureConfig, Measurements, measure
from engine.qc.media import RenderSource, display_of, load_audio
from engine.qc.report import contact_sheet, jsonable, overlay_tile, render_html, tile_row
from engine.stages.common import FrameTiming, ShotLayout
from engine.util.atomic import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["QC_SCHEMA", "QcInputs", "QcReportConfig", "QcResult", "run_qc", "QcStage", "shot_qc_stage",
           "shot_qc_inputs", "shot_qc_config", "latest_version", "shot_audio", "shot_plate_audio"]

QC_SCHEMA = "portrait.qc-report/2"


@dataclass(frozen=True)
class QcReportConfig:
    """Settings of one QC run (picklable; thresholds as a plain dict of the shot's ``qc.thresholds``)."""

    thresholds: dict[str, float] = field(default_factory=default_thresholds)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    worst_n: int = 6
    overlay_n: int = 6
    thumb: int = 144


@dataclass(frozen=True)
class QcInputs:
    """What is checked. Frame numbers are the plate's; a movie render is numbered from
    ``render_start_frame``, a sequence by its file names; ``audio`` sample 0 plays at
    ``audio_start_frame``. ``drive``+``tracking``: target landmarks from the drive file
    (else the plate's own)."""

    render: Path
    plate: Path
    fps: Fraction
    first: int
    last: int
    plate_start_frame: int = 1001
    plate_colourspace: str = "Rec.709"
    render_start_frame: int = 1001
    render_colourspace: str | None = None
    audio: Path | None = None
    audio_start_frame: int | None = None
    plate_audio: Path | None = None       # the plate's production audio: baseline of the AV offset
    drive: Path | None = None
    tracking: Path | None = None
    review_movie: Path | None = None
    title: str = ""


@dataclass
class QcResult:
    verdict: str
    gates: list
    summary: dict[str, Any]
    report: Path
    metrics: Path


def _pkg(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _versions() -> dict[str, str]:
    from engine.io.ffmpeg import _ffmpeg_version, ffmpeg_exe
    try:
        ff = _ffmpeg_version(ffmpeg_exe())
    except MediaError:
        ff = None
    return {"engine": __version__, "python": platform.python_version(),
            "torch": _pkg("torch"), "numpy": _pkg("numpy"), "opencv": _pkg("opencv-contrib-python"),
            "mediapipe": _pkg("mediapipe"), "dlib": _pkg("dlib-bin"), "pocketsphinx": _pkg("pocketsphinx"),
            "openexr": _pkg("OpenEXR"), "ffmpeg": ".".join(map(str, ff)) if ff else "unknown"}


def _hash(path: Path | None) -> str | None:
    if path is None:
        return None
    from engine.face.track import media_sha256
    try:
        return media_sha256(path)[:16]
    except MediaError:
        return None


def _review_movie_check(path: Path | None, n_frames: int, want_audio: bool) -> dict[str, Any] | None:
    if path is None:
        return None
    from engine.io.ffmpeg import probe
    if not path.exists():
        return {"path": str(path), "exists": False, "ok": False, "reason": "review movie missing"}
    try:
        info = probe(path)
    except MediaError as exc:
        return {"path": str(path), "exists": True, "ok": False, "reason": str(exc)}
    ok = info.frame_count == n_frames and (info.has_audio or not want_audio)
    reason = "" if ok else (f"{info.frame_count} frames, expected {n_frames}" if info.frame_count != n_frames
                            else "no audio track")
    return {"path": str(path), "exists": True, "frames": info.frame_count, "has_audio": info.has_audio,
            "ok": ok, "reason": reason}


def _pick_worst(m: Measurements, k: int, ground_truth: bool) -> list[int]:
    pf = m.per_frame
    score = -pf["psnr_face"] if ground_truth and np.isfinite(pf["psnr_face"]).any() else pf["lmd_face"].copy()
    if not np.isfinite(score).any():
        score = np.nan_to_num(pf["flicker"], nan=-np.inf)
    score = np.where(np.isfinite(score), score, -np.inf)
    present = np.array([s == "ok" for s in m.status])
    order = [int(i) for i in np.argsort(-score, kind="stable") if present[i] and np.isfinite(score[i])]
    return sorted(order[:k])


def _worst_key(m: Measurements, i: int, cfg: QcReportConfig) -> float:
    v = m.per_frame["psnr_face"][i] if cfg.measure.ground_truth else -m.per_frame["lmd_face"][i]
    return float(v) if np.isfinite(v) else float("inf")


def _pick_overlays(m: Measurements, k: int) -> list[int]:
    ok = np.flatnonzero(m.render_usable & m.target_usable)
    if ok.size == 0:
        return []
    lmd = m.per_frame["lmd_mouth"][ok]
    worst = [int(ok[i]) for i in np.argsort(-np.nan_to_num(lmd, nan=-1))[: max(1, k // 2)]]
    even = [int(ok[int(round(x))]) for x in np.linspace(0, ok.size - 1, k)]
    out: list[int] = []
    for i in worst + even:
        if i not in out:
            out.append(i)
    return sorted(out[:k])


def _frames_for(inputs: QcInputs, render: RenderSource, indices: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Display uint8 (plate, render) of a few frames (second pass: only the ones shown)."""
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if not indices:
        return out
    with open_plate(inputs.plate, inputs.fps, inputs.plate_start_frame) as plate:
        for i in indices:
            f = inputs.first + i
            p = colour.to_uint8(display_of(plate.read(f), inputs.plate_colourspace, inputs.plate_colourspace))
            rf = next(render.iter(f, f))
            if rf.rgb is not None:
                out[i] = (p, colour.to_uint8(rf.rgb))
    return out


def run_qc(inputs: QcInputs, out_dir: str | Path, config: QcReportConfig | None = None, *,
           provenance: dict[str, Any] | None = None, command: str | None = None,
           progress: Callable[[int, int], None] | None = None) -> QcResult:
    """Measure, gate and write ``report.html`` + ``metrics.json`` into ``out_dir``."""
    cfg = config or QcReportConfig()
    out = Path(out_dir)
    if inputs.last < inputs.first:
        raise ConfigError(f"empty frame range {inputs.first}-{inputs.last}")
    notes: list[str] = []
    render = RenderSource(inputs.render, inputs.fps, start_frame=inputs.render_start_frame,
                          colourspace=inputs.render_colourspace, plate_colourspace=inputs.plate_colourspace)
    with render:
        audio = None
        if inputs.audio is not None:
            start = inputs.plate_start_frame if inputs.audio_start_frame is None else inputs.audio_start_frame
            audio = load_audio(inputs.audio, start)
        plate_audio = None
        if inputs.plate_audio is not None:
            plate_audio = (audio if audio is not None and Path(inputs.plate_audio) == Path(inputs.audio)
                           and audio.start_frame == inputs.plate_start_frame
                           else load_audio(inputs.plate_audio, inputs.plate_start_frame))
        target = None
        target_source = "plate (self-reenactment)"
        target_info: dict[str, Any] = {}
        if inputs.drive is not None:
            if inputs.tracking is None:
                raise ConfigError("a drive file needs the plate's tracking file to build landmark targets")
            # Plate landmarks are measured in the pass; targets need them, so measure first
            # with the plate as target, then re-score against the drive targets (cheap).
        m = measure(render, inputs.plate, inputs.fps, inputs.first, inputs.last,
                    plate_start_frame=inputs.plate_start_frame, plate_colourspace=inputs.plate_colourspace,
                    target_points=None, target_source=target_source, audio=audio, plate_audio=plate_audio,
                    config=cfg.measure,
                    progress=progress)
        if inputs.drive is not None:
            from engine.qc.measure import rescore_targets
            from engine.qc.targets import drive_targets
            target, target_info = drive_targets(inputs.drive, inputs.tracking, m.frames, m.plate_points)
            rescore_targets(m, target, f"drive file {Path(inputs.drive).name}", cfg.measure)
        if render.kind == "movie":
            notes.append("render is a movie: compression and any burn-in count against the fidelity figures")
        if not cfg.measure.ground_truth:
            notes.append("no ground truth (the drive changes the performance): PSNR/SSIM/LPIPS are not gated")
            if inputs.drive is None:
                # The plate's landmarks are not what a dub / video drive asks for: no target.
                for k in ("lmd_px", "expression_error"):
                    m.summary[k] = None
                m.unavailable["lmd_px"] = "no drive file: the render's landmark targets are unknown"
                notes.append("no drive file: landmark distances are against the plate, for information only")

        movie = _review_movie_check(inputs.review_movie, len(m.frames), inputs.audio is not None)
        if movie is not None:
            m.summary["review_movie_ok"] = movie["ok"]
            if not movie["ok"]:
                notes.append(f"review movie: {movie['reason']}")

        gates = evaluate_gates(m.summary, cfg.thresholds, m.unavailable)
        v = verdict(gates)

        worst_idx = _pick_worst(m, cfg.worst_n, cfg.measure.ground_truth)
        ov_idx = _pick_overlays(m, cfg.overlay_n)
        shown = _frames_for(inputs, render, sorted(set(worst_idx) | set(ov_idx)))
    pf = m.per_frame
    worst = []
    for i in worst_idx:
        if i in shown:
            lab = f"{int(m.frames[i])}"
            if math.isfinite(pf["psnr_face"][i]):
                lab += f"  PSNR {pf['psnr_face'][i]:.1f} dB"
            if math.isfinite(pf["lmd_face"][i]):
                lab += f"  LMD {pf['lmd_face'][i]:.2f}px"
            worst.append(tile_row(shown[i][0], shown[i][1], cfg.thumb, lab))
    overlays = [overlay_tile(shown[i][1], m.render_points[i], m.target_points[i],
                             f"{int(m.frames[i])}  mouth LMD {pf['lmd_mouth'][i]:.2f}px", 220)
                for i in ov_idx if i in shown]
    sheet = contact_sheet(m.contact_rows, cfg.thumb)

    exr_prov = {}
    first_ok = next((int(f) for f, s in zip(m.frames, m.status) if s == "ok"), None)
    if render.kind == "exr" and first_ok is not None:
        hdr = next(render.iter(first_ok, first_ok)).header or {}
        exr_prov = {k: str(v) for k, v in hdr.items() if isinstance(k, str) and k.startswith("portrait/")}
    prov: dict[str, Any] = {"command": command or " ".join(sys.argv), "created": _dt.datetime.now(
        _dt.timezone.utc).isoformat(timespec="seconds"), "host": socket.gethostname()}
    prov.update({f"input {k}": v for k, v in {
        "render": str(inputs.render), "plate": str(inputs.plate), "audio": str(inputs.audio) if inputs.audio else None,
        "drive": str(inputs.drive) if inputs.drive else None,
        "tracking": str(inputs.tracking) if inputs.tracking else None}.items() if v})
    prov.update({f"sha256 {k}": h for k, h in {"plate": _hash(inputs.plate), "render": _hash(inputs.render),
                                                "audio": _hash(inputs.audio), "drive": _hash(inputs.drive),
                                                "tracking": _hash(inputs.tracking)}.items() if h})
    prov.update(provenance or {})
    prov.update({f"render header {k}": v for k, v in exr_prov.items()})
    prov.update({f"version {k}": v for k, v in _versions().items()})

    thresholds = {**default_thresholds(), **cfg.thresholds}
    metrics = {
        "schema": QC_SCHEMA, "engine_version": __version__, "title": inputs.title, "verdict": v,
        "failing": [g.name for g in gates if g.status == "fail"],
        "gates": [g.to_json() for g in gates], "summary": m.summary, "unavailable": m.unavailable,
        "frames": {"first": inputs.first, "last": inputs.last, "count": len(m.frames),
                   "missing": m.summary["missing_frames"], "no_face": m.summary["no_face_frames"]},
        "per_frame": {"frame": m.frames, "status": m.status,
                      **{k: v for k, v in pf.items()}},
        "worst_frames": [int(m.frames[i]) for i in sorted(worst_idx, key=lambda i: _worst_key(m, i, cfg))],
        "lipsync": m.lipsync, "targets": target_info, "review_movie": movie, "thresholds": thresholds,
        "config": asdict(cfg), "notes": notes, "provenance": prov,
        "inputs": {k: (str(v) if isinstance(v, (Path, Fraction)) else v) for k, v in asdict(inputs).items()},
    }
    metrics = jsonable(metrics)
    page = render_html(title=inputs.title or Path(inputs.render).name, m=m, gates=gates, verdict=v, sheet=sheet,
                       worst=worst, overlays=overlays, provenance=prov, thresholds=thresholds,
                       fps=float(inputs.fps), notes=notes)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = atomic_write_json(out / "metrics.json", metrics)
    report_path = atomic_write_text(out / "report.html", page)
    return QcResult(v, gates, m.summary, report_path, metrics_path)


# ------------------------------------------------------------------------------------------
# the shot's stage
# ------------------------------------------------------------------------------------------
class QcStage(Stage):
    """The shot graph's ``qc`` task: the full report of one version of a shot.

    ``audio``: the dialogue the mouth should follow (plate audio, or the dub for
    ``drive.mode: audio``), whose sample 0 plays at ``audio_start_frame``; ``drive`` and
    ``tracking``: the drive file and the plate's tracking file (targets of the landmark check);
    ``ground_truth``: False when a drive changes the performance (no PSNR/SSIM gates)."""

    name = "qc"
    version = 2

    def __init__(self, layout: ShotLayout, timing: FrameTiming, config: QcReportConfig, plate: Path,
                 provenance: dict[str, Any], *, plate_colourspace: str = "Rec.709", audio: Path | None = None,
                 audio_start_frame: int | None = None, plate_audio: Path | None = None, drive: Path | None = None,
                 tracking: Path | None = None, review_movie: bool = True) -> None:
        self.layout, self.timing, self.config = layout, timing, config
        self.plate = Path(plate)
        self.provenance = dict(provenance)
        self.plate_colourspace = plate_colourspace
        self.audio = Path(audio) if audio else None
        self.audio_start_frame = audio_start_frame
        self.plate_audio = Path(plate_audio) if plate_audio else None
        self.drive = Path(drive) if drive else None
        self.tracking = Path(tracking) if tracking else None
        self.review_movie = review_movie

    def qc_inputs(self) -> QcInputs:
        lay = self.layout
        return QcInputs(render=lay.frame_pattern, plate=self.plate, fps=self.timing.fps, first=self.timing.first,
                        last=self.timing.last, plate_start_frame=self.timing.start_frame,
                        plate_colourspace=self.plate_colourspace, audio=self.audio,
                        audio_start_frame=self.audio_start_frame, plate_audio=self.plate_audio,
                        drive=self.drive, tracking=self.tracking,
                        review_movie=lay.review_movie if self.review_movie else None,
                        title=f"{lay.show} / {lay.sequence} / {lay.shot} {lay.version}")

    def inputs(self) -> dict[str, Path]:
        ins = {"frames": self.layout.render_dir, "plate": self.plate}
        if self.review_movie:
            ins["movie"] = self.layout.review_movie
        for k in ("audio", "plate_audio", "drive", "tracking"):
            if getattr(self, k) is not None:
                ins[k] = getattr(self, k)
        return ins

    def params(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "timing": asdict(self.timing), "prefix": self.layout.frame_prefix,
                "provenance": self.provenance, "plate_colourspace": self.plate_colourspace,
                "audio_start_frame": self.audio_start_frame}

    def outputs(self) -> dict[str, Path]:
        return {"report": self.layout.qc_dir / "report.html", "metrics": self.layout.qc_dir / "metrics.json"}

    def run(self, ctx: StageContext) -> None:
        n = self.timing.last - self.timing.first + 1
        with ctx.progress(n, "frames") as prog:
            done = {"n": 0}

            def step(i: int, total: int) -> None:
                prog.update(i - done["n"])
                done["n"] = i
            res = run_qc(self.qc_inputs(), self.layout.qc_dir, self.config, provenance=self.provenance,
                         command=f"portrait run (qc stage of {self.layout.version})", progress=step)
        ctx.log.info("qc %s: %s%s", self.layout.version, res.verdict,
                     "" if res.verdict == "PASS" else " (" + ", ".join(g.name for g in res.gates if g.status == "fail") + ")")


# ------------------------------------------------------------------------------------------
# a shot's inputs
# ------------------------------------------------------------------------------------------
def latest_version(shot, version: int | None = None) -> ShotLayout:
    """The layout of the shot's latest rendered version (or ``version``)."""
    from engine.pipeline.versions import existing_versions, render_parent, version_name
    fields = {"root": shot.output.root, "show": shot.show, "sequence": shot.sequence, "shot": shot.shot}
    parents = {t: render_parent(shot.output.template, {**fields, "task": t})[1] for t in ("render", "review", "qc")}
    nums = existing_versions(parents["render"])
    if version is None:
        nums = [v for v in nums if any((parents["render"] / version_name(v)).glob("*.exr"))]
        if not nums:
            raise MediaError(f"{shot.shot} has no rendered version under {parents['render']}: run the shot first")
        version = nums[-1]
    elif version not in nums:
        raise MediaError(f"{shot.shot} has no version {version_name(version)} under {parents['render']}")
    name = version_name(version)
    return ShotLayout(shot.show, shot.sequence, shot.shot, name, render_dir=parents["render"] / name,
                      review_dir=parents["review"] / name, qc_dir=parents["qc"] / name)


def shot_audio(shot) -> tuple[Path | None, int | None]:
    """The dialogue the mouth should follow and the frame its sample 0 plays at."""
    from engine.io.ffmpeg import probe
    if shot.drive.mode == "audio" and shot.drive.source is not None:
        return Path(shot.drive.source), shot.plate.start_frame + shot.drive.offset
    if shot.plate.audio is not None:
        return Path(shot.plate.audio), shot.plate.start_frame
    if not shot.plate.is_sequence and probe(shot.plate.path).has_audio:
        return Path(shot.plate.path), shot.plate.start_frame
    return None, None


def shot_plate_audio(shot) -> Path | None:
    """The plate's production audio (its own track, else ``plate.audio``): the AV-sync baseline."""
    from engine.io.ffmpeg import probe
    if not shot.plate.is_sequence and probe(shot.plate.path).has_audio:
        return Path(shot.plate.path)
    return Path(shot.plate.audio) if shot.plate.audio is not None else None


def shot_tracking(shot) -> Path | None:
    """The plate's tracking file in the shot's cache, if it has been tracked."""
    from engine.stages.track import shot_track_stages
    try:
        stages, _ = shot_track_stages(shot)
    except MediaError:
        return None
    path = stages[0].tracking_path()
    return path if path.exists() else None


def shot_qc_config(shot, **measure_overrides: Any) -> QcReportConfig:
    ground_truth = shot.drive.mode == "none"
    region = shot.drive.region or ("mouth" if shot.drive.mode == "audio" else "face")
    mc = MeasureConfig(ground_truth=ground_truth, lmd_region=region if shot.drive.mode != "none" else "face",
                       **measure_overrides)
    return QcReportConfig(thresholds={**default_thresholds(), **shot.qc.thresholds.as_dict()}, measure=mc)


def shot_drive_files(shot) -> tuple[Path | None, Path | None]:
    """(drive file, plate tracking file) the shot's drive stage wrote, where both exist."""
    try:
        from engine.stages.drive import shot_drive_stage
        from engine.stages.track import shot_track_stages
        tracks, _ = shot_track_stages(shot)
        stage, _ = shot_drive_stage(shot, tracks)
    except (ImportError, MediaError, ConfigError):
        return None, None
    drive, tracking = Path(stage.out_path), tracks[0].tracking_path()
    return (drive, tracking) if drive.exists() and tracking.exists() else (None, None)


def shot_qc_inputs(shot, layout: ShotLayout, *, drive: Path | None = None, tracking: Path | None = None) -> QcInputs:
    audio, audio_start = shot_audio(shot)
    if drive is None and shot.drive.mode != "none":
        drive, tracking = shot_drive_files(shot)
    tracking = tracking or (shot_tracking(shot) if drive is not None else None)
    return QcInputs(render=layout.frame_pattern, plate=Path(shot.plate.path), fps=shot.fps,
                    first=shot.frames.render_first, last=shot.frames.render_last,
                    plate_start_frame=shot.plate.start_frame, plate_colourspace=shot.plate.colourspace,
                    audio=audio, audio_start_frame=audio_start, plate_audio=shot_plate_audio(shot),
                    drive=drive, tracking=tracking,
                    review_movie=layout.review_movie if shot.render.review_movie.enabled else None,
                    title=f"{shot.show} / {shot.sequence} / {shot.shot} {layout.version}")


def shot_qc_stage(shot, layout: ShotLayout, timing: FrameTiming, provenance: dict[str, Any], *,
                  drive: Path | None = None, tracking: Path | None = None,
                  **measure_overrides: Any) -> QcStage:
    """The shot graph's ``qc`` stage for ``shot`` (what :func:`engine.shotgraph.plan_shot` builds):
    thresholds from ``qc.thresholds``, ground truth only for ``drive.mode: none``, the dialogue
    (plate audio, or the dub for ``drive.mode: audio``) and the plate's production audio as the
    AV-sync baseline; ``drive`` / ``tracking``: the drive file and the plate's tracking file
    (landmark targets; both None: the plate's own landmarks)."""
    audio, audio_start = shot_audio(shot)
    if drive is not None and tracking is None:
        raise ConfigError("the qc stage needs the plate's tracking file with a drive file")
    return QcStage(layout, timing, shot_qc_config(shot, **measure_overrides), Path(shot.plate.path), provenance,
                   plate_colourspace=shot.plate.colourspace, audio=audio, audio_start_frame=audio_start,
                   plate_audio=shot_plate_audio(shot), drive=drive, tracking=tracking,
                   review_movie=shot.render.review_movie.enabled)
