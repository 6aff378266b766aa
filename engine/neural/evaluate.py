"""Held-out evaluation of an actor model, and the nearest-neighbour retrieval baseline.

Protocol (issue 4): train on the first 90 % of the plate's frames, evaluate on the last
10 % (:func:`engine.neural.data.split_holdout`). Per frame: PSNR, SSIM and ST-LPIPS on the
face region (the rendered face mask) and on the mouth region (mouth interior + lips,
dilated), then means over frames (frames whose region is empty, e.g. a closed mouth with
no lips map, are skipped for that region). LMD needs a landmark detector on renders and
plates; pass ``landmarks`` (a callable image batch -> (B, N, 2)) to include it.
Comparison images show plate | render | error (|difference| x 4, colour-mapped).

The baseline any learned renderer must beat: for each test frame retrieve the training
frame with the nearest expression/pose (or, without coefficients, the nearest downsampled
conditioning maps) and paste its face region into the test plate. It is sharp (real
pixels) but wrong wherever the retrieved performance differs from the test frame.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import ConfigError
from engine.neural.data import FrameBatch, FrameDataset
from engine.neural.generator import face_hole
from engine.neural.metrics import dilate_mask, landmark_distance, region_metrics
from engine.util.atomic import atomic_path, atomic_write_json

__all__ = ["EvalReport", "region_masks", "evaluate", "NearestNeighbourBaseline", "comparison_image"]

Predictor = Callable[[FrameBatch], torch.Tensor]
_LIPS = 2


@dataclass
class EvalReport:
    summary: dict[str, float]                 # metric -> mean over frames
    per_frame: dict[str, list[float]]         # metric -> one value per evaluated frame
    frames: list[int]                         # plate frame numbers evaluated
    images: list[Path] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.summary, "frames": self.frames, "per_frame": self.per_frame,
                "images": [str(p) for p in self.images]}


def region_masks(batch: FrameBatch, mouth_dilate: float = 0.02) -> dict[str, torch.Tensor]:
    """face: the rendered face mask; mouth: mouth interior (+ lips when a region map is
    present), dilated by ``mouth_dilate`` of the crop size; both times ``valid``."""
    face = (batch.cond["mask_face"] > 0.5).float()
    mouth = (batch.cond["mask_mouth"] > 0.5).float() if "mask_mouth" in batch.cond else torch.zeros_like(face)
    if "region" in batch.cond and batch.cond["region"].shape[1] > _LIPS:
        mouth = torch.maximum(mouth, (batch.cond["region"][:, _LIPS:_LIPS + 1] > 0.5).float())
    mouth = dilate_mask(mouth, int(round(mouth_dilate * face.shape[-1])))
    if batch.valid is not None:
        face, mouth = face * batch.valid, mouth * batch.valid
    return {"face": face, "mouth": mouth}


def _to_u8(img: torch.Tensor) -> np.ndarray:
    return (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def comparison_image(plate: torch.Tensor, render: torch.Tensor, gain: float = 4.0) -> np.ndarray:
    """(H, 3W, 3) RGB uint8: plate | render | |render - plate| * gain (inferno colour map)."""
    import cv2
    err = ((render - plate).abs().mean(0) * gain).clamp(0, 1)
    heat = cv2.applyColorMap((err.numpy() * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[..., ::-1]
    return np.concatenate([_to_u8(plate), _to_u8(render), heat], 1)


def _write_png(path: Path, rgb: np.ndarray) -> Path:
    import cv2
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(rgb[..., ::-1])):
            raise OSError(f"could not write {path}")
    return path


def evaluate(predict: Predictor, dataset: FrameDataset, indices: Sequence[int], *, batch_size: int = 8,
             out_dir: str | os.PathLike | None = None, name: str = "eval", n_images: int = 8,
             metric: torch.nn.Module | None = None, landmarks: Callable[[torch.Tensor], torch.Tensor] | None = None,
             mouth_dilate: float = 0.02) -> EvalReport:
    """Evaluate ``predict`` (FrameBatch -> composite (B, 3, H, W) on CPU) on ``indices``.

    With ``out_dir``: ``<name>_metrics.json`` and ``n_images`` comparison PNGs (evenly spaced
    over the evaluated frames) under ``out_dir/<name>/``, all written atomically.
    """
    idx = list(indices)
    if not idx:
        raise ConfigError("nothing to evaluate: no frame indices")
    if metric is None:
        from engine.neural.perceptual import STLPIPS
        metric = STLPIPS()
    picks: set[int] = set()
    if out_dir is not None:
        picks = set(np.linspace(0, len(idx) - 1, min(n_images, len(idx))).round().astype(int).tolist())
    per: dict[str, list[float]] = {}
    frames: list[int] = []
    images: list[Path] = []
    out = Path(out_dir) if out_dir is not None else None
    for i in range(0, len(idx), batch_size):
        b = dataset.get(idx[i:i + batch_size])
        pred = predict(b).float().cpu().clamp(0, 1)
        target = b.target.float()
        vals = region_metrics(pred, target, {**region_masks(b, mouth_dilate), "full": None}, metric=metric)
        if landmarks is not None:
            S = target.shape[-1]
            vals["lmd"] = landmark_distance(landmarks(pred), landmarks(target)).float() / S * 256  # px @ 256
        for k, v in vals.items():
            per.setdefault(k, []).extend(float(x) for x in v)
        frames.extend(int(f) for f in b.frames)
        if out is not None:
            for j in range(len(b)):
                if i + j in picks:
                    images.append(_write_png(out / name / f"compare_{int(b.frames[j]):06d}.png",
                                             comparison_image(target[j], pred[j])))
    summary = {k: (float(np.nanmean(v)) if not all(math.isnan(x) for x in v) else math.nan) for k, v in per.items()}
    summary["frames"] = float(len(frames))
    report = EvalReport(summary=summary, per_frame=per, frames=frames, images=images)
    if out is not None:
        atomic_write_json(out / f"{name}_metrics.json", report.to_json())
    return report


class NearestNeighbourBaseline:
    """Retrieval baseline: paste the face of the nearest training frame into the test plate.

    Features: the frames' expression/pose coefficients when the dataset has them
    (standardised per dimension), else the conditioning maps ``feature_maps`` downsampled
    to ``feature_size`` px (where the face is and how it is posed/articulated).
    """

    def __init__(self, dataset: FrameDataset, train_indices: Sequence[int], *, use_expr: bool = True,
                 feature_maps: tuple[str, ...] = ("mask_face", "mask_mouth", "normal"), feature_size: int = 24,
                 hole_dilate: float = 0.03, batch_size: int = 64, frame_features: np.ndarray | None = None) -> None:
        """``frame_features`` (len(dataset), D): explicit per-frame features (e.g. expression
        coefficients and head pose), used instead of the dataset's expr / maps."""
        self.dataset = dataset
        self.train = list(train_indices)
        if not self.train:
            raise ConfigError("nearest-neighbour baseline needs training frames")
        self.feature_maps = feature_maps
        self.feature_size = feature_size
        self.hole_dilate = hole_dilate
        self.table = None
        if frame_features is not None:
            table = torch.as_tensor(np.asarray(frame_features, np.float32))
            if table.shape[0] != len(dataset):
                raise ConfigError(f"frame_features has {table.shape[0]} rows for {len(dataset)} frames")
            self.table = table
            self.row = {int(f): i for i, f in enumerate(dataset.frame_numbers)}
        first = dataset.get(self.train[:1])
        self.use_expr = use_expr and first.expr is not None
        feats = [self._features(dataset.get(self.train[i:i + batch_size]))
                 for i in range(0, len(self.train), batch_size)]
        f = torch.cat(feats)
        self.mean = f.mean(0, keepdim=True)
        standardise = self.use_expr or self.table is not None
        self.std = f.std(0, keepdim=True).clamp_min(1e-6) if standardise else torch.ones_like(self.mean)
        self.bank = (f - self.mean) / self.std

    def _features(self, b: FrameBatch) -> torch.Tensor:
        if self.table is not None:
            return self.table[[self.row[int(f)] for f in b.frames]]
        if self.use_expr:
            return b.expr.float()
        maps = [F.interpolate(b.cond[k].float(), size=(self.feature_size,) * 2, mode="area")
                for k in self.feature_maps if k in b.cond]
        if not maps:
            raise ConfigError(f"nearest-neighbour baseline: none of the maps {self.feature_maps} is present")
        return torch.cat(maps, 1).flatten(1)

    def nearest(self, b: FrameBatch) -> list[int]:
        q = (self._features(b) - self.mean) / self.std
        d = torch.cdist(q, self.bank)
        return [self.train[int(j)] for j in d.argmin(1)]

    def __call__(self, b: FrameBatch) -> torch.Tensor:
        ref = self.dataset.get(self.nearest(b))
        hole = b.hole if b.hole is not None else face_hole(b.cond["mask_face"].float(), self.hole_dilate)
        return hole * ref.target + (1 - hole) * b.plate
