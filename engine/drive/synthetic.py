"""In-memory tracking results with known parameters, for tests and benchmarks of the drive.

:func:`synthetic_tracking` builds a :class:`~engine.face.tracking_file.TrackingResult` as if a
video had been tracked: the model's landmarks are projected with the given pose and camera
(so the crops are the crops of those landmarks), frames marked ``no_face`` carry NaN
parameters like the tracker's, and the header says which model it belongs to. No MediaPipe
and no media involved: the transfer's maths can be checked against known coefficients.
"""
from __future__ import annotations

import warnings
from fractions import Fraction

import numpy as np

from engine.face import landmarks as lmk
from engine.face.crop import CropConfig, compute_crops
from engine.face.fit import FitResult, camera_to_head_rotation
from engine.face.tracking_file import STATUS_NAMES, TrackingResult, new_header

from .geometry import LandmarkBasis

__all__ = ["synthetic_tracking"]


def synthetic_tracking(model, expression: np.ndarray, rotation: np.ndarray, translation: np.ndarray, *,
                       identity: np.ndarray | None = None, fps: Fraction | int = 25, start_frame: int = 0,
                       image_size: tuple[int, int] = (256, 256), focal: float = 600.0,
                       no_face: np.ndarray | None = None, media_sha256: str = "0" * 64,
                       crop_size: int = 256) -> TrackingResult:
    import torch

    e = np.asarray(expression, np.float32)
    n = e.shape[0]
    ident = np.zeros(model.n_id, np.float32) if identity is None else np.asarray(identity, np.float32)
    rot = np.asarray(rotation, np.float32).reshape(n, 3)
    trans = np.asarray(translation, np.float32).reshape(n, 3)
    bad = np.zeros(n, bool) if no_face is None else np.asarray(no_face, bool)
    W, H = image_size
    pp = np.array([W / 2.0, H / 2.0], np.float32)
    lb = LandmarkBasis.of(model, ident)
    pts = lb.points(e)
    from scipy.spatial.transform import Rotation

    R = Rotation.from_rotvec(rot.astype(np.float64)).as_matrix()
    cam = np.einsum("nij,nlj->nli", R, pts) + trans[:, None].astype(np.float64)
    uv = cam[..., :2] / cam[..., 2:3] * focal + pp
    points = np.concatenate([uv, cam[..., 2:3] - trans[:, None, 2:3]], -1).astype(np.float32)
    points[bad] = np.nan
    status = np.where(bad, lmk.STATUS_NO_FACE, lmk.STATUS_OK).astype(np.uint8)
    with warnings.catch_warnings():     # all-NaN rows (no face) give NaN boxes, as the tracker's
        warnings.simplefilter("ignore", RuntimeWarning)
        bbox = np.stack([np.nanmin(points[..., 0], 1), np.nanmin(points[..., 1], 1),
                         np.nanmax(points[..., 0], 1), np.nanmax(points[..., 1], 1)], 1)
    track = lmk.LandmarkTrack(points, status, np.where(bad, 0.0, 1.0).astype(np.float32), bbox.astype(np.float32),
                              (~bad).astype(np.uint8), (int(W), int(H)))
    nan3 = np.full((n, 3), np.nan, np.float32)
    exp_out = np.where(bad[:, None], np.nan, e).astype(np.float32)
    head = camera_to_head_rotation(torch.as_tensor(rot)).numpy()
    fit = FitResult(identity=ident, expression=exp_out, rotation=np.where(bad[:, None], nan3, rot),
                    head_rotation=np.where(bad[:, None], nan3, head).astype(np.float32),
                    translation=np.where(bad[:, None], nan3, trans), focal=float(focal), principal_point=pp,
                    image_size=(int(W), int(H)), landmarks_2d=np.where(bad[:, None, None], np.nan, uv).astype(np.float32),
                    error_px=np.where(bad, np.nan, 0.0).astype(np.float32),
                    nme=np.where(bad, np.nan, 0.0).astype(np.float32),
                    iod=np.full(n, 50.0, np.float32), fitted=~bad, converged=True)
    crops = compute_crops(track, (W, H), CropConfig(size=crop_size), Fraction(fps))
    frame_numbers = np.arange(start_frame, start_frame + n, dtype=np.int64)
    fm = {"id": model.model_id(), "content_hash": model.content_hash(), "name": model.name, "kind": "npz",
          "spec": None, "base_id": model.model_id(), "derived_from_media": False, "sidecar": None,
          "needs_sidecar": True, "exp_names": list(model.exp_names), "n_id": model.n_id, "n_exp": model.n_exp}
    media = {"path": "/synthetic.mp4", "kind": "video", "sha256": media_sha256, "image_size": [int(W), int(H)],
             "start_frame": int(start_frame), "colourspace": "Rec.709", "frames_in_media": n}
    header = new_header(media=media, fps=Fraction(fps), frame_numbers=frame_numbers, face_model=fm,
                        config={"crop": {"size": crop_size}}, status_names=STATUS_NAMES)
    return TrackingResult(header=header, frame_numbers=frame_numbers, status=status, landmarks=track, fit=fit,
                          crops=crops, model=model)
