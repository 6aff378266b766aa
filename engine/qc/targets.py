"""The landmarks a render should have: the plate's, moved by what the drive changes.

A drive file (:mod:`engine.drive.drive_file`) holds per-frame face-model parameters in the
plate's face model. Projecting them gives model landmarks, but a fitted model's landmarks sit
a systematic 1-3 px away from what MediaPipe measures on the same face (the fit residual), so
comparing a re-tracked render with projected drive landmarks would charge that residual to the
render. Instead the target is the plate's *measured* landmarks plus the *change* the drive asks
for: ``target = plate_measured + project(drive params) - project(plate's tracked params)``. The
residual cancels; a ``drive.mode: none`` drive (the plate's own parameters) gives exactly the
plate's landmarks.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from engine.face.camera import axis_angle_to_matrix

__all__ = ["projected_landmarks", "drive_targets"]


@torch.no_grad()
def projected_landmarks(model, params, indices: np.ndarray) -> np.ndarray:
    """(B, 478, 2) image landmarks (engine pixels) of ``params`` frames ``indices``; NaN where
    the frame is not usable or the model does not embed the landmark."""
    idx = np.asarray(indices, np.int64)
    out = np.full((len(idx), 478, 2), np.nan)
    ok = np.asarray(params.usable, bool)[idx]
    if not ok.any():
        return out
    sel = idx[ok]
    exp = torch.as_tensor(np.nan_to_num(params.expression[sel]), dtype=torch.float32)
    ident = None
    if getattr(model, "n_id", 0):
        ident = torch.as_tensor(params.identity, dtype=torch.float32)[None].expand(len(sel), -1)
    lms = model.landmarks(model.vertices(ident, exp).float())
    rot = axis_angle_to_matrix(torch.as_tensor(params.rotation[sel], dtype=torch.float32))
    cam = lms @ rot.transpose(1, 2) + torch.as_tensor(params.translation[sel], dtype=torch.float32)[:, None]
    K = params.intrinsics()
    z = cam[..., 2].numpy().astype(np.float64)
    uv = np.stack([K[0, 0] * cam[..., 0].numpy() / z + K[0, 2], K[1, 1] * cam[..., 1].numpy() / z + K[1, 2]], -1)
    embedded = np.asarray(model.landmark_tri) >= 0
    uv[:, ~embedded] = np.nan
    out[ok] = uv
    return out


def drive_targets(drive_path: str | os.PathLike, tracking_path: str | os.PathLike, frames: np.ndarray,
                  plate_points: np.ndarray) -> tuple[np.ndarray, dict]:
    """(N, 478, 3) target landmarks for plate frames ``frames`` (see the module doc) and a
    small info dict. NaN where the drive, the tracking or the measured plate has no face."""
    from engine.drive.drive_file import load_drive
    from engine.face.params import FrameParams
    from engine.face.tracking_file import load_tracking

    drive = load_drive(drive_path)
    tracking = load_tracking(tracking_path)
    model = tracking.face_model()
    pd, pt = drive.params, FrameParams.from_tracking(tracking)
    frames = np.asarray(frames, np.int64)
    di = np.array([int(np.flatnonzero(pd.frame_numbers == f)[0]) if (pd.frame_numbers == f).any() else -1
                   for f in frames])
    ti = np.array([int(np.flatnonzero(pt.frame_numbers == f)[0]) if (pt.frame_numbers == f).any() else -1
                   for f in frames])
    have = (di >= 0) & (ti >= 0)
    target = np.full_like(np.asarray(plate_points, np.float64), np.nan)
    if have.any():
        delta = projected_landmarks(model, pd, di[have]) - projected_landmarks(model, pt, ti[have])
        base = np.asarray(plate_points, np.float64)[have]
        moved = base.copy()
        # Landmarks the model does not embed cannot be moved by it: they keep the plate's.
        moved[..., :2] = base[..., :2] + np.nan_to_num(delta, nan=0.0)
        bad = ~np.isfinite(delta).any(-1).any(-1)   # whole frame unusable in drive or tracking
        moved[bad] = np.nan
        target[have] = moved
    info = {"drive": str(drive_path), "tracking": str(tracking_path), "mode": drive.mode,
            "frames_with_target": int(np.isfinite(target[:, 0, 0]).sum())}
    return target.astype(np.float32), info
