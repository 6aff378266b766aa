"""Train stage: an actor's training media + its tracking file -> the actor model (stage 1).

The model belongs to the actor, not to a shot version: it lives under the output root,
keyed by what it is a function of (the tracking file's content, the preset and overrides,
the actor's consent record), so every shot of the actor reuses it::

    {output.root}/actors/<actor id>/<preset>-<settings hash 12>/
        cache/              frame cache (display-referred crops + conditioning maps)
        checkpoint.pt       resumable training state (atomic; rewritten periodically)
        model.pt            the exported model the render stage loads
        train_log.jsonl     loss curve

``run`` builds the frame cache (skipped when an intact cache from the same tracking file
exists), then trains, resuming from ``checkpoint.pt`` when a previous job was killed or
preempted: on SLURM the stage runs inside :class:`engine.pipeline.runner.StageJob`, whose
requeue calls :meth:`TrainStage.on_preempt` to save the trainer's exact state first.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from engine.errors import ConfigError, MediaError
from engine.face.tracking_file import load_tracking
from engine.pipeline import Stage, StageContext
from engine.util.hashing import config_sha256, file_sha256

log = logging.getLogger("portrait.stages.train")

ACTORS_DIR = "actors"


class TrainStage(Stage):
    """Stage-1 reconstruction training of an actor model (:mod:`engine.neural.train`).

    media: the training media (its tracking file must come from the same media);
    tracking: that tracking file (output of the media's :class:`~engine.stages.track.TrackStage`);
    root: output root; actor_id / consent / provenance: the shot's actor section;
    preset / overrides: the training config (:func:`engine.neural.train.make_config` keys).
    """

    version = 1

    def __init__(self, media: str | Path, tracking: str | Path, root: str | Path, *, actor_id: str,
                 consent: str, preset: str = "draft", overrides: Mapping[str, Any] | None = None,
                 colourspace: str = "auto", provenance: Mapping[str, Any] | None = None,
                 name: str = "train") -> None:
        from engine.neural.train import make_config

        self.media = Path(media)
        self.tracking = Path(tracking)
        self.root = Path(root)
        self.actor_id = actor_id
        self.consent = consent
        self.preset = preset
        self.overrides = dict(overrides or {})
        self.colourspace = colourspace
        self.provenance = dict(provenance or {})
        self.name = name
        make_config(preset, self.overrides)  # unknown keys / bad values fail here, at planning time
        if not str(consent).strip():
            raise ConfigError(f"actor '{actor_id}': a consent/provenance note is required to train a model")

    # -- layout ---------------------------------------------------------------------------
    def settings_hash(self) -> str:
        return config_sha256({"preset": self.preset, "overrides": self.overrides, "version": self.version,
                              "colourspace": self.colourspace})[:12]

    def folder(self) -> Path:
        return self.root / ACTORS_DIR / self.actor_id / f"{self.preset}-{self.settings_hash()}"

    def state_dir(self) -> Path:
        return self.folder() / ".portrait"

    def model_path(self) -> Path:
        return self.folder() / "model.pt"

    def checkpoint_path(self) -> Path:
        return self.folder() / "checkpoint.pt"

    # -- Stage ----------------------------------------------------------------------------
    def inputs(self) -> dict[str, Path]:
        return {"media": self.media, "tracking": self.tracking}

    def params(self) -> dict[str, Any]:
        return {"preset": self.preset, "overrides": self.overrides, "actor": self.actor_id,
                "consent": self.consent, "colourspace": self.colourspace}

    def outputs(self) -> dict[str, Path]:
        return {"model": self.model_path()}

    def on_preempt(self) -> None:
        """Called by the job's requeue handler: save the running trainer's exact state."""
        from engine.neural.train import checkpoint_active_trainer

        saved = checkpoint_active_trainer()
        log.info("%s: %s", self.name, f"saved {saved}" if saved else "resuming from the last checkpoint")

    def _config(self, cache):
        from engine.neural.train import make_config

        ov = dict(self.overrides)
        # The network's input sizes follow the cache unless the user pinned them.
        ov.setdefault("generator.image_size", cache.size)
        ov.setdefault("generator.expr_dim", cache.expr_dim)
        return make_config(self.preset, ov)

    def cache_size(self) -> int:
        from engine.neural.train import make_config

        return int(self.overrides.get("generator.image_size", make_config(self.preset).generator.image_size))

    def run(self, ctx: StageContext) -> None:
        from engine.neural.checkpoint import ModelMeta
        from engine.neural.data import FrameCache, split_holdout
        from engine.neural.dataset_build import CacheBuildConfig, build_frame_cache
        from engine.neural.train import Trainer

        tracking = load_tracking(self.tracking)
        tracking_hash = file_sha256(self.tracking)
        folder = self.folder()
        folder.mkdir(parents=True, exist_ok=True)
        cache_dir = folder / "cache"
        size = self.cache_size()
        cache = None
        if cache_dir.exists():
            try:
                cache = FrameCache.open(cache_dir)
            except MediaError as exc:
                ctx.log.info("%s: rebuilding the frame cache (%s)", self.name, exc)
            if cache is not None and (cache.source.get("tracking_sha256") != tracking_hash or cache.size != size):
                cache = None
        if cache is None:
            usable = int(tracking.usable.sum())
            with ctx.progress(usable, "frames") as prog:
                state = {"done": 0}

                def progress(done: int, total: int) -> None:
                    prog.update(done - state["done"])
                    state["done"] = done
                ctx.log.info("%s: caching %d frames of %s at %d px", self.name, usable, self.media.name, size)
                cache = build_frame_cache(tracking, self.media, cache_dir, CacheBuildConfig(size=size),
                                          colourspace=self.colourspace, progress=progress)
        cfg = self._config(cache)
        train_idx, _ = split_holdout(len(cache), cfg.data.holdout_fraction)
        meta = ModelMeta(actor_id=self.actor_id, face_model_id=tracking.face_model_id, consent=self.consent,
                         media_hashes={str(self.media): tracking.media_sha256},
                         tracking_hashes={str(self.tracking): tracking_hash},
                         provenance={**self.provenance, "face_model_hash": tracking.face_model_hash,
                                     "preset": self.preset, "overrides": self.overrides,
                                     "exp_names": list(tracking.exp_names)})
        meta.validate()
        aux = None
        if cfg.stage2.enabled:
            # Stage 2 (morphable prior): auxiliary expressions/poses sampled around the
            # plate's tracked parameters (engine.neural.stage2).
            from engine.neural.stage2 import aux_source_from_tracking
            aux = aux_source_from_tracking(tracking, cache, train_idx, cfg)
        trainer = Trainer(cfg, cache, folder, meta, train_indices=train_idx, aux=aux)
        resumed = trainer.resume()
        ctx.log.info("%s: %s at step %d of %d (%s preset, %d px, %d training frames)", self.name,
                     "resuming" if resumed else "training", trainer.step, cfg.steps, self.preset,
                     cfg.generator.image_size, len(train_idx))
        with ctx.progress(cfg.steps, "steps", initial=trainer.step) as prog:
            state = {"step": trainer.step}

            def on_ckpt(tr, path) -> None:
                prog.update(tr.step - state["step"])
                state["step"] = tr.step
            result = trainer.fit(handle_signals=False, on_checkpoint=on_ckpt)
        if result.status not in ("completed", "time_limit"):
            raise MediaError(f"{self.name}: training stopped ({result.status}) at step {result.step}; "
                             "rerun to resume from the checkpoint")
        trainer.export_model(self.model_path())
        ctx.log.info("%s: %s after %d steps, loss %s -> %s", self.name, result.status, result.step,
                     result.last.get("loss"), self.model_path())


def shot_train_stage(shot, plate_tracking: Path, *, root: Path | None = None, preset: str | None = None,
                     overrides: Mapping[str, Any] | None = None) -> TrainStage | None:
    """The shot's train stage (None when the shot names an existing ``actor.model``).
    ``preset`` replaces the shot's ``train.preset``; ``overrides`` are applied over its
    ``train.overrides``.

    Trains on the first training medium (``actor.media``, default the plate); several media
    per actor are not merged yet (a ConfigError says so rather than silently using one)."""
    if shot.actor.model is not None:
        return None
    media = list(shot.actor.media) or [shot.plate.path]
    if len(media) > 1:
        raise ConfigError(f"actor '{shot.actor.id}': training on several media ({len(media)}) is not "
                          "supported yet; list one clip in actor.media")
    if Path(media[0]) != Path(shot.plate.path):
        raise ConfigError(f"actor '{shot.actor.id}': training media other than the plate need their own "
                          "tracking stage; not supported yet")
    return TrainStage(media[0], plate_tracking, root if root is not None else shot.output.root,
                      actor_id=shot.actor.id, consent=shot.actor.consent, preset=preset or shot.train.preset,
                      overrides={**shot.train.overrides, **(overrides or {})}, colourspace=shot.plate.colourspace,
                      provenance={"shot": str(shot.source), "shot_config_hash": shot.config_hash()[:16]})


__all__ = ["TrainStage", "shot_train_stage", "ACTORS_DIR"]
