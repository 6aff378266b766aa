"""Build the training frame cache of an actor from a plate and its tracking file.

For every usable frame (tracking status ok / several faces, fitted): the plate frame is
decoded display-referred (what the network sees, :mod:`engine.io.colour`), resampled into
the tracked, stabilised face crop at the model's resolution (anti-aliased), and the fitted
face model is rasterised into the same crop (:class:`engine.face.params.ConditioningRenderer`).
Frames without a usable face are left out: there is nothing to learn from them, and the
clip sampler treats the gap as a cut (no velocity pair across it).

The cache records where it came from (plate and tracking hashes, face model, crop size,
maps): a training stage keys on it, and a model trained from it carries the hashes.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from engine.errors import ConfigError, MediaError
from engine.face.conditioning import ConditioningConfig
from engine.face.crop import invert_affine, warp_to_crop
from engine.face.params import ConditioningRenderer, FrameParams
from engine.neural.data import FrameCache, FrameCacheWriter
from engine.neural.generator import MAP_CHANNELS
from engine.util.hashing import file_sha256

__all__ = ["CacheBuildConfig", "CACHE_MAPS", "build_frame_cache", "plate_crops"]

# What the generator and the evaluation read: the generator's inputs plus the region one-hot
# (the evaluation's lips mask). Raw depth is not cached (depth_norm is the network's input).
CACHE_MAPS = ("canonical", "normal", "depth_norm", "uv", "mask_face", "mask_mouth", "region")


@dataclass
class CacheBuildConfig:
    """size: crop resolution of the cache (= the generator's image_size). maps: conditioning
    maps to store. expr: store the per-frame expression coefficients (for FiLM / stage 2).
    valid: store the in-plate mask (crops that run past the plate edge). batch: frames
    rasterised together."""

    size: int = 128
    maps: tuple[str, ...] = CACHE_MAPS
    expr: bool = True
    valid: bool = True
    batch: int = 16
    num_regions: int = 8

    def validate(self) -> None:
        if self.size < 16:
            raise ConfigError(f"frame cache size must be >= 16 px, got {self.size}")
        unknown = [m for m in self.maps if m not in MAP_CHANNELS and m != "region"]
        if unknown:
            raise ConfigError(f"unknown conditioning map(s) {unknown}")
        if self.batch < 1:
            raise ConfigError("cache build batch must be >= 1")


def _channels(name: str, num_regions: int) -> int:
    return num_regions if name == "region" else int(MAP_CHANNELS[name])


def plate_crops(frames: Sequence[np.ndarray], params: FrameParams, indices: Sequence[int], size: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Plate frames (H, W, 3) uint8 or float [0, 1] -> crops (B, 3, S, S) float and the in-plate
    masks (B, 1, S, S) of frames ``indices`` of ``params`` (affines rescaled to ``size``)."""
    imgs, valids = [], []
    scale = size / float(params.crop_size)
    for frame, i in zip(frames, indices):
        a = np.asarray(params.crop_affine[int(i)], np.float64) * scale
        f = frame.astype(np.float32) / 255.0 if frame.dtype == np.uint8 else frame.astype(np.float32)
        imgs.append(torch.from_numpy(np.ascontiguousarray(warp_to_crop(f, a, size))).permute(2, 0, 1))
        h, w = frame.shape[:2]
        # Crop pixels whose centre falls inside the plate (the crop may run past its edge).
        inv = invert_affine(a)
        c = np.arange(size, dtype=np.float64) + 0.5
        cu, cv = np.meshgrid(c, c)
        pu = inv[0, 0] * cu + inv[0, 1] * cv + inv[0, 2]
        pv = inv[1, 0] * cu + inv[1, 1] * cv + inv[1, 2]
        inside = (pu >= 0) & (pu <= w) & (pv >= 0) & (pv <= h)
        valids.append(torch.from_numpy(inside.astype(np.float32))[None])
    return torch.stack(imgs).clamp(0, 1), torch.stack(valids)


def build_frame_cache(tracking: Any, plate: str | os.PathLike, out: str | os.PathLike | None,
                      config: CacheBuildConfig | None = None, *, frames: Sequence[int] | None = None,
                      colourspace: str = "auto", fps=None, start_frame: int | None = None,
                      progress: Callable[[int, int], None] | None = None) -> FrameCache:
    """Cache the usable frames of ``tracking`` (optionally only frame numbers ``frames``).

    ``out`` None keeps the cache in memory. ``plate`` must be the media the tracking file was
    made from (its content hash is checked)."""
    from engine.face.track import display_frames, open_media, resolve_colourspace

    cfg = config or CacheBuildConfig()
    cfg.validate()
    params = FrameParams.from_tracking(tracking)
    plate = Path(plate)
    media_hash = tracking.media_sha256
    if plate.is_file() and file_sha256(plate) != media_hash:
        raise MediaError(f"{plate} is not the media {tracking.header['media'].get('path')} was tracked from "
                         "(content hash differs): re-track it")
    want = np.ones(len(params), bool) if frames is None else np.isin(params.frame_numbers, np.asarray(frames))
    take = np.flatnonzero(want & params.usable)
    if take.size == 0:
        raise MediaError(f"{plate}: no frame with a usable face to train on "
                         f"({tracking.status_counts()})")
    model = tracking.face_model()
    renderer = ConditioningRenderer(model, ConditioningConfig(size=cfg.size, maps=tuple(
        m for m in cfg.maps), num_regions=cfg.num_regions))
    maps = {m: _channels(m, cfg.num_regions) for m in cfg.maps}
    expr_dim = int(params.expression.shape[1]) if cfg.expr else 0
    source = {"media_sha256": media_hash, "media_path": str(plate),
              "tracking_sha256": file_sha256(tracking.path) if tracking.path is not None else "",
              "face_model_id": tracking.face_model_id, "face_model_hash": tracking.face_model_hash,
              "exp_names": list(tracking.exp_names), "crop_size": params.crop_size, "size": cfg.size,
              "colourspace": colourspace}
    writer = FrameCacheWriter(out, params.frame_numbers[take].tolist(), cfg.size, maps, expr_dim=expr_dim,
                              valid=cfg.valid, source=source)
    media_start = int(tracking.header["media"].get("start_frame", params.frame_numbers[0]))
    source_obj, _, _ = open_media(plate, fps if fps is not None else tracking.fps,
                                  media_start if start_frame is None else start_frame)
    space = resolve_colourspace(plate, colourspace)
    pos = {int(params.frame_numbers[i]): k for k, i in enumerate(take)}
    first, last = int(params.frame_numbers[take[0]]), int(params.frame_numbers[take[-1]])
    pending: list[tuple[int, np.ndarray]] = []
    t0 = time.perf_counter()

    def flush() -> None:
        if not pending:
            return
        idx = [int(take[pos[n]]) for n, _ in pending]
        imgs, valid = plate_crops([f for _, f in pending], params, idx, cfg.size)
        cond = renderer.render(params, idx)
        for j, (n, _) in enumerate(pending):
            writer.put(pos[n], {k: v[j] for k, v in cond.items()}, imgs[j],
                       expr=params.expression[idx[j]] if expr_dim else None,
                       valid=valid[j] if cfg.valid else None)
        pending.clear()

    done = 0
    try:
        with source_obj:
            for number, frame in display_frames(source_obj, first, last, space):
                if number not in pos:
                    continue
                pending.append((number, frame))
                if len(pending) >= cfg.batch:
                    done += len(pending)
                    flush()
                    if progress is not None:
                        progress(done, len(take))
            done += len(pending)
            flush()
    except BaseException:
        writer.abort()  # a killed or failed build leaves no half cache behind
        raise
    if progress is not None:
        progress(done, len(take))
    cache = writer.close()
    cache.meta.setdefault("build_s", round(time.perf_counter() - t0, 2))
    return cache
