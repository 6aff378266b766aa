"""The drive review movie: driver | driven mesh over the plate | driven conditioning.

Three panels per shot frame, all at the plate's rate:

1. the **driving video** at the frame the drive sampled (nearest to the exact position; held
   first / last frames outside the clip are marked by the status line);
2. the **plate** with the actor's face mesh posed by the drive (the same wireframe as the
   tracking overlay, :class:`engine.face.overlay.MeshProjector`): what the renderer will
   paint, where;
3. the **normal map** the neural renderer is conditioned on for that frame's crop
   (:class:`engine.face.params.ConditioningRenderer`), upscaled.

A status line gives the frame number and the drive's flag; flagged frames get a red band.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from engine.face.conditioning import ConditioningConfig
from engine.face.overlay import BANNER, TEXT, MeshProjector, OverlayConfig, _pts
from engine.face.params import ConditioningRenderer

__all__ = ["write_drive_review"]


def _sequential(frames: Iterator[tuple[int, np.ndarray]]) -> Callable[[int], np.ndarray]:
    """Random access for non-decreasing indices over a forward-only frame stream."""
    state = {"i": -1, "frame": None}

    def get(index: int) -> np.ndarray:
        while state["i"] < index:
            try:
                _, state["frame"] = next(frames)
            except StopIteration:
                break
            state["i"] += 1
        return state["frame"]

    return get


def _fit_height(img: np.ndarray, h: int) -> np.ndarray:
    if img.shape[0] == h:
        return img
    w = max(2, int(round(img.shape[1] * h / img.shape[0])))
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if img.shape[0] > h else cv2.INTER_LINEAR)


def _label(img: np.ndarray, text: str, flagged: bool) -> None:
    font = cv2.FONT_HERSHEY_SIMPLEX
    H, W = img.shape[:2]
    fs = max(0.45, H / 900.0)
    th = max(1, int(round(fs * 1.5)))
    (tw, tht), base = cv2.getTextSize(text, font, fs, th)
    if flagged:
        band = tht + base + 12
        layer = img.copy()
        cv2.rectangle(layer, (0, 0), (W, band), BANNER, -1)
        img[:] = cv2.addWeighted(layer, 0.8, img, 0.2, 0.0)
    cv2.putText(img, text, (8, tht + 6), font, fs, TEXT, th, cv2.LINE_AA)


def write_drive_review(drive, plate_tracking, out_path: str | Path, *, plate_media: str | Path | None = None,
                       driver_tracking=None, driver_media: str | Path | None = None, height: int = 512,
                       conditioning_size: int = 256, overwrite: bool = True, max_frames: int | None = None,
                       chunk: int = 16) -> Path:
    """Write the side-by-side review of ``drive`` (a DriveResult / DriveFile) over its plate."""
    from engine.face.track import display_frames, open_media
    from engine.io import ReviewMovieWriter

    params = drive.params
    n = len(params) if max_frames is None else min(len(params), int(max_frames))
    model = plate_tracking.face_model()
    pm = plate_tracking.header["media"]
    plate_path = Path(plate_media or pm["path"])
    fps = plate_tracking.fps
    proj = MeshProjector(model, params.identity)
    K = params.intrinsics()
    cond = ConditioningRenderer(model, ConditioningConfig(size=conditioning_size, maps=("normal",)))
    W, H = params.image_size
    scale = max(1, int(math.ceil(height / H)))
    status = drive.status
    cfg = OverlayConfig()
    first = int(params.frame_numbers[0])
    psrc, _, _ = open_media(plate_path, fps, int(pm["start_frame"]))
    dget = dsrc = None
    if driver_tracking is not None and drive.positions is not None:
        dm = driver_tracking.header["media"]
        dsrc, _, _ = open_media(Path(driver_media or dm["path"]), None, int(dm["start_frame"]))
        d_first = int(dsrc.frame_numbers.start)
        dget = _sequential(display_frames(dsrc, d_first, dsrc.frame_numbers.stop - 1, dm.get("colourspace", "Rec.709")))
        n_drv = len(driver_tracking)
    panel_h = H * scale
    writer = None
    normals = None
    try:
        frames = display_frames(psrc, first, int(params.frame_numbers[n - 1]), pm.get("colourspace", "Rec.709"))
        for i, (number, rgb) in enumerate(frames):
            if i >= n:
                break
            panels = []
            if dget is not None:
                num, den = (int(v) for v in drive.positions[i])
                j = min(max(int(math.floor(num / den + 0.5)), 0), n_drv - 1)
                dimg = dget(j)
                panels.append(_fit_height(dimg, panel_h).copy())
                _label(panels[-1], f"driver {j}", False)
            big = cv2.resize(rgb, (W * scale, H * scale), interpolation=cv2.INTER_LINEAR)
            if params.usable[i]:
                uv, vis = proj.project(params.expression[i:i + 1], params.rotation[i:i + 1],
                                       params.translation[i:i + 1], K)
                layer = big.copy()
                sel = proj.edges[vis[0]]
                if len(sel):
                    cv2.polylines(layer, list(_pts(uv[0], scale)[sel]), False, (90, 220, 255), 1, cv2.LINE_AA, 4)
                big = cv2.addWeighted(layer, cfg.wire_alpha + 0.2, big, 0.8 - cfg.wire_alpha, 0.0)
            # "clamped" (expression limited to the actor's range) is named, not alarmed
            _label(big, f"{number}  {status[i]}", status[i] not in ("ok", "clamped"))
            panels.append(big)
            if i % chunk == 0:
                normals = cond.render(params, np.arange(i, min(i + chunk, n)))["normal"].permute(0, 2, 3, 1).numpy()
            nm = normals[i % chunk]
            nimg = np.clip((nm * 0.5 + 0.5) * 255.0 * (np.abs(nm).sum(-1, keepdims=True) > 0), 0, 255).astype(np.uint8)
            panels.append(_fit_height(nimg, panel_h).copy())
            _label(panels[-1], "conditioning (normals)", False)
            frame = np.concatenate(panels, 1)
            if writer is None:
                writer = ReviewMovieWriter(out_path, fps, (frame.shape[1], frame.shape[0]), crf=20, preset="veryfast",
                                           overwrite=overwrite, metadata={"comment": "drive review"})
                writer.open()
            writer.write(frame)
        if writer is None:
            raise ValueError("no frames to review")
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        psrc.close()
        if dsrc is not None:
            dsrc.close()
    return Path(out_path)
