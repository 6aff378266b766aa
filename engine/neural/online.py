"""Online mode: render a shot's face crops from per-frame face-model parameters.

No test-time training: parameters (the plate's tracking, or a drive file) are rasterised
into conditioning maps for each frame's crop (:class:`engine.face.params.ConditioningRenderer`),
the plate frame is resampled into the same crop as context, and the actor model paints the
face in one forward pass (:class:`engine.neural.infer.Renderer`). The final render
(:mod:`engine.render`) pastes the crops back into the plate.

The checkpoint says which face model its conditioning belongs to; the caller passes the
model (normally ``tracking.face_model()`` of the plate the actor was trained on), and a
mismatch is refused: a network trained on one model's UVs and canonical coordinates renders
garbage from another's.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from engine.errors import ConfigError
from engine.face.conditioning import ConditioningConfig
from engine.face.params import ConditioningRenderer, FrameParams
from engine.neural.dataset_build import CACHE_MAPS, plate_crops
from engine.neural.infer import Renderer

__all__ = ["CropRender", "CropRenderer"]

# Besides what the network reads, the render passes want raw depth (EXR depth.Z).
_RENDER_MAPS = tuple(dict.fromkeys(CACHE_MAPS + ("depth",)))


@dataclass
class CropRender:
    """One batch of rendered crops (CPU float32). rgb / composite (B, 3, S, S) display-referred;
    alpha (B, 1, S, S) where the painting replaces the plate; maps: the conditioning
    (name -> (B, C, S, S)); affine (B, 2, 3) plate -> crop pixels at S; context: the plate
    crops; valid (B, 1, S, S) the crop pixels inside the plate; frames (B,) frame numbers;
    usable (B,) False where there was no face to render (alpha is 0 there)."""

    rgb: torch.Tensor
    alpha: torch.Tensor
    composite: torch.Tensor
    maps: dict[str, torch.Tensor]
    affine: np.ndarray
    context: torch.Tensor
    valid: torch.Tensor
    frames: np.ndarray
    usable: np.ndarray


def _training_face_model(meta: Any, path: Path) -> Any:
    from engine.face.tracking_file import load_tracking

    for tracking in meta.tracking_hashes:
        if Path(tracking).exists():
            return load_tracking(tracking).face_model()
    raise ConfigError(f"{path}: the tracking file the actor model was trained from "
                      f"({', '.join(meta.tracking_hashes) or 'not recorded'}) is gone; pass the face model")


class CropRenderer:
    """An actor model plus the face model it was trained with, rendering :class:`FrameParams`."""

    def __init__(self, renderer: Renderer, face_model: Any) -> None:
        self.renderer = renderer
        want = renderer.meta.face_model_id
        got = face_model.model_id() if hasattr(face_model, "model_id") else None
        if got is not None and want and got != want:
            raise ConfigError(f"actor model was trained with face model {want}, the parameters use {got}: "
                              "track the shot with the actor model's face model")
        self.face_model = face_model
        cfg = renderer.config
        self.conditioning = ConditioningRenderer(face_model, ConditioningConfig(
            size=cfg.image_size, maps=_RENDER_MAPS, num_regions=cfg.region_channels))

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, face_model: Any = None, *,
                        device: str = "auto") -> "CropRenderer":
        """Load an actor model. ``face_model`` None: the model of the tracking file the actor
        was trained from (recorded in the checkpoint; its content hash is checked)."""
        renderer = Renderer.from_checkpoint(Path(path), device=device)
        if face_model is None:
            face_model = _training_face_model(renderer.meta, Path(path))
        return cls(renderer, face_model)

    @property
    def size(self) -> int:
        return int(self.renderer.config.image_size)

    @property
    def meta(self):
        return self.renderer.meta

    def render(self, params: FrameParams, indices: Sequence[int] | np.ndarray,
               plate_frames: Sequence[np.ndarray]) -> CropRender:
        """Render frames ``indices`` of ``params`` over their plate frames (H, W, 3; uint8 or
        float display-referred [0, 1]; the plate frame of each index, in order)."""
        idx = np.asarray(indices, np.int64)
        if len(plate_frames) != len(idx):
            raise ConfigError(f"{len(idx)} frames to render but {len(plate_frames)} plate frames")
        S = self.size
        context, valid = plate_crops(plate_frames, params, idx, S)
        maps = self.conditioning.render(params, idx)
        cfg = self.renderer.config
        expr = None
        if cfg.expr_dim:
            e = np.nan_to_num(params.expression[idx].astype(np.float32))
            if e.shape[1] != cfg.expr_dim:
                raise ConfigError(f"actor model takes {cfg.expr_dim} expression coefficients, "
                                  f"the parameters have {e.shape[1]}")
            expr = torch.from_numpy(e)
        out = self.renderer.forward({k: maps[k] for k in cfg.required_maps()}, context, expr)
        rgb, alpha = out.rgb.float().cpu().clone(), out.alpha.float().cpu().clone()
        usable = np.asarray(params.usable[idx], bool)
        if not usable.all():
            # No face: the plate passes through untouched (alpha 0, composite = plate crop).
            alpha = alpha * torch.from_numpy(usable.astype(np.float32))[:, None, None, None]
        alpha = alpha * valid
        composite = alpha * rgb + (1 - alpha) * context
        return CropRender(rgb=rgb, alpha=alpha, composite=composite, maps={k: v.cpu() for k, v in maps.items()},
                          affine=self.conditioning.crop_affine(params, idx), context=context, valid=valid,
                          frames=params.frame_numbers[idx].copy(), usable=usable)
