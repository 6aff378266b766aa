"""Actor-model checkpoints: everything needed to resume training exactly, or to render.

A checkpoint is one ``torch.save`` file, written atomically (temp file + fsync + rename,
:func:`engine.util.atomic.atomic_path`), so a job killed while saving leaves the previous
checkpoint intact. It carries:

* ``schema`` / ``schema_version`` / ``engine_version`` (file-format and code provenance);
* ``kind``: ``"training"`` (resumable: optimiser, AMP scaler, RNG states, sampler position)
  or ``"model"`` (inference export: weights only);
* ``step``, the full train config and the generator config (to rebuild the network);
* :class:`ModelMeta`: actor id, face-model id, the actor's consent/provenance record from
  the shot YAML, hashes of the training media and tracking, the frame-cache fingerprint.

Loading uses ``torch.load(weights_only=True)`` -- plain tensors and containers only, no
arbitrary pickled objects -- so RNG states are stored as tensors/lists, not numpy objects.
"""
from __future__ import annotations

import datetime as _dt
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine import __version__
from engine.errors import ConfigError, MediaError
from engine.util.atomic import atomic_path

__all__ = ["CHECKPOINT_SCHEMA", "CHECKPOINT_SCHEMA_VERSION", "CheckpointError", "ModelMeta", "Checkpoint",
           "capture_rng", "restore_rng"]

CHECKPOINT_SCHEMA = "portrait.neural.checkpoint"
CHECKPOINT_SCHEMA_VERSION = 1


class CheckpointError(MediaError):
    """A checkpoint file is missing, corrupt, or not a Portrait Engine actor model."""


@dataclass
class ModelMeta:
    """Who and what a model was trained from (travels in every checkpoint).

    actor_id / consent: the shot YAML's ``actor.id`` and ``actor.consent`` (the likeness
    release). provenance: any further fields worth keeping (shot file, its config hash,
    operator, licence notes). media_hashes: training media name/path -> sha256.
    tracking_hashes: tracking file -> sha256. face_model_id: identity of the face model the
    conditioning was rendered with (a model rendered with one face model's UVs and
    canonical coordinates is meaningless with another's).
    """

    actor_id: str
    face_model_id: str
    consent: str
    media_hashes: dict[str, str] = field(default_factory=dict)
    tracking_hashes: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.actor_id or not self.face_model_id:
            raise ConfigError("model metadata needs an actor id and a face-model id")
        if not str(self.consent).strip():
            raise ConfigError(f"actor '{self.actor_id}': a consent/provenance note is required to train a model")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelMeta":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


# ------------------------------------------------------------------------------ RNG state
def capture_rng() -> dict[str, Any]:
    """Python, numpy, torch CPU and (if present) every CUDA device's generator state."""
    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # resumed on a machine with a different GPU count: keep what matches
            for i, s in enumerate(cuda[:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)


# ----------------------------------------------------------------------------- checkpoint
@dataclass
class Checkpoint:
    step: int
    model: dict[str, torch.Tensor]
    generator_config: dict[str, Any]
    train_config: dict[str, Any]
    meta: ModelMeta
    data_fingerprint: str = ""
    kind: str = "training"
    optimizer: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None
    sampler: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    engine_version: str = __version__
    created: str = ""

    def to_payload(self) -> dict[str, Any]:
        return {
            "schema": CHECKPOINT_SCHEMA, "schema_version": CHECKPOINT_SCHEMA_VERSION,
            "engine_version": self.engine_version, "kind": self.kind,
            "created": self.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "step": int(self.step), "model": self.model, "generator_config": self.generator_config,
            "train_config": self.train_config, "meta": asdict(self.meta),
            "data_fingerprint": self.data_fingerprint, "optimizer": self.optimizer, "scaler": self.scaler,
            "rng": self.rng, "sampler": self.sampler, "history": self.history,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: readers see the old file or the new one, never half of one."""
        path = Path(path)
        with atomic_path(path) as tmp:
            torch.save(self.to_payload(), tmp)
        return path

    def inference_only(self) -> "Checkpoint":
        return Checkpoint(step=self.step, model=self.model, generator_config=self.generator_config,
                          train_config=self.train_config, meta=self.meta, data_fingerprint=self.data_fingerprint,
                          kind="model", history=self.history[-20:], engine_version=self.engine_version,
                          created=self.created)

    @classmethod
    def load(cls, path: str | os.PathLike, *, map_location: str | torch.device = "cpu",
             expected_face_model_id: str | None = None) -> "Checkpoint":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"no actor-model checkpoint at {path}")
        try:
            payload = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # zip/pickle/EOF/Runtime errors all mean "not a readable checkpoint"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise CheckpointError(f"checkpoint {path} is corrupt or unreadable "
                                  f"({type(exc).__name__}{': ' + first[:120] if first else ''})") from None
        if not isinstance(payload, dict) or payload.get("schema") != CHECKPOINT_SCHEMA:
            raise CheckpointError(f"{path} is not a Portrait Engine actor-model checkpoint")
        if payload.get("schema_version") != CHECKPOINT_SCHEMA_VERSION:
            raise CheckpointError(f"checkpoint {path} has schema version {payload.get('schema_version')}; "
                                  f"this engine reads version {CHECKPOINT_SCHEMA_VERSION}")
        try:
            meta = ModelMeta.from_dict(payload["meta"])
            ckpt = cls(step=int(payload["step"]), model=payload["model"],
                       generator_config=payload["generator_config"], train_config=payload["train_config"],
                       meta=meta, data_fingerprint=payload.get("data_fingerprint", ""),
                       kind=payload.get("kind", "training"), optimizer=payload.get("optimizer"),
                       scaler=payload.get("scaler"), rng=payload.get("rng"), sampler=payload.get("sampler"),
                       history=list(payload.get("history") or []),
                       engine_version=payload.get("engine_version", "?"), created=payload.get("created", ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} is incomplete ({type(exc).__name__}: {exc})") from None
        if expected_face_model_id is not None and meta.face_model_id != expected_face_model_id:
            raise ConfigError(f"checkpoint {path} was trained with face model '{meta.face_model_id}', "
                              f"not '{expected_face_model_id}'")
        return ckpt
