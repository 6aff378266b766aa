"""The crop renderer the final render drives, as an interface.

The lead's :class:`engine.neural.online.CropRenderer` renders face-model parameters into the
frames' crops: ``.size`` and ``.render(params, indices, plate_frames) -> CropRender`` with
``rgb``/``composite`` (B, 3, S, S), ``alpha`` (B, 1, S, S), ``maps`` (name -> (B, C, S, S):
``depth``, ``normal``, ``uv``, ``mask_face``, ``mask_mouth``, ...) and ``affine`` (B, 2, 3)
plate -> crop at S. The render stage depends on that shape only (:class:`CropRendererLike`),
so tests and benchmarks can hand it any object that has it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = ["CropRendererLike", "CropFrame", "load_crop_renderer", "crop_frames"]


@runtime_checkable
class CropRendererLike(Protocol):
    size: int

    def render(self, params: Any, indices: Sequence[int], plate_frames: list[np.ndarray]) -> Any: ...


def load_crop_renderer(path: str | os.PathLike, face_model: Any, device: str = "auto") -> CropRendererLike:
    """The actor model checkpoint at ``path`` as a crop renderer (engine.neural.online), for
    parameters of ``face_model`` (the plate tracking's; a mismatch with the model the actor
    was trained with is refused there)."""
    from engine.neural.online import CropRenderer

    return CropRenderer.from_checkpoint(path, face_model, device=device)


_LIPS, _MOUTH_INTERIOR = 2, 3


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


@dataclass
class CropFrame:
    """One frame of a crop render, numpy, channels last (S, S[, C])."""

    composite: np.ndarray      # (S, S, 3) display-referred [0, 1]
    mask_face: np.ndarray      # (S, S)
    mask_mouth: np.ndarray     # (S, S)
    depth: np.ndarray | None   # (S, S)
    normal: np.ndarray | None  # (S, S, 3)
    uv: np.ndarray | None      # (S, S, 2)
    affine: np.ndarray         # (2, 3) plate -> crop at S
    lips: np.ndarray | None = None  # (S, S) lips + mouth interior (from the one-hot region map)
    context: np.ndarray | None = None  # (S, S, 3) the plate's own crop, display-referred


def crop_frames(out: Any) -> list[CropFrame]:
    """Split a CropRender batch into per-frame :class:`CropFrame` (numpy, HWC)."""
    comp = _np(out.composite)
    ctx = _np(out.context) if getattr(out, "context", None) is not None else None
    maps = {k: _np(v) for k, v in out.maps.items()}
    aff = _np(out.affine).astype(np.float64)
    frames = []
    for i in range(comp.shape[0]):
        def get(name: str, ch: int | None) -> np.ndarray | None:
            if name not in maps:
                return None
            m = maps[name][i]
            return m[0] if ch == 1 else np.moveaxis(m[:ch], 0, -1)
        face = get("mask_face", 1)
        if face is None:
            raise ValueError("crop render has no 'mask_face' map: cannot build a matte")
        mouth = get("mask_mouth", 1)
        lips = None
        if "region" in maps and maps["region"].shape[1] > _MOUTH_INTERIOR:
            # Region codes of engine.face.model.Region: LIPS = 2, MOUTH_INTERIOR = 3.
            lips = maps["region"][i, _LIPS] + maps["region"][i, _MOUTH_INTERIOR]
        frames.append(CropFrame(composite=np.ascontiguousarray(np.moveaxis(comp[i], 0, -1), np.float32),
                                mask_face=face.astype(np.float32),
                                mask_mouth=(mouth if mouth is not None else np.zeros_like(face)).astype(np.float32),
                                depth=get("depth", 1), normal=get("normal", 3), uv=get("uv", 2), affine=aff[i],
                                lips=lips,
                                context=None if ctx is None else np.ascontiguousarray(np.moveaxis(ctx[i], 0, -1),
                                                                                     np.float32)))
    return frames
