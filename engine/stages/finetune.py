"""Offline mode: fold a shot's driving parameters into stage-2 fine-tuning (test-time adaptation).

When a shot's ``quality`` is ``offline``, the driving sequence -- already transferred to the
actor (a drive file, :mod:`engine.drive.drive_file`, or its :class:`FrameParams`) -- is
exactly the set of face-model parameters the shot will render. Stage 2
(:mod:`engine.neural.stage2`) normally trains on *sampled* auxiliary parameters; here the
shot's own parameters join them (``stage2.drive_fraction`` of the auxiliary samples, rendered
over the shot's own plate frames where those are training frames), so the model adapts to
this performance before rendering it -- test-time adaptation of the personalised prior, with
no ground truth for the new frames (the stage-2 losses need none) and plate reconstruction
continuing so the actor's appearance does not drift.

The actor's base model is read, never written: fine-tuning starts from a copy of its weights
in memory and writes a new, per-shot model file whose provenance records the base model's
and the drive's content hashes (``meta.provenance["finetune"]``). The work folder next to it
holds a resumable checkpoint while the job runs (a preempted job continues exactly) and is
removed once the model is written.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from engine.errors import ConfigError, MediaError
from engine.pipeline import Stage, StageContext
from engine.util.hashing import file_sha256

log = logging.getLogger("portrait.stages.finetune")

__all__ = ["FinetuneConfig", "FinetuneResult", "FinetuneStage", "finetune_model", "drive_params",
           "params_sha256"]


@dataclass
class FinetuneConfig:
    """steps: fine-tuning steps; lr_scale: learning rates relative to the base run's;
    drive_fraction: share of auxiliary samples taken from the shot's drive (the rest are
    stage 2's sampled expressions / poses, which keep the model general); warmup_steps: the
    landmark head / discriminator train alone first (they start untrained); seed;
    overrides: further training-config keys (:func:`engine.neural.train.apply_overrides`)."""

    steps: int = 300
    lr_scale: float = 0.3
    drive_fraction: float = 0.6
    warmup_steps: int = 50
    checkpoint_every: int = 100
    seed: int = 1
    overrides: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.steps < 1 or self.warmup_steps < 0 or self.checkpoint_every < 1:
            raise ConfigError("finetune steps and checkpoint_every must be >= 1, warmup_steps >= 0")
        if not 0 < self.lr_scale <= 10:
            raise ConfigError(f"finetune lr_scale must be in (0, 10], got {self.lr_scale}")
        if not 0 <= self.drive_fraction <= 1:
            raise ConfigError(f"finetune drive_fraction must be in [0, 1], got {self.drive_fraction}")


@dataclass
class FinetuneResult:
    model: Path
    steps: int
    status: str
    provenance: dict[str, Any]
    last: dict[str, float]


def params_sha256(params: Any) -> str:
    """Content hash of a FrameParams (for provenance when no drive file exists)."""
    h = hashlib.sha256()
    for k, v in sorted(params.to_arrays().items()):
        a = np.ascontiguousarray(v)
        h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def drive_params(drive: Any) -> tuple[Any, str, str]:
    """(FrameParams, content hash, face-model id or "") of a drive file path, a loaded drive
    (anything with ``.params``) or a FrameParams."""
    if isinstance(drive, (str, Path)):
        from engine.drive.drive_file import load_drive
        d = load_drive(drive)
        return d.params, file_sha256(drive), getattr(d, "face_model_id", "") or ""
    if hasattr(drive, "params"):
        fm = ""
        try:
            fm = getattr(drive, "face_model_id", "") or ""
        except (KeyError, TypeError):
            fm = ""
        return drive.params, params_sha256(drive.params), fm
    if hasattr(drive, "expression") and hasattr(drive, "frame_numbers"):
        return drive, params_sha256(drive), ""
    raise ConfigError(f"finetune: cannot read driving parameters from {type(drive).__name__}")


def _finetune_config(base_train_config: Mapping[str, Any], cfg: FinetuneConfig):
    from engine.neural.train import apply_overrides, config_from_dict

    tc = config_from_dict(base_train_config)
    tc.steps = cfg.steps
    tc.seed = cfg.seed
    tc.checkpoint_every = cfg.checkpoint_every
    tc.time_limit_s = 0.0
    tc.optim.lr *= cfg.lr_scale
    tc.optim.texture_lr *= cfg.lr_scale
    tc.optim.warmup_steps = min(tc.optim.warmup_steps, max(1, cfg.steps // 10))
    tc.loss.texture_decay_steps = 0
    tc.loss.texture = 0.0  # the texture's RGB initialisation is long done
    tc.stage2.enabled = True
    tc.stage2.start_step = 0
    tc.stage2.warmup_steps = min(cfg.warmup_steps, cfg.steps - 1)
    tc.stage2.drive_fraction = cfg.drive_fraction
    tc.stage2.tracked_fraction = min(tc.stage2.tracked_fraction, 1 - cfg.drive_fraction)
    tc.stage2.prior_fraction = min(tc.stage2.prior_fraction, 1 - cfg.drive_fraction - tc.stage2.tracked_fraction)
    return apply_overrides(tc, cfg.overrides)


def finetune_model(actor_model: str | Path, drive: Any, plate_tracking: str | Path | Any, out: str | Path, *,
                   cache: str | Path | None = None, config: FinetuneConfig | None = None,
                   expressions: list[Path] | None = None, expression_sets: list[np.ndarray] | None = None,
                   work_dir: str | Path | None = None, on_checkpoint=None) -> FinetuneResult:
    """Fine-tune a copy of ``actor_model`` on the shot's ``drive`` and write ``out``.

    plate_tracking: the tracking file the actor was trained from; cache: the actor's frame
    cache (default: ``cache/`` next to the model, where the train stage puts it);
    expressions: further tracking / drive files for the expression prior; expression_sets:
    further (N, K) expression rows in the actor's basis. ``drive=None`` runs plain stage 2
    from the model (no shot parameters: "stage 1 + N steps of stage 2" from an exported
    stage-1 model; set ``config.drive_fraction`` to 0)."""
    from engine.neural.checkpoint import Checkpoint, ModelMeta
    from engine.neural.data import FrameCache, split_holdout
    from engine.neural.stage2 import aux_source_from_tracking
    from engine.neural.train import Trainer

    cfg = config or FinetuneConfig()
    cfg.validate()
    actor_model, out = Path(actor_model), Path(out)
    if out.resolve() == actor_model.resolve():
        raise ConfigError(f"finetune output {out} is the actor's base model: the base model is never overwritten")
    base_hash = file_sha256(actor_model)
    base = Checkpoint.load(actor_model, map_location="cpu")
    if drive is None:
        if cfg.drive_fraction > 0:
            raise ConfigError("finetune without a drive needs drive_fraction 0")
        params, drive_hash, drive_fm = None, "", ""
    else:
        params, drive_hash, drive_fm = drive_params(drive)
    if drive_fm and drive_fm != base.meta.face_model_id:
        raise ConfigError(f"the drive was made for face model {drive_fm}, the actor model uses "
                          f"{base.meta.face_model_id}")
    cache_dir = Path(cache) if cache is not None else actor_model.parent / "cache"
    dataset = FrameCache.open(cache_dir)
    if base.data_fingerprint and dataset.fingerprint != base.data_fingerprint:
        raise ConfigError(f"frame cache {cache_dir} is not the one the actor model was trained on")
    tc = _finetune_config(base.train_config, cfg)
    train_idx, _ = split_holdout(len(dataset), tc.data.holdout_fraction)
    from engine.face.tracking_file import load_tracking
    tracking = plate_tracking if hasattr(plate_tracking, "fit") else load_tracking(plate_tracking)
    if tracking.face_model_id != base.meta.face_model_id:
        raise ConfigError(f"plate tracking uses face model {tracking.face_model_id}, the actor model "
                          f"{base.meta.face_model_id}")
    aux = aux_source_from_tracking(tracking, dataset, train_idx, tc, expressions=expressions or [],
                                   expression_sets=expression_sets or [], drive=[params] if params is not None else [])
    prov = {"base_model": str(actor_model), "base_model_sha256": base_hash, "base_step": int(base.step),
            "drive": (str(drive) if isinstance(drive, (str, Path)) else None if drive is None else "in-memory"),
            "drive_sha256": drive_hash,
            "drive_frames": ([int(params.frame_numbers[0]), int(params.frame_numbers[-1])]
                             if params is not None and len(params) else []),
            "config": asdict(cfg)}
    meta = ModelMeta(**{**asdict(base.meta), "provenance": {**base.meta.provenance, "finetune": prov}})
    work = Path(work_dir) if work_dir is not None else out.parent / f".{out.name}.work"
    trainer = Trainer(tc, dataset, work, meta, train_indices=train_idx, aux=aux)
    if not trainer.resume():
        # Start from (a copy of) the base weights; the base file itself is only read.
        trainer.model.load_state_dict(base.model)
    result = trainer.fit(handle_signals=False, on_checkpoint=on_checkpoint)
    if result.status not in ("completed", "time_limit"):
        raise MediaError(f"finetune stopped ({result.status}) at step {result.step}; rerun to resume")
    out.parent.mkdir(parents=True, exist_ok=True)
    trainer.export_model(out)
    shutil.rmtree(work, ignore_errors=True)
    log.info("finetuned %s on drive %s for %d steps -> %s", actor_model.name, drive_hash[:12], result.step, out)
    return FinetuneResult(model=out, steps=result.step, status=result.status, provenance=prov, last=result.last)


class FinetuneStage(Stage):
    """Per-shot offline fine-tuning (pipeline stage): actor model + drive -> shot model.

    actor_model: the actor's ``model.pt``; drive: a drive file path, or FrameParams (then
    it is not a file input of the stage and its content hash keys the output via params);
    plate_tracking: the actor's plate tracking file; out: the per-shot model file."""

    version = 1

    def __init__(self, actor_model: str | Path, drive: Any, plate_tracking: str | Path, out: str | Path, *,
                 cache: str | Path | None = None, config: FinetuneConfig | None = None,
                 expressions: list[str | Path] | None = None, name: str = "finetune") -> None:
        self.actor_model = Path(actor_model)
        self.drive = Path(drive) if isinstance(drive, (str, Path)) else drive
        self.plate_tracking = Path(plate_tracking)
        self.out = Path(out)
        self.cache = Path(cache) if cache is not None else None
        self.config = config or FinetuneConfig()
        self.config.validate()
        self.expressions = [Path(p) for p in (expressions or [])]
        self.name = name
        if self.out.resolve() == self.actor_model.resolve():
            raise ConfigError(f"finetune output {self.out} is the actor's base model")

    def inputs(self) -> dict[str, Path]:
        ins = {"actor_model": self.actor_model, "plate_tracking": self.plate_tracking}
        if isinstance(self.drive, Path):
            ins["drive"] = self.drive
        for i, p in enumerate(self.expressions):
            ins[f"expressions_{i}"] = p
        return ins

    def outputs(self) -> dict[str, Path]:
        return {"model": self.out}

    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {"config": asdict(self.config)}
        if not isinstance(self.drive, Path):
            p["drive_sha256"] = drive_params(self.drive)[1]
        return p

    def on_preempt(self) -> None:
        from engine.neural.train import checkpoint_active_trainer
        checkpoint_active_trainer()

    def run(self, ctx: StageContext) -> None:
        with ctx.progress(self.config.steps, "steps") as prog:
            state = {"step": 0}

            def on_ckpt(tr, path) -> None:
                prog.update(tr.step - state["step"])
                state["step"] = tr.step
            res = finetune_model(self.actor_model, self.drive, self.plate_tracking, self.out, cache=self.cache,
                                 config=self.config, expressions=self.expressions, on_checkpoint=on_ckpt)
        ctx.log.info("%s: %d steps, loss %s -> %s", self.name, res.steps, res.last.get("loss"), res.model)
