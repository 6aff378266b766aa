"""Stage-1 training of the actor's neural portrait model (reconstruction of the plate).

Public API:

* :class:`TrainConfig` (+ :class:`OptimConfig`, :class:`DataConfig`, and the generator's /
  losses' configs), :func:`preset_config` (``tiny``, ``draft``, ``final``) and
  :func:`make_config` (preset + dotted-key overrides, unknown keys rejected);
* :class:`Trainer`: one training run over a :class:`~engine.neural.data.FrameDataset`, with
  exact resume from :class:`~engine.neural.checkpoint.Checkpoint` files (weights, optimiser,
  AMP scaler, step, every RNG state, sampler position), periodic atomic checkpoints, and a
  checkpoint on SIGTERM or on request from a submitit ``checkpoint()`` hook;
* :class:`TrainSpec` / :func:`run_training`: the file-to-file entry point the job wrapper
  (``jobs/train_job.py``) and the pipeline call: frame cache in, checkpoint + model out.

Exactness: the batch of step ``s`` is a pure function of (seed, s) (see
:class:`~engine.neural.data.ClipSampler`), the model is initialised from the seed, and a
resume restores the optimiser and all RNG states, so on CPU "train K steps" and "train k,
kill, resume to K" end with bit-identical weights (tested). On CUDA, cuDNN and atomics make
runs reproducible only up to floating-point reordering unless ``deterministic`` is set.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import threading
import time
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from engine.errors import ConfigError, StageError
from engine.neural.checkpoint import Checkpoint, CheckpointError, ModelMeta, capture_rng, restore_rng
from engine.neural.data import ClipSampler, FrameBatch, FrameDataset, Prefetcher, split_holdout
from engine.neural.generator import GeneratorConfig, PortraitGenerator
from engine.neural.losses import LossConfig, Losses
from engine.neural.stage2 import Stage2, Stage2Config

__all__ = ["OptimConfig", "DataConfig", "TrainConfig", "PRESETS", "preset_config", "make_config",
           "apply_overrides", "config_keys", "Trainer", "TrainResult", "TrainSpec", "run_training",
           "checkpoint_active_trainer", "resolve_device"]

log = logging.getLogger("engine.neural.train")

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"
LOG_NAME = "train_log.jsonl"


@dataclass
class OptimConfig:
    """Adam (Kingma & Ba 2015) with linear warm-up then cosine decay to ``min_lr_ratio * lr``.
    The neural texture gets its own (higher) rate: each texel sees gradients only from the
    few pixels that sample it, so it learns slowly at the network's rate."""

    lr: float = 5e-4
    texture_lr: float = 5e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0


@dataclass
class DataConfig:
    """clips_per_batch clips of clip_len consecutive frames per step (clip_len >= 2 enables the
    velocity loss); prefetch: batches decoded ahead in a thread (0: inline);
    holdout_fraction: the plate's last frames kept out of training for evaluation."""

    clips_per_batch: int = 4
    clip_len: int = 2
    prefetch: int = 2
    holdout_fraction: float = 0.1


@dataclass
class TrainConfig:
    """One training run. device: "auto" | "cpu" | "cuda[:n]". amp: mixed precision on CUDA
    (amp_dtype "bf16" or "fp16" with loss scaling); ignored on CPU. channels_last: NHWC convs
    on CUDA. threads: torch CPU threads (0: leave as is). time_limit_s: stop (and checkpoint)
    after this long (0: none). deterministic: cuDNN deterministic algorithms on CUDA."""

    preset: str = "draft"
    steps: int = 3000
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    amp_dtype: str = "bf16"
    channels_last: bool = True
    threads: int = 0
    checkpoint_every: int = 250
    log_every: int = 25
    time_limit_s: float = 0.0
    deterministic: bool = False
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # Stage 2 (engine.neural.stage2): off by default, and then nothing of it runs.
    stage2: Stage2Config = field(default_factory=Stage2Config)

    def validate(self) -> None:
        self.generator.validate()
        self.stage2.validate()
        if self.stage2.enabled and self.stage2.start_step >= self.steps > 0:
            raise ConfigError(f"stage2.start_step {self.stage2.start_step} >= steps {self.steps}: "
                              "stage 2 would never run")
        if self.steps < 0 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ConfigError("steps must be >= 0, checkpoint_every and log_every >= 1")
        if self.amp_dtype not in ("bf16", "fp16"):
            raise ConfigError(f"amp_dtype must be 'bf16' or 'fp16', got {self.amp_dtype!r}")
        if self.loss.perceptual_stride < 1:
            raise ConfigError("loss.perceptual_stride must be >= 1")
        if self.loss.perceptual_mode not in ("lpips", "vgg"):
            raise ConfigError(f"loss.perceptual_mode must be 'lpips' or 'vgg', got {self.loss.perceptual_mode!r}")
        if not 1 <= self.loss.perceptual_layers <= 5:
            raise ConfigError("loss.perceptual_layers must be 1..5")
        if self.optim.lr <= 0 or self.optim.texture_lr <= 0:
            raise ConfigError("learning rates must be positive")
        if self.data.clip_len < 1 or self.data.clips_per_batch < 1:
            raise ConfigError("data.clip_len and data.clips_per_batch must be >= 1")
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:n]', got {self.device!r}")


# ------------------------------------------------------------------------------- presets
def _tiny() -> TrainConfig:
    # For tests: a few seconds on one CPU core.
    return TrainConfig(
        preset="tiny", steps=20, checkpoint_every=10, log_every=5,
        generator=GeneratorConfig(image_size=32, texture_channels=4, texture_size=32, texture_levels=2,
                                  mouth_texture_channels=3, mouth_texture_size=16, pe_surface_freqs=3,
                                  pe_pixel_freqs=2, pe_mouth_freqs=3, mlp_channels=16, mlp_layers=1,
                                  unet_base=8, unet_depth=2, unet_max_channels=16),
        loss=LossConfig(perceptual=0.0, perceptual_layers=2, perceptual_size=32),
        optim=OptimConfig(lr=2e-3, texture_lr=1e-2, warmup_steps=2),
        data=DataConfig(clips_per_batch=2, clip_len=2, prefetch=0))


def _draft() -> TrainConfig:
    # CPU look-dev in minutes: 128 px (raise generator.image_size to 256 for a sharper draft at
    # ~4x the cost), small U-Net, perceptual loss on the first 3 VGG blocks at 64 px on one
    # frame per clip -- at 128 px on every frame it would cost ~4x the generator itself.
    return TrainConfig(
        preset="draft", steps=2000, checkpoint_every=200, log_every=25, amp=False,
        generator=GeneratorConfig(image_size=128, texture_channels=8, texture_size=256, texture_levels=3,
                                  mouth_texture_channels=4, mouth_texture_size=64, pe_surface_freqs=5,
                                  pe_pixel_freqs=3, pe_mouth_freqs=6, mlp_channels=32, mlp_layers=2,
                                  unet_base=16, unet_depth=4, unet_max_channels=128),
        loss=LossConfig(perceptual=0.05, perceptual_layers=3, perceptual_size=64, perceptual_stride=2,
                        texture_decay_steps=1000),
        # lr 2e-3 collapsed (sigmoid outputs saturated, L1 0.012 -> 0.31 at step ~900 on the
        # EDTalk plate, bench/neural_draft.py), so the rates are halved.
        optim=OptimConfig(lr=1e-3, texture_lr=5e-3, warmup_steps=50),
        data=DataConfig(clips_per_batch=2, clip_len=2, prefetch=0))


def _final() -> TrainConfig:
    # GPU delivery: 512 px, 1k neural texture, full ST-LPIPS loss, bf16 autocast.
    return TrainConfig(
        preset="final", steps=40000, checkpoint_every=1000, log_every=100, amp=True, amp_dtype="bf16",
        generator=GeneratorConfig(image_size=512, texture_channels=16, texture_size=1024, texture_levels=4,
                                  mouth_texture_channels=8, mouth_texture_size=256, pe_surface_freqs=8,
                                  pe_pixel_freqs=5, pe_mouth_freqs=10, mlp_channels=64, mlp_layers=2,
                                  unet_base=32, unet_depth=5, unet_max_channels=256),
        loss=LossConfig(perceptual=0.2, perceptual_layers=5, perceptual_size=512, texture_decay_steps=10000),
        optim=OptimConfig(lr=5e-4, texture_lr=5e-3, warmup_steps=500),
        data=DataConfig(clips_per_batch=4, clip_len=2, prefetch=3))


def _draft_s2() -> TrainConfig:
    # ``draft`` stage 1, then 600 steps of stage 2 (auxiliary expressions / poses with the
    # landmark, adversarial, identity and mouth losses), reconstruction continuing throughout.
    cfg = _draft()
    cfg.preset = "draft_s2"
    cfg.steps = 2600
    cfg.stage2 = Stage2Config(enabled=True, start_step=2000, warmup_steps=100, aux_per_step=2, pool_size=64,
                              pool_refresh=200, identity_size=64)
    return cfg


PRESETS: dict[str, Callable[[], TrainConfig]] = {"tiny": _tiny, "draft": _draft, "final": _final,
                                                 "draft_s2": _draft_s2}


def preset_config(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown training preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]()


# ----------------------------------------------------------------------------- overrides
def config_keys(obj: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a (nested) config dataclass."""
    keys = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            keys += config_keys(v, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _coerce(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"override {key}: bad value {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.strip("()[] ").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"override {key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(key, v, args[0]) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"override {key}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(key, v, a) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"override {key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"override {key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                pass
            else:
                if f.is_integer():
                    return int(f)
        raise ConfigError(f"override {key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"override {key}: expected a number, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"override {key}: expected a number, got {value!r}") from None
        if not math.isfinite(f):
            raise ConfigError(f"override {key}: expected a finite number, got {value!r}")
        return f
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"override {key}: expected a string, got {value!r}")
        return value
    return value


def apply_overrides(cfg: TrainConfig, overrides: Mapping[str, Any]) -> TrainConfig:
    """A copy of ``cfg`` with dotted-key overrides (``{"optim.lr": 1e-3, "steps": 200}``;
    nested mappings are flattened). Unknown keys raise ConfigError listing the valid ones."""
    cfg = _deepcopy_config(cfg)
    flat = _flatten(overrides)
    valid = config_keys(cfg)
    unknown = sorted(k for k in flat if k not in valid)
    if unknown:
        raise ConfigError(f"unknown training override(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}")
    if "preset" in flat:
        raise ConfigError("override 'preset' is not allowed: choose the preset itself")
    for key, value in flat.items():
        *path, name = key.split(".")
        obj = cfg
        for p in path:
            obj = getattr(obj, p)
        hints = typing.get_type_hints(type(obj))
        setattr(obj, name, _coerce(key, value, hints[name]))
    cfg.validate()
    return cfg


def _deepcopy_config(cfg: TrainConfig) -> TrainConfig:
    return config_from_dict(asdict(cfg))


def config_from_dict(d: Mapping[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig from ``asdict`` output (as stored in a checkpoint)."""
    def build(cls, data):
        hints = typing.get_type_hints(cls)
        kw = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            tp = hints[f.name]
            v = data[f.name]
            if dataclasses.is_dataclass(tp):
                kw[f.name] = build(tp, v)
            else:
                kw[f.name] = _coerce(f.name, v, tp)
        return cls(**kw)
    return build(TrainConfig, d)


def make_config(preset: str = "draft", overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """The preset's config with ``overrides`` applied and validated."""
    cfg = preset_config(preset)
    cfg = apply_overrides(cfg, overrides or {})
    return cfg


# Keys that may differ between a checkpoint and the config resuming it. All but ``steps``
# leave what each step computes unchanged; raising ``steps`` extends a finished run, which
# also stretches the cosine learning-rate schedule (so it is not the run a larger ``steps``
# would have been from the start -- exact-resume guarantees hold for an unchanged config).
_RESUMABLE_KEYS = {"steps", "checkpoint_every", "log_every", "device", "threads", "time_limit_s",
                   "data.prefetch", "data.holdout_fraction"}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return dev


# ------------------------------------------------------------------------------- trainer
@dataclass
class TrainResult:
    status: str                    # "completed" | "interrupted" | "time_limit"
    step: int
    steps_run: int
    wall_s: float
    steps_per_s: float
    checkpoint: Path | None
    model: Path | None = None
    last: dict[str, float] = field(default_factory=dict)


_ACTIVE: list["Trainer"] = []


def checkpoint_active_trainer() -> Path | None:
    """Save the running trainer's state now (for submitit's ``checkpoint()`` hook, which runs
    inside a signal handler). Returns the checkpoint path, or None if nothing was saved."""
    if not _ACTIVE:
        return None
    return _ACTIVE[-1].emergency_checkpoint()


class Trainer:
    """Trains a :class:`PortraitGenerator` on ``dataset`` frames ``train_indices``.

    ``out_dir`` receives ``checkpoint.pt`` (latest resumable state), ``train_log.jsonl`` and,
    via :meth:`export_model`, ``model.pt`` (weights + configs + provenance for rendering).
    """

    def __init__(self, config: TrainConfig, dataset: FrameDataset, out_dir: str | os.PathLike, meta: ModelMeta,
                 *, train_indices: Sequence[int] | None = None, perceptual: torch.nn.Module | None = None,
                 aux: Any = None) -> None:
        """``aux``: the stage-2 auxiliary parameter source (:class:`engine.neural.stage2.AuxSource`,
        e.g. :class:`~engine.neural.stage2.ParamAuxSource`); required when ``stage2.enabled``."""
        config.validate()
        meta.validate()
        self.cfg = config
        self.dataset = dataset
        self.out_dir = Path(out_dir)
        self.meta = meta
        self.device = resolve_device(config.device)
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not config.deterministic
            torch.backends.cudnn.deterministic = config.deterministic
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if train_indices is None:
            train_indices, _ = split_holdout(len(dataset), config.data.holdout_fraction)
        self.train_indices = list(train_indices)
        self.sampler = ClipSampler(dataset.frame_numbers, self.train_indices, config.data.clip_len,
                                   config.data.clips_per_batch, config.seed)
        self._check_sizes()

        # Everything random about the initial state derives from the seed.
        torch.manual_seed(config.seed)
        np.random.seed(config.seed % (2 ** 32))
        import random
        random.seed(config.seed)
        self.model = PortraitGenerator(config.generator).to(self.device)
        self.use_cuda = self.device.type == "cuda"
        if self.use_cuda and config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.amp_dtype = torch.bfloat16 if config.amp_dtype == "bf16" else torch.float16
        self.use_amp = bool(config.amp and self.use_cuda)
        if self.use_amp and self.amp_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            self.amp_dtype = torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        tex = [p for n, p in self.model.named_parameters() if "texture" in n]
        rest = [p for n, p in self.model.named_parameters() if "texture" not in n]
        o = config.optim
        self.optimizer = torch.optim.Adam(
            [{"params": rest, "lr": o.lr, "base_lr": o.lr},
             {"params": tex, "lr": o.texture_lr, "base_lr": o.texture_lr}],
            betas=o.betas, weight_decay=o.weight_decay, **({"fused": True} if self.use_cuda else {}))
        self.losses = Losses(config.loss, perceptual).to(self.device)
        self.stage2: Stage2 | None = None
        if config.stage2.enabled:
            if aux is None:
                raise ConfigError("stage 2 is enabled but no auxiliary parameter source was given "
                                  "(it needs the plate's tracking)")
            vgg = getattr(self.losses.perceptual, "metric", None)
            self.stage2 = Stage2(config.stage2, config.generator, aux, self.device, config.seed, vgg=vgg)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._stop_requested = False
        self._mutating = False
        self._snap_rng: dict[str, Any] | None = None
        self._snap_step: int | None = None

    # -- helpers
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    def _check_sizes(self) -> None:
        b = self.dataset.get([self.train_indices[0]])
        S = self.cfg.generator.image_size
        shape = tuple(b.target.shape[-2:]) if b.target is not None else None
        if shape != (S, S):
            raise ConfigError(f"training frames are {shape}, the generator config wants {S}x{S} "
                              f"(set generator.image_size or rebuild the frame cache)")
        missing = [k for k in self.cfg.generator.required_maps() if k not in b.cond]
        if missing:
            raise ConfigError(f"training frames lack conditioning map(s) {missing} the generator needs")
        if self.cfg.generator.expr_dim and (b.expr is None or b.expr.shape[-1] != self.cfg.generator.expr_dim):
            raise ConfigError(f"generator expr_dim={self.cfg.generator.expr_dim} but the frames carry "
                              f"{None if b.expr is None else b.expr.shape[-1]} expression coefficients")

    def lr_factor(self, step: int) -> float:
        o = self.cfg.optim
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        span = max(1, self.cfg.steps - o.warmup_steps)
        t = min(1.0, (step - o.warmup_steps) / span)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    # -- checkpoints
    def _optimizer_state(self) -> dict[str, Any]:
        opt = _to_cpu(self.optimizer.state_dict())
        if self.stage2 is not None:
            # Stage-2 state rides in the optimiser entry (landmark head, discriminator and
            # their optimisers): the checkpoint schema stays the same, inference exports drop it.
            opt["stage2"] = _to_cpu(self.stage2.state_dict())
        return opt

    def _make_checkpoint(self, step: int, rng: dict[str, Any]) -> Checkpoint:
        return Checkpoint(step=step, model={k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                          generator_config=asdict(self.cfg.generator), train_config=asdict(self.cfg), meta=self.meta,
                          data_fingerprint=self.dataset.fingerprint, kind="training",
                          optimizer=self._optimizer_state(),
                          scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
                          rng=rng, sampler=self.sampler.state(step), history=self.history[-500:])

    def save_checkpoint(self) -> Path:
        """Checkpoint the current (step-boundary) state atomically."""
        path = self._make_checkpoint(self.step, capture_rng()).save(self.checkpoint_path)
        log.info("checkpoint step %d -> %s", self.step, path)
        return path

    def emergency_checkpoint(self) -> Path | None:
        """Checkpoint from a signal handler, which may interrupt a step anywhere.

        Until the optimiser starts mutating weights, the weights and optimiser state are still
        those of the step's start, so pairing them with the RNG snapshot and step number taken
        at the step's start gives the exact state a clean boundary save would have. Only
        during the (short) optimiser update is this impossible; then the last periodic
        checkpoint stands.
        """
        if self._mutating:
            log.warning("checkpoint request during an optimiser update: keeping the last periodic checkpoint")
            return None
        step, rng = (self._snap_step, self._snap_rng) if self._snap_step is not None else (self.step, None)
        if step is None:
            return None
        ckpt = self._make_checkpoint(step, rng if rng is not None else capture_rng())
        path = ckpt.save(self.checkpoint_path)
        log.info("checkpoint (on request) step %d -> %s", step, path)
        return path

    def resume(self, path: str | os.PathLike | None = None) -> bool:
        """Restore state from ``path`` (default: ``out_dir/checkpoint.pt`` if it exists)."""
        p = Path(path) if path is not None else self.checkpoint_path
        if path is None and not p.exists():
            return False
        ckpt = Checkpoint.load(p, map_location="cpu", expected_face_model_id=self.meta.face_model_id)
        if ckpt.kind != "training":
            raise CheckpointError(f"{p} is an inference-only model, it cannot resume training")
        self._check_compatible(ckpt, p)
        self.model.load_state_dict(ckpt.model)
        opt = dict(ckpt.optimizer)
        s2 = opt.pop("stage2", None)
        self.optimizer.load_state_dict(opt)
        if self.stage2 is not None and s2 is not None:
            self.stage2.load_state_dict(s2)
        if ckpt.scaler and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt.scaler)
        if ckpt.rng is not None:
            restore_rng(ckpt.rng)
        self.step = ckpt.step
        self.history = list(ckpt.history)
        log.info("resumed from %s at step %d", p, self.step)
        return True

    def _check_compatible(self, ckpt: Checkpoint, p: Path) -> None:
        if ckpt.data_fingerprint != self.dataset.fingerprint:
            raise ConfigError(f"checkpoint {p} was trained on different frames (cache fingerprint "
                              f"{ckpt.data_fingerprint[:12]} != {self.dataset.fingerprint[:12]}); start a new run")
        if ckpt.meta.media_hashes != self.meta.media_hashes:
            raise ConfigError(f"checkpoint {p} was trained on different training media; start a new run")
        if ckpt.meta.actor_id != self.meta.actor_id:
            raise ConfigError(f"checkpoint {p} belongs to actor '{ckpt.meta.actor_id}', not '{self.meta.actor_id}'")
        old = _flatten(ckpt.train_config)
        new = _flatten(asdict(self.cfg))
        s2_defaults = _flatten({"stage2": asdict(Stage2Config())})
        s2_fresh = ("stage2" not in (ckpt.optimizer or {})) and ckpt.step <= self.cfg.stage2.start_step
        diff = sorted(k for k in set(old) | set(new)
                      if k not in _RESUMABLE_KEYS
                      # A checkpoint from before stage 2 existed (no stage2.* keys) means "off".
                      and _norm(old.get(k, s2_defaults.get(k))) != _norm(new.get(k))
                      # Stage 2 may be switched on / tuned for a run that has not reached it yet
                      # (stage 1 + N steps of stage 2, continuing a stage-1 checkpoint).
                      and not (s2_fresh and k.startswith("stage2.")))
        if diff:
            raise ConfigError(f"cannot resume {p}: config differs in {', '.join(diff)} "
                              f"(only {', '.join(sorted(_RESUMABLE_KEYS))} may change)")
        s = ckpt.sampler or {}
        if s.get("num_starts") not in (None, len(self.sampler.starts)):
            raise ConfigError(f"cannot resume {p}: the training frames changed "
                              f"({s.get('num_starts')} clips then, {len(self.sampler.starts)} now)")

    def export_model(self, path: str | os.PathLike | None = None) -> Path:
        """Write the inference model (weights, configs, provenance; no optimiser) atomically."""
        path = Path(path) if path is not None else self.out_dir / MODEL_NAME
        self._make_checkpoint(self.step, {}).inference_only().save(path)
        return path

    # -- signals
    def request_stop(self) -> None:
        """Ask the loop to checkpoint and return at the next step boundary (signal-safe)."""
        self._stop_requested = True

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        old = {}
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            old[sig] = signal.signal(sig, lambda signum, frame: self.request_stop())
        return old

    # -- the loop
    def _batch(self, step: int, pre: Prefetcher | None) -> FrameBatch:
        if pre is not None:
            b = pre.next(step)
        else:
            b = self.dataset.get(self.sampler.batch(step))
            b.clip_len = self.sampler.clip_len
        return b.to(self.device, non_blocking=self.use_cuda)

    def train_step(self, batch: FrameBatch) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        s = self.step
        factor = self.lr_factor(s)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        if self.stage2 is not None and self.stage2.active(s) and not self.stage2.head_ready:
            # Stage 2's first step: pre-train the landmark head (mutates it: no emergency
            # checkpoint in between; one taken later in this step holds the pre-trained head).
            self._mutating = True
            try:
                loss = self.stage2.pretrain_head(self.dataset, self.train_indices)
            finally:
                self._mutating = False
            log.info("stage 2: landmark head pre-trained (%d steps, loss %s)",
                     cfg.stage2.head_pretrain_steps, None if loss is None else round(loss, 5))
        self.optimizer.zero_grad(set_to_none=True)
        cond = batch.cond
        plate = batch.plate
        if self.use_cuda and cfg.channels_last:
            cond = {k: v.contiguous(memory_format=torch.channels_last) for k, v in cond.items()}
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            out = self.model(cond, plate if cfg.generator.context else None, batch.expr, batch.hole)
            mouth = cond.get(cfg.generator.mouth_key) if cfg.generator.mouth_key else None
            total, terms = self.losses(out, batch.target, face=cond[cfg.generator.face_key], mouth=mouth,
                                       clip_len=batch.clip_len, step=s, valid=batch.valid)
            s2 = None
            if self.stage2 is not None and self.stage2.active(s):
                prep = ((lambda c: {k: v.contiguous(memory_format=torch.channels_last) for k, v in c.items()})
                        if self.use_cuda and cfg.channels_last else (lambda c: c))
                s2 = self.stage2.generator_pass(self.model, batch, out, s, prep)
                total = total + s2.total
                terms.update(s2.terms)
        if not torch.isfinite(total):
            # fp16 overflow is handled by the scaler; anything else is a real divergence.
            if not self.scaler.is_enabled():
                raise StageError(f"training diverged at step {s}: loss is {float(total)} "
                                 f"(lower optim.lr or check the frames)")
        self.scaler.scale(total).backward()
        if cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        self._mutating = True
        try:
            if s2 is not None:
                # Inside the mutating window: the discriminator's spectral-norm power iteration
                # updates its buffers on this forward (an emergency checkpoint must not see that).
                terms.update(self.stage2.aux_nets_backward(batch, out, s2, s))
                self.stage2.optimizer_step()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.step = s + 1
            self._snap_step = None
        finally:
            self._mutating = False
        terms["loss"] = total.detach()
        return terms

    def fit(self, *, handle_signals: bool = True,
            on_checkpoint: Callable[["Trainer", Path], None] | None = None) -> TrainResult:
        """Train from the current step to ``cfg.steps``; checkpoint every ``checkpoint_every``
        steps, at the end, and when asked to stop (SIGTERM/SIGUSR1 or :meth:`request_stop`)."""
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        old_handlers = self._install_signals() if handle_signals else {}
        _ACTIVE.append(self)
        self.model.train()
        t0 = time.perf_counter()
        start = self.step
        pre = None
        if cfg.data.prefetch > 0 and self.step < cfg.steps:
            pre = Prefetcher(self.dataset, self.sampler, self.step, cfg.steps, cfg.data.prefetch, pin=self.use_cuda)
        status = "completed"
        last: dict[str, float] = {}
        ckpt_path: Path | None = self.checkpoint_path if self.checkpoint_path.exists() else None
        t_log = time.perf_counter()
        step_log = self.step
        try:
            while self.step < cfg.steps:
                # Snapshot for emergency_checkpoint(): RNG first, then the step that marks it valid.
                # (~0.1 ms; it is what lets a submitit checkpoint() mid-step be exact).
                self._snap_rng = capture_rng()
                self._snap_step = self.step
                batch = self._batch(self.step, pre)
                terms = self.train_step(batch)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    now = time.perf_counter()
                    last = {k: round(float(v), 6) for k, v in terms.items()}
                    entry = {"step": self.step, **last, "lr": self.optimizer.param_groups[0]["lr"],
                             "steps_per_s": round((self.step - step_log) / max(now - t_log, 1e-9), 4),
                             "wall_s": round(now - t0, 2)}
                    t_log, step_log = now, self.step
                    self.history.append(entry)
                    self._append_log(entry)
                    log.info("step %d loss %.4f %s", self.step, last["loss"],
                             " ".join(f"{k}={v:.4f}" for k, v in last.items() if k != "loss"))
                done = self.step >= cfg.steps
                timed_out = cfg.time_limit_s > 0 and time.perf_counter() - t0 >= cfg.time_limit_s
                if self.step % cfg.checkpoint_every == 0 or done or self._stop_requested or timed_out:
                    ckpt_path = self.save_checkpoint()
                    if on_checkpoint is not None:
                        on_checkpoint(self, ckpt_path)
                if self._stop_requested and not done:
                    status = "interrupted"
                    break
                if timed_out and not done:
                    status = "time_limit"
                    break
            if self.step >= cfg.steps and (ckpt_path is None or not self.checkpoint_path.exists()):
                ckpt_path = self.save_checkpoint()
        finally:
            self._snap_step = None
            if pre is not None:
                pre.close()
            _ACTIVE.remove(self)
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
        wall = time.perf_counter() - t0
        ran = self.step - start
        return TrainResult(status=status, step=self.step, steps_run=ran, wall_s=round(wall, 3),
                           steps_per_s=round(ran / wall, 4) if wall > 0 else 0.0, checkpoint=ckpt_path, last=last)

    def _append_log(self, entry: dict[str, Any]) -> None:
        with open(self.out_dir / LOG_NAME, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")


def _norm(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    return v


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


# ------------------------------------------------------------------------ file-to-file run
@dataclass
class TrainSpec:
    """What one training job needs, all picklable (it travels to a SLURM node).

    cache: a frame-cache folder (:class:`~engine.neural.data.FrameCacheWriter`); out_dir:
    where checkpoint.pt / model.pt / train_log.jsonl go; preset + overrides: the config;
    meta: the actor's provenance; train_indices: explicit training frames (default: all but
    the last ``data.holdout_fraction``). Stage 2 (``stage2.enabled``): stage2_tracking, the
    plate's tracking file (parameters of the cached frames, the face model);
    stage2_expressions: tracking files (same face model) or drive files whose expressions
    join the prior; stage2_drive: FrameParams of a shot's drive (offline fine-tuning).
    """

    cache: Path
    out_dir: Path
    meta: ModelMeta
    preset: str = "draft"
    overrides: dict[str, Any] = field(default_factory=dict)
    train_indices: list[int] | None = None
    stage2_tracking: Path | None = None
    stage2_expressions: list[Path] = field(default_factory=list)
    stage2_drive: list[Any] = field(default_factory=list)


def run_training(spec: TrainSpec, *, handle_signals: bool = True, resume: bool = True,
                 on_checkpoint: Callable[[Trainer, Path], None] | None = None) -> TrainResult:
    """Train (resuming from ``out_dir/checkpoint.pt`` when present); on completion or time
    limit also export ``out_dir/model.pt``."""
    from engine.neural.data import FrameCache
    cfg = make_config(spec.preset, spec.overrides)
    dataset = FrameCache.open(spec.cache)
    aux = None
    if cfg.stage2.enabled:
        from engine.neural.stage2 import aux_source_from_tracking
        if spec.stage2_tracking is None:
            raise ConfigError("stage 2 needs the plate's tracking file (TrainSpec.stage2_tracking)")
        train_idx = spec.train_indices
        if train_idx is None:
            train_idx, _ = split_holdout(len(dataset), cfg.data.holdout_fraction)
        aux = aux_source_from_tracking(spec.stage2_tracking, dataset, train_idx, cfg,
                                       expressions=spec.stage2_expressions, drive=spec.stage2_drive)
    trainer = Trainer(cfg, dataset, spec.out_dir, spec.meta, train_indices=spec.train_indices, aux=aux)
    if resume:
        trainer.resume()
    result = trainer.fit(handle_signals=handle_signals, on_checkpoint=on_checkpoint)
    if result.status in ("completed", "time_limit"):
        result.model = trainer.export_model()
    return result
