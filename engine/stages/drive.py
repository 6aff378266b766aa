"""Drive stage: tracking files (+ drive settings) -> the shot's drive file (``portrait.drive/1``).

One file says what the face does on every rendered frame of the shot (handles included):

* ``drive.mode: video``: the driving video's performance transferred onto the plate's actor
  (:func:`engine.drive.transfer.transfer_video`) with the shot's ``drive.offset``,
  ``drive.pose`` and ``drive.region``;
* ``drive.mode: audio``: the plate's parameters with mouth and jaw from the dub audio
  (``engine.audio``; refused with a one-line error when that module is not available);
* ``drive.mode: none``: the plate's own tracked parameters (self-reenactment).

Where it is written: ``<task folder of the output template with task=drive>/
{show}_{sequence}_{shot}_drive-<settings hash 8>.drive.npz`` (the template's parent of the
version folders: the drive is a function of the tracking files and settings, not of a
render version, so every version of the shot with the same settings reuses it; the stage's
manifest re-runs it when a tracking file changes). ``shot_drive_stage`` builds the stage
for a shot on top of :func:`engine.stages.track.shot_track_stages`.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from engine.drive.drive_file import SUFFIX, write_drive
from engine.drive.transfer import FLAG_NAMES, DriveResult, VideoDriveConfig, transfer_video
from engine.errors import ConfigError
from engine.face.params import FrameParams
from engine.face.tracking_file import fps_text, load_tracking
from engine.pipeline import Stage, StageContext
from engine.util.hashing import file_sha256

__all__ = ["DriveStage", "shot_drive_stage", "drive_folder", "MODES"]

MODES = ("none", "video", "audio")


class DriveStage(Stage):
    """Make a shot's drive file.

    ``out_path``: the drive file (``.drive.npz``). ``plate_tracking``: the plate's tracking
    file; ``frames``: (first, last) plate frame numbers to drive (handles included);
    ``fps``: the shot's rate; ``plate_start_frame``: the plate's first frame number (the
    drive's origin, with ``offset``). Video mode: ``drive_tracking`` (the driving video's
    tracking file, numbered from 0). Audio mode: ``audio`` (the dub audio file).
    ``plate_sidecar`` / ``drive_sidecar``: face-model files beside the tracking files (inputs
    too: a re-learned model changes the drive).
    """

    # 2: audio mode enforces bilabial closures from the dub's phones and gates short pauses to
    # the actor's pause pose (same inputs and params, different drive)
    version = 2

    def __init__(self, out_path: str | Path, *, plate_tracking: str | Path, frames: tuple[int, int], fps: Fraction,
                 plate_start_frame: int, mode: str = "video", drive_tracking: str | Path | None = None,
                 audio: str | Path | None = None, offset: int = 0, pose: str = "plate", region: str = "face",
                 config: VideoDriveConfig | None = None, plate_sidecar: str | Path | None = None,
                 drive_sidecar: str | Path | None = None, plate_audio: str | Path | None = None,
                 a2e_model: str | Path | None = None, a2e_config: Any = None, name: str = "drive") -> None:
        if mode not in MODES:
            raise ConfigError(f"drive.mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "video" and drive_tracking is None:
            raise ConfigError("drive.mode video needs the driving video's tracking file")
        if mode == "audio" and audio is None:
            raise ConfigError("drive.mode audio needs drive.source (the dub audio)")
        if int(frames[1]) < int(frames[0]):
            raise ConfigError(f"drive frames {frames[0]}-{frames[1]}: last is before first")
        self.out_path = Path(out_path)
        if not self.out_path.name.endswith(SUFFIX):
            raise ConfigError(f"drive file name must end with {SUFFIX}: {self.out_path}")
        self.plate_tracking = Path(plate_tracking)
        self.drive_tracking = None if drive_tracking is None else Path(drive_tracking)
        self.audio = None if audio is None else Path(audio)
        self.plate_audio = None if plate_audio is None else Path(plate_audio)
        self.frames = (int(frames[0]), int(frames[1]))
        self.fps = Fraction(fps)
        self.plate_start_frame = int(plate_start_frame)
        self.mode = mode
        self.offset = int(offset)
        self.pose = pose
        self.region = region
        self.config = config or VideoDriveConfig()
        self.config.validate()
        self.plate_sidecar = None if plate_sidecar is None else Path(plate_sidecar)
        self.drive_sidecar = None if drive_sidecar is None else Path(drive_sidecar)
        # audio: an actor's trained audio-to-expression model, or None to train one on the
        # plate's own audio (written beside the drive file, a second output)
        self.a2e_model = None if a2e_model is None else Path(a2e_model)
        self.a2e_config = a2e_config
        if mode == "audio" and self.a2e_model is None and self.plate_audio is None:
            raise ConfigError("drive.mode audio needs the plate's audio (plate.audio, or a plate video with "
                              "sound) to learn the actor's mouth from")
        self.name = name

    # -- Stage ------------------------------------------------------------------------------
    def inputs(self) -> dict[str, Path]:
        ins = {"plate_tracking": self.plate_tracking}
        if self.plate_sidecar is not None:
            ins["plate_face_model"] = self.plate_sidecar
        if self.mode == "video":
            ins["drive_tracking"] = self.drive_tracking
            if self.drive_sidecar is not None:
                ins["drive_face_model"] = self.drive_sidecar
        if self.mode == "audio":
            ins["audio"] = self.audio
            if self.a2e_model is not None:
                ins["a2e_model"] = self.a2e_model
            elif self.plate_audio is not None:
                ins["plate_audio"] = self.plate_audio
        return ins

    def a2e_path(self) -> Path:
        """Where an audio-to-expression model trained by this stage goes."""
        return self.out_path.with_name(self.out_path.name[:-len(SUFFIX)] + ".a2e.pt")

    def params(self) -> dict[str, Any]:
        a2e = None
        if self.mode == "audio" and self.a2e_model is None:
            a2e = self._a2e_config().to_dict()
        return {"mode": self.mode, "frames": list(self.frames), "fps": fps_text(self.fps),
                "plate_start_frame": self.plate_start_frame, "offset": self.offset, "pose": self.pose,
                "region": self.region, "config": self.config.to_dict() if self.mode == "video" else None,
                "a2e": a2e}

    def _a2e_config(self):
        from engine.audio.a2e import A2EConfig

        cfg = self.a2e_config
        if cfg is None:
            return A2EConfig()
        return A2EConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg

    def outputs(self) -> dict[str, Path]:
        outs = {"drive": self.out_path}
        if self.mode == "audio" and self.a2e_model is None:
            outs["a2e"] = self.a2e_path()
        return outs

    def run(self, ctx: StageContext) -> None:
        plate = load_tracking(self.plate_tracking)
        frames = np.arange(self.frames[0], self.frames[1] + 1, dtype=np.int64)
        inputs: dict[str, Any] = {"plate_tracking": str(self.plate_tracking),
                                  "plate_tracking_sha256": file_sha256(self.plate_tracking),
                                  "plate_media_sha256": plate.media_sha256}
        if self.mode == "video":
            driver = load_tracking(self.drive_tracking)
            inputs.update(driver_tracking=str(self.drive_tracking),
                          driver_tracking_sha256=file_sha256(self.drive_tracking),
                          driver_media=driver.header["media"]["path"], driver_media_sha256=driver.media_sha256,
                          driver_face_model_id=driver.face_model_id)
            result = transfer_video(plate, driver, frames, plate_start_frame=self.plate_start_frame,
                                    plate_fps=self.fps, offset=self.offset, pose=self.pose, region=self.region,
                                    config=self.config)
        elif self.mode == "audio":
            inputs.update(audio=str(self.audio), audio_sha256=file_sha256(self.audio))
            model_path = self.a2e_model
            if model_path is None:
                model_path = train_actor_a2e(plate, self.plate_audio, self.a2e_path(), fps=self.fps,
                                             plate_start_frame=self.plate_start_frame, config=self._a2e_config(),
                                             log=ctx.log)
            inputs.update(a2e_model=str(model_path), a2e_model_sha256=file_sha256(model_path))
            if self.plate_audio is not None:
                inputs.update(plate_audio=str(self.plate_audio))
            result = audio_drive(plate, frames, self.audio, model_path, fps=self.fps,
                                 plate_start_frame=self.plate_start_frame, offset=self.offset, region=self.region,
                                 log=ctx.log)
        else:
            result = plate_drive(plate, frames)
        model = plate.face_model()
        face_model = {"id": model.model_id(), "content_hash": model.content_hash(), "name": model.name,
                      "exp_names": list(model.exp_names), "n_exp": model.n_exp}
        write_drive(result, self.out_path, fps=self.fps, inputs=inputs, face_model=face_model, config=self.params())
        counts = {k: v for k, v in result.flag_counts().items() if v}
        if counts:
            ctx.log.info("%s: %d of %d frames flagged (%s)", self.name, int(result.flagged.sum()), len(result),
                         ", ".join(f"{k} {v}" for k, v in counts.items()))


def plate_drive(plate, frames: np.ndarray) -> DriveResult:
    """``drive.mode: none``: the plate's own parameters on the shot's frames."""
    missing = np.setdiff1d(frames, plate.frame_numbers)
    if missing.size:
        raise ConfigError(f"plate tracking lacks frame {int(missing[0])} of the shot: re-track the plate")
    params = FrameParams.from_tracking(plate).select(np.searchsorted(plate.frame_numbers, frames))
    flags = np.where(params.usable, 0, 1 << FLAG_NAMES.index("plate_no_face")).astype(np.uint16)
    return DriveResult(params=params, flags=flags, mode="none", info={"source": "plate tracking"})


def train_actor_a2e(plate, plate_audio: Path, out_path: Path, *, fps: Fraction, plate_start_frame: int, config=None,
                    log=None) -> Path:
    """Train the actor's audio-to-expression model on the plate's own audio and tracked
    expressions (:func:`engine.audio.a2e.train_a2e`, held-out last 10 %) and save it."""
    from engine.audio.a2e import lip_gap_jacobian, mouth_names_of, mouth_opening_fn, train_a2e
    from engine.audio.features import audio_features
    from engine.audio.sync import mouth_opening
    from engine.io.audio import extract_audio, samples_for_frames

    sr = config.features.sample_rate
    samples = extract_audio(plate_audio, sr)
    # the plate's audio starts with the plate's first frame (plate.start_frame)
    start = samples_for_frames(int(plate.frame_numbers[0]), 1, fps, plate_start_frame, sr)[0]
    feats = audio_features(samples, sr, fps, len(plate), start_sample=start, config=config.features)
    usable = np.asarray(plate.usable, bool) & np.asarray(plate.fit.fitted, bool)
    mouth = mouth_opening(plate.landmarks.points, usable)
    # The fitted face model is what gets rendered: its lip gap weights the training loss and
    # verifies that the bilabial closure pose really shuts the lips.
    face = plate.face_model()
    params = FrameParams.from_tracking(plate)
    mouth_names = tuple(config.mouth_names) if config.mouth_names else mouth_names_of(plate.exp_names)
    jac = gap_fn = None
    if params.usable.any():
        jac = lip_gap_jacobian(face, params, plate.exp_names, mouth_names)
        gap_fn = mouth_opening_fn(face, params, plate.exp_names, mouth_names)
    model, report = train_a2e(feats, plate.fit.expression, plate.exp_names, usable, mouth, float(fps), config,
                              provenance={"plate_media_sha256": plate.media_sha256,
                                          "plate_audio": str(plate_audio), "face_model_id": plate.face_model_id},
                              lip_gap_jacobian=jac, lip_gap_fn=gap_fn)
    if log is not None:
        log.info("audio-to-expression model: held-out RMSE %.3f (std units) after %d steps", report.holdout_rmse,
                 report.steps)
    model.save(out_path)
    return out_path


def audio_drive(plate, frames: np.ndarray, audio: Path, a2e_model: Path, *, fps: Fraction, plate_start_frame: int,
                offset: int, region: str, log=None) -> DriveResult:
    """``drive.mode: audio``: the plate's parameters with the mouth and jaw predicted from the dub
    audio by the actor's audio-to-expression model (:func:`engine.audio.a2e.apply_dub`); upper
    face, blinks and head pose stay the plate's. The dub's sample 0 lines up with plate frame
    ``plate_start_frame + offset``; frames outside the dub are predicted from silence (closed
    mouth) and flagged ``before_start`` / ``after_end``. ``region: face`` is treated as mouth:
    audio carries no information about the upper face.

    The dub's phones (pocketsphinx, :func:`engine.audio.phones.phone_alignment`) switch on the
    model's bilabial closure rule (p/b/m shut the lips). pocketsphinx ships US-English models
    only: a dub in another language gets approximate phones (English phone models still
    separate closures from vowels reasonably). When the aligner fails the drive carries on
    without the rule and says so in ``info["phone_alignment"]`` and the log."""
    from engine.audio.a2e import A2EModel, apply_dub
    from engine.audio.features import audio_features
    from engine.errors import StageError
    from engine.io.audio import extract_audio, samples_for_frames

    missing = np.setdiff1d(frames, plate.frame_numbers)
    if missing.size:
        raise ConfigError(f"plate tracking lacks frame {int(missing[0])} of the shot: re-track the plate")
    model = A2EModel.load(a2e_model)
    if tuple(model.exp_names) != tuple(plate.exp_names):
        raise ConfigError(f"audio-to-expression model {a2e_model} was trained for another face model's "
                          "expressions than the plate's tracking: retrain it")
    sr = model.config.features.sample_rate
    dub = extract_audio(audio, sr)
    zero = int(plate_start_frame) + int(offset)
    start = samples_for_frames(int(frames[0]), 1, fps, zero, sr)[0]
    phones, palign = _dub_phones(dub, sr, model.config.close_bilabials or model.config.use_visemes, log)
    if model.config.use_visemes and phones is None:
        raise StageError(f"audio-to-expression model {a2e_model} needs phones (viseme features) but the phone "
                         f"alignment of the dub failed: {palign.get('error', 'not run')}")
    feats = audio_features(dub, sr, fps, len(frames), start_sample=start, config=model.config.features,
                           phones=phones if model.config.use_visemes else None)
    t0 = start / sr
    mouth = model.predict(feats, phones=phones, phones_t0_s=t0)
    n_closures = 0
    if phones is not None and model.config.close_bilabials:
        n_closures = model.closure_weights(len(feats), phones, phones_t0_s=t0)[1]
    base = FrameParams.from_tracking(plate).select(np.searchsorted(plate.frame_numbers, frames))
    params = apply_dub(base, mouth, plate.exp_names, model.mouth_names)
    bounds = np.array([samples_for_frames(int(f), 1, fps, zero, sr) for f in frames])
    flags = np.zeros(len(frames), np.int64)
    flags |= np.where(params.usable, 0, 1 << FLAG_NAMES.index("plate_no_face"))
    flags |= np.where(bounds[:, 1] <= 0, 1 << FLAG_NAMES.index("before_start"), 0)
    flags |= np.where(bounds[:, 0] >= len(dub), 1 << FLAG_NAMES.index("after_end"), 0)
    info = {"method": "audio-to-expression", "region": "mouth", "requested_region": region, "offset": int(offset),
            "mouth_names": list(model.mouth_names), "a2e_provenance": model.provenance,
            "speech_fraction": float(np.mean(feats.speech)), "audio_seconds": len(dub) / sr,
            "phone_alignment": palign, "bilabial_rule": bool(model.config.close_bilabials and phones is not None),
            "bilabial_closures": int(n_closures)}
    if log is not None and phones is not None and model.config.close_bilabials:
        log.info("audio drive: %d bilabial closures enforced from %d phones", n_closures, len(phones))
    return DriveResult(params=params, flags=flags.astype(np.uint16), mode="audio", info=info)


def _dub_phones(dub: np.ndarray, sr: int, wanted: bool, log) -> tuple[list | None, dict[str, Any]]:
    """The dub's phones (None when not wanted or when the aligner failed) and what to record
    about the alignment. Failures the user's setup can cause (pocketsphinx or its model
    missing: PortraitError; the decoder giving up: RuntimeError) are logged and recorded,
    not raised: the drive goes on without the closure rule."""
    from engine.audio import phones as P
    from engine.errors import PortraitError

    if not wanted:
        return None, {"ok": False, "error": "not run (the model's close_bilabials is off)"}
    cfg = P.PhoneAlignConfig()
    info: dict[str, Any] = {"method": cfg.method, "pocketsphinx": P.pocketsphinx_version(),
                            "note": "pocketsphinx US-English models: a dub in another language gets approximate phones"}
    try:
        phones = P.phone_alignment(dub, sr, cfg)
    except (PortraitError, RuntimeError) as exc:
        msg = f"{type(exc).__name__}: {exc}"
        if log is not None:
            log.warning("audio drive: phone alignment of the dub failed (%s); carrying on without the bilabial "
                        "closure rule", msg)
        info.update(ok=False, error=msg)
        return None, info
    info.update(ok=True, n_phones=len(phones), n_bilabials=sum(p.label in P.BILABIALS for p in phones))
    return phones, info


# ------------------------------------------------------------------------------------------
# shots
# ------------------------------------------------------------------------------------------
def drive_folder(shot, root: Path | None = None) -> Path:
    """Where a shot's drive files go: the output template's task folder for task ``drive``."""
    from engine.pipeline.versions import render_parent

    fields = {"root": str(root if root is not None else shot.output.root), "show": shot.show,
              "sequence": shot.sequence, "shot": shot.shot, "task": "drive"}
    return render_parent(shot.output.template, fields)[1]


def shot_drive_stage(shot, track_stages: list, *, config: VideoDriveConfig | None = None, root: Path | None = None,
                     out_path: Path | None = None, name: str = "drive") -> tuple[DriveStage, list[str]]:
    """The drive stage of a shot and the names of the stages it needs.

    ``track_stages``: the stages of :func:`engine.stages.track.shot_track_stages` for the same
    shot (``track-plate`` and, for a video drive, ``track-drive``; a driving video that is the
    plate itself is tracked once). ``root`` overrides ``output.root``; ``out_path`` the file."""
    by_name = {s.name: s for s in track_stages}
    plate = by_name.get("track-plate")
    if plate is None:
        raise ConfigError("shot_drive_stage needs the shot's track-plate stage")
    deps = [plate.name]
    mode = shot.drive.mode
    drive_track = drive_sidecar = None
    if mode == "video":
        drv = by_name.get("track-drive", plate)   # the plate driving itself is tracked once
        drive_track = drv.tracking_path()
        drive_sidecar = drv.outputs().get("face_model")
        if drv is not plate:
            deps.append(drv.name)
    region = shot.drive.region or ("mouth" if mode == "audio" else "face")
    cfg = config or VideoDriveConfig()
    plate_audio = None
    if mode == "audio":
        plate_audio = shot.plate.audio if shot.plate.audio is not None else (
            None if shot.plate.is_sequence else shot.plate.path)
    stage = DriveStage(Path("x" + SUFFIX), plate_tracking=plate.tracking_path(),
                       frames=(shot.frames.render_first, shot.frames.render_last), fps=shot.fps,
                       plate_start_frame=shot.plate.start_frame, mode=mode, drive_tracking=drive_track,
                       audio=shot.drive.source if mode == "audio" else None, offset=shot.drive.offset,
                       pose=shot.drive.pose, region=region, config=cfg,
                       plate_sidecar=plate.outputs().get("face_model"), drive_sidecar=drive_sidecar,
                       plate_audio=plate_audio, name=name)
    if out_path is None:
        folder = drive_folder(shot, root)
        out_path = folder / f"{shot.show}_{shot.sequence}_{shot.shot}_drive-{stage.params_sha256()[:8]}{SUFFIX}"
    stage.out_path = Path(out_path)
    return stage, deps

