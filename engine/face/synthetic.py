"""Photo-textured renders of a face model with known parameters (tracking tests and benchmarks).

A synthetic round trip needs images that MediaPipe accepts as a face *and* whose true face-model
parameters are known. We render the model itself (z-buffered by :mod:`engine.face.raster`)
with a real face photo as its texture, applied by **projective texture mapping from the
photo's own camera** (:func:`photo_texture`): the model is fitted to MediaPipe's landmarks on
the photo, each vertex takes the photo position it projects to, and the fit's small residuals
are spread by a thin-plate spline so that each embedded landmark samples the photo where
MediaPipe saw it. The texture coordinates are fixed per vertex, so the photo's skin, eyes
and lips stick to the surface as the model changes expression and pose, like a real face's
albedo. The default photo is scikit-image's portrait of astronaut Eileen Collins (NASA,
public domain), which ships in the scikit-image wheel.

What this can and cannot test: MediaPipe finds a face on every render, and the fit recovers
expressions and pose; but MediaPipe's landmarks on a render are not exactly the model's
landmarks. It is a learned regressor with its own face-shape prior, not a feature tracker:
on the *same* photo shifted by 0.25-1 px its landmarks move by 0.6-1.1 % of the inter-ocular
distance (:func:`mediapipe_shift_sensitivity`); on a render at the photo's own camera and pose
(nearly the photo itself) they are 0.9 % (ICT) / 1.4 % (built-in, whose generic shape cannot
fit the photo) from the model's (:func:`photo_pose_check`); on the moving, expressive renders
1.8-1.9 %, mostly as a per-landmark offset that is the same on every frame (a texture baked
for one view, re-seen from others), which the fit cannot average out. That discrepancy, not
the fit, bounds how closely the recovered landmarks can match the ground truth
(bench/track_synthetic.py records the whole error budget).

Rendering: perspective-correct interpolation of the per-vertex photo positions, bilinear
photo lookup, mild Lambert shading (a light near the camera) and a flat background. Helper
geometry (ICT's eyelash and occlusion shells, region ``OTHER``) is not drawn. The built-in
model's eye and mouth openings are holes of its tessellation; its renders use the
tessellation with the holes filled (the photo's own eyes and closed lips show there).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from engine.errors import MediaError
from engine.face.camera import axis_angle_to_matrix, intrinsics
from engine.face.model import FaceModel, Region
from engine.face.raster import interpolate, rasterize

__all__ = ["astronaut_photo", "PhotoTexture", "photo_texture", "render_textured", "SyntheticSequence",
           "synthetic_parameters", "render_sequence", "rotation_error_deg", "photo_background",
           "mediapipe_shift_sensitivity", "photo_pose_check", "aligned_mean_residual"]

DRAWN_REGIONS = (Region.SKIN, Region.LIPS, Region.MOUTH_INTERIOR, Region.EYES, Region.HEAD)


@functools.lru_cache(maxsize=1)
def astronaut_photo() -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 photo, its (478, 2) MediaPipe landmarks in pixels)."""
    from skimage import data

    from engine.face.landmarks import LandmarkConfig, LandmarkTracker

    photo = np.ascontiguousarray(data.astronaut())
    with LandmarkTracker(LandmarkConfig(static=True, max_faces=1)) as tracker:
        r = tracker.process(photo)
    if not r.usable:
        raise MediaError(f"MediaPipe found no face on the astronaut photo (status {r.status_name})")
    return photo, r.points[:, :2].astype(np.float64)


@dataclass
class PhotoTexture:
    """A photo placed on a face model: per-vertex photo positions, and the head pose and
    expression the model was fitted to the photo with (renders near that pose and
    expression are the most photo-like)."""

    photo: np.ndarray            # (H, W, 3) uint8
    coords: np.ndarray           # (V, 2) photo pixel position of every vertex
    head_rotation: np.ndarray    # (3,) head axis-angle of the photo (relative to frontal)
    expression: np.ndarray       # (K_exp,)
    identity: np.ndarray | None = None         # (K_id,) the photo's fitted identity
    photo_landmarks: np.ndarray | None = None  # (478, 2) MediaPipe's landmarks on the photo


def photo_texture(model: FaceModel, photo: np.ndarray | None = None,
                  photo_landmarks: np.ndarray | None = None) -> PhotoTexture:
    """Projective texture mapping of a photo (default: the astronaut) from its own camera.

    The model (identity, expression, pose, focal) is fitted to the photo's landmarks, so the
    fitted mesh lies over the face in the photo; each vertex takes the photo position it
    projects to. The fit's remaining landmark residuals (about 1 % of the inter-ocular
    distance) are spread over the mesh by a smoothed thin-plate spline, so that every
    embedded landmark samples the photo where MediaPipe saw that landmark. The mouth and eyes
    open or close with the photo's expression, so the teeth and eyeballs of a model that has
    them sample the photo's teeth and eyes.
    """
    from scipy.interpolate import RBFInterpolator

    from engine.face.fit import FitConfig, fit_sequence

    if photo is None:
        photo, photo_landmarks = astronaut_photo()
    if photo_landmarks is None:
        raise MediaError("photo_texture needs the photo's landmarks with a custom photo")
    lm = np.asarray(photo_landmarks, np.float64)
    size = (photo.shape[1], photo.shape[0])
    fit = fit_sequence(model, lm[None], np.array([True]), size, FitConfig(smooth_iterations=0))
    if not bool(fit.fitted[0]):
        raise MediaError("the face model could not be fitted to the texture photo's landmarks")
    with torch.inference_mode():
        ident = torch.as_tensor(fit.identity[None]) if model.n_id else None
        verts = model.vertices(ident, torch.as_tensor(fit.expression[:1]))
        rot = axis_angle_to_matrix(torch.as_tensor(fit.rotation[:1]))
        cam = (verts @ rot.transpose(1, 2) + torch.as_tensor(fit.translation[:1])[:, None])[0].double().numpy()
    uv = cam[:, :2] / np.maximum(cam[:, 2:3], 1e-6) * fit.focal + np.asarray(fit.principal_point, np.float64)
    use = (np.asarray(model.landmark_tri) >= 0) & (np.asarray(model.landmark_weight) > 0)
    use[468:] = False                                             # irises move with gaze
    proj = np.asarray(fit.landmarks_2d[0], np.float64)
    use &= np.isfinite(lm).all(1) & np.isfinite(proj).all(1)
    if use.sum() < 6:
        raise MediaError("too few landmarks to place the photo texture on the face model")
    iod = float(np.linalg.norm(lm[33, :2] - lm[263, :2]))
    tps = RBFInterpolator(proj[use], lm[use, :2] - proj[use], kernel="thin_plate_spline",
                          smoothing=1e-3 * iod ** 2)
    return PhotoTexture(photo, uv + tps(uv), fit.head_rotation[0].astype(np.float64),
                        fit.expression[0].astype(np.float64), fit.identity.astype(np.float64), lm[:, :2].copy())


def _draw_triangles(model: FaceModel) -> np.ndarray:
    if model.n_vertices == 468 and not model.region_mask([Region.EYES, Region.MOUTH_INTERIOR]).any():
        from engine.face.landmarks import mediapipe_triangles
        return np.asarray(mediapipe_triangles(fill_holes=True), np.int64)
    keep = model.region_mask(DRAWN_REGIONS)
    return np.asarray(model.triangles[keep[model.triangles].all(1)], np.int64)


def render_textured(model: FaceModel, verts_cam: np.ndarray, K: np.ndarray, size: tuple[int, int],
                    photo: np.ndarray, tex_coords: np.ndarray, *, background: float | np.ndarray = 0.32,
                    triangles: np.ndarray | None = None, shading: float = 0.3) -> np.ndarray:
    """One RGB uint8 frame (H, W, 3) of the model's camera-space vertices (V, 3)."""
    from engine.face.conditioning import vertex_normals

    W, H = int(size[0]), int(size[1])
    tris = torch.as_tensor(_draw_triangles(model) if triangles is None else triangles)
    cam = torch.as_tensor(np.asarray(verts_cam, np.float32))[None]
    frag = rasterize(cam, tris, torch.as_tensor(np.asarray(K, np.float32)), H, W)
    mask = frag.mask[0].numpy()
    tex = interpolate(torch.as_tensor(tex_coords, dtype=torch.float32), tris, frag)[0].numpy()  # (H, W, 2)
    nrm = interpolate(vertex_normals(cam, tris)[0], tris, frag)[0].numpy()
    nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True) + 1e-12
    light = np.array([0.25, -0.35, -1.0])
    light /= np.linalg.norm(light)
    # Either side of a surface faces the light (the mouth cavity is seen from inside).
    shade = (1.0 - shading) + shading * np.abs(nrm @ light)
    # photo positions use the engine convention (pixel centres at +0.5); cv2 wants indices
    mx = (tex[..., 0] - 0.5).astype(np.float32)
    my = (tex[..., 1] - 0.5).astype(np.float32)
    colour = cv2.remap(photo, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101).astype(np.float32) / 255
    img = np.array(np.broadcast_to(np.asarray(background, np.float32), (H, W, 3)))
    img[mask] = np.clip(colour[mask] * shade[mask][:, None], 0.0, 1.0)
    return (img * 255 + 0.5).astype(np.uint8)


@dataclass
class SyntheticSequence:
    """Known parameters of a rendered sequence (camera convention of engine/face/camera.py)."""

    identity: np.ndarray      # (K_id,)
    expression: np.ndarray    # (N, K_exp)
    rotation: np.ndarray      # (N, 3) camera axis-angle
    translation: np.ndarray   # (N, 3) cm
    focal: float
    principal_point: np.ndarray  # (2,)
    size: tuple[int, int]     # (W, H)
    animated: tuple[str, ...]  # the expression names that move

    def __len__(self) -> int:
        return int(self.expression.shape[0])

    def intrinsics(self) -> np.ndarray:
        return intrinsics(torch.tensor(float(self.focal)), float(self.principal_point[0]),
                          float(self.principal_point[1])).numpy()

    def landmarks(self, model: FaceModel) -> np.ndarray:
        """(N, 478, 2) ground-truth model landmarks (NaN where not embedded)."""
        from engine.face.fit import project_landmarks
        return project_landmarks(model, self.identity, self.expression, self.rotation, self.translation,
                                 self.focal, self.principal_point)


_ANIMATE = (("jawOpen", 0.55, 0.9), ("eyeBlinkLeft", 0.9, 2.3), ("eyeBlinkRight", 0.9, 2.3),
            ("mouthSmileLeft", 0.5, 0.45), ("mouthSmileRight", 0.5, 0.45), ("mouthSmile", 0.5, 0.45),
            ("browInnerUp", 0.5, 0.6), ("browRaise", 0.5, 0.6), ("mouthFunnel", 0.4, 0.35),
            ("mouthStretch", 0.4, 0.35))


def synthetic_parameters(model: FaceModel, n: int, *, size: tuple[int, int] = (256, 256), focal: float = 600.0,
                         distance_cm: float = 100.0, seed: int = 0, identity_std: float = 0.6,
                         identity_components: int = 20, fps: float = 25.0,
                         head_offset: np.ndarray | None = None,
                         identity: np.ndarray | None = None) -> SyntheticSequence:
    """Smooth, plausible parameter tracks: talking-like jaw motion, blinks, smiles, brows,
    +-20 deg yaw, +-8 deg pitch, +-4 deg roll about ``head_offset`` (a head axis-angle,
    default frontal), a small drift; a random identity (``identity_std`` of the model's spread on the first
    ``identity_components``) unless ``identity`` is given."""
    from engine.face.fit import head_to_camera_rotation

    rng = np.random.default_rng(seed)
    ident = np.zeros(model.n_id, np.float32)
    k = min(model.n_id, identity_components)
    ident[:k] = rng.normal(size=k) * identity_std * np.asarray(model.id_std[:k])
    if identity is not None:
        ident = np.asarray(identity, np.float32).reshape(model.n_id).copy()
    t = np.arange(n) / fps
    exp = np.zeros((n, model.n_exp), np.float32)
    lo, hi = np.asarray(model.exp_range, np.float64).T
    animated = []
    for name, amp, freq in _ANIMATE:
        if name not in model.exp_names:
            continue
        j = model.exp_names.index(name)
        if name.startswith("eyeBlink"):
            # blinks: short raised-cosine events, both eyes together most of the time
            phase = rng.uniform(0, 1) if name.endswith("Left") else 0.0
            x = np.clip(np.cos(2 * np.pi * (freq * t / 4 + phase)) * 4 - 3, 0, 1)
            val = amp * x
        else:
            ph = rng.uniform(0, 2 * np.pi)
            val = amp * 0.5 * (1 + np.sin(2 * np.pi * freq * t + ph))
        # the model's plausible range: ICT [0, 1]; a learned basis' range scales with its data
        exp[:, j] = np.clip(val * (hi[j] if hi[j] > 0 else 1.0), lo[j], hi[j])
        animated.append(name)
    head = np.stack([np.radians(8) * np.sin(2 * np.pi * 0.23 * t + 0.5),
                     np.radians(20) * np.sin(2 * np.pi * 0.17 * t),
                     np.radians(4) * np.sin(2 * np.pi * 0.31 * t + 1.0)], -1)
    if head_offset is not None:
        from scipy.spatial.transform import Rotation

        head = (Rotation.from_rotvec(head) * Rotation.from_rotvec(np.asarray(head_offset, np.float64))).as_rotvec()
    rot = head_to_camera_rotation(torch.as_tensor(head, dtype=torch.float32)).numpy()
    trans = np.stack([1.5 * np.sin(2 * np.pi * 0.11 * t), -2.0 + 1.0 * np.cos(2 * np.pi * 0.07 * t),
                      distance_cm + 5.0 * np.sin(2 * np.pi * 0.05 * t)], -1).astype(np.float32)
    pp = np.array([size[0] / 2.0, size[1] / 2.0], np.float32)
    return SyntheticSequence(ident, exp, rot.astype(np.float32), trans, float(focal), pp, tuple(size),
                             tuple(animated))


def photo_background(texture: PhotoTexture, landmarks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The texture photo moved along with the head: (H, W, 3) float32 in [0, 1].

    The similarity (rotation, scale, shift) that best maps the photo's MediaPipe landmarks
    onto the frame's model landmarks ``landmarks`` (478, 2) warps the whole photo, so the
    hair, ears, neck and shoulders around the rendered face stay where a head's would be
    At the photo's own camera and pose this brings MediaPipe's landmarks closer to the model's
    (built-in model: 1.7 % -> 1.2 % of the inter-ocular distance); on a moving head the
    photo's own face edge around a face-only mesh makes it worse, hence not the default.
    """
    from engine.face.conditioning import affine_engine_to_cv2

    src = np.asarray(texture.photo_landmarks, np.float64)[:468]
    dst = np.asarray(landmarks, np.float64)[:468]
    ok = np.isfinite(src).all(1) & np.isfinite(dst).all(1)
    M, _ = cv2.estimateAffinePartial2D(src[ok], dst[ok], method=cv2.LMEDS)
    if M is None:
        raise MediaError("could not place the texture photo behind the rendered face")
    M_cv = affine_engine_to_cv2(torch.as_tensor(M)).numpy()
    W, H = int(size[0]), int(size[1])
    bg = cv2.warpAffine(texture.photo, M_cv, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return bg.astype(np.float32) / 255


def render_sequence(model: FaceModel, seq: SyntheticSequence, texture: PhotoTexture | None = None,
                    batch: int = 16, *, background: str = "flat", shading: float = 0.3):
    """Yield the RGB uint8 frames of ``seq`` (photo-textured; default photo: the astronaut).

    background: "flat" (uniform grey) or "photo" (the texture photo moved with the head, see
    :func:`photo_background`). shading: strength of the extra Lambert shading (0: the photo's
    own lighting only). Defaults: measured best for the round trip (see bench/track_synthetic:
    a photo background helps at the photo's own pose but, with a face-only mesh, leaves the
    photo's own face edge around the moving render and doubles MediaPipe's error).
    """
    if background not in ("photo", "flat"):
        raise ValueError(f"background must be 'photo' or 'flat', got {background!r}")
    texture = texture or photo_texture(model)
    photo, tex = texture.photo, texture.coords
    tris = _draw_triangles(model)
    K = seq.intrinsics()
    gt = seq.landmarks(model) if background == "photo" else None
    i = 0
    for a in range(0, len(seq), batch):
        sl = slice(a, min(a + batch, len(seq)))
        with torch.inference_mode():
            ident = torch.as_tensor(seq.identity[None]) if model.n_id else None
            exp = torch.as_tensor(seq.expression[sl])
            verts = model.vertices(ident.expand(exp.shape[0], -1) if ident is not None else None, exp)
            rot = axis_angle_to_matrix(torch.as_tensor(seq.rotation[sl]))
            cam = (verts @ rot.transpose(1, 2) + torch.as_tensor(seq.translation[sl])[:, None]).numpy()
        for c in cam:
            bg = photo_background(texture, gt[i], seq.size) if gt is not None else 0.32
            i += 1
            yield render_textured(model, c, K, seq.size, photo, tex, triangles=tris, background=bg,
                                  shading=shading)


def rotation_error_deg(rot_a: np.ndarray, rot_b: np.ndarray) -> np.ndarray:
    """(N,) geodesic angle (degrees) between camera axis-angle rotations."""
    ra = axis_angle_to_matrix(torch.as_tensor(np.asarray(rot_a, np.float64)))
    rb = axis_angle_to_matrix(torch.as_tensor(np.asarray(rot_b, np.float64)))
    rel = ra.transpose(-1, -2) @ rb
    cos = ((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return np.degrees(torch.arccos(cos).numpy())


def round_trip(spec, n_frames: int, workdir, *, seed: int = 0, fps: int = 25, background: str = "flat",
               shading: float = 0.3, identity: str = "random", size: int = 256,
               arrays: dict | None = None) -> dict:
    """Render a photo-textured sequence with known parameters, track it with the full pipeline
    (an H.264 video through :func:`engine.face.track.track_media`) and compare.

    ``spec``: a :class:`~engine.face.model.FaceModelConfig`. The built-in model is tracked
    as the generic model itself (``builtin_identity="generic"``), so the recovered coefficients
    are in the basis the sequence was rendered with. Poses vary about the texture photo's own
    pose, where the texture is most faithful. Errors are normalised by the inter-ocular
    distance of the ground-truth (model) landmarks of each frame.

    background / shading: see :func:`render_sequence`. identity: "random" (a random identity
    of the model, so the photo is warped onto a different face shape) or "photo" (the
    identity fitted to the texture photo: the render then has the photo's own face shape).
    size: the square frame's side (focal scales with it). ``arrays``: a dict to receive the
    per-frame landmarks ("mediapipe", "fit", "truth" (N, 478, 2)) and the mask "used" (478,)."""
    import time
    from fractions import Fraction
    from pathlib import Path

    from engine.face.landmarks import FACE_OVAL
    from engine.face.track import TrackConfig, track_media
    from engine.io import ReviewMovieWriter

    t0 = time.perf_counter()
    model = spec.load()
    texture = photo_texture(model)
    if identity not in ("random", "photo"):
        raise ValueError(f"identity must be 'random' or 'photo', got {identity!r}")
    seq = synthetic_parameters(model, n_frames, seed=seed, head_offset=texture.head_rotation, fps=fps,
                               size=(size, size), focal=600.0 * size / 256,
                               identity=texture.identity if identity == "photo" and model.n_id else None)
    video = Path(workdir) / f"synthetic_{model.name}.mp4"
    with ReviewMovieWriter(video, Fraction(fps), seq.size, crf=10, overwrite=True) as mov:
        for frame in render_sequence(model, seq, texture, background=background, shading=shading):
            mov.write(frame)
    t_render = time.perf_counter() - t0
    res = track_media(video, Fraction(fps), TrackConfig(builtin_identity="generic"), spec)
    gt = seq.landmarks(model)
    use = (np.asarray(model.landmark_tri) >= 0) & (np.asarray(model.landmark_weight) > 0)
    use[468:] = False
    inner = use.copy()
    inner[list(FACE_OVAL)] = False
    iod = np.linalg.norm(gt[:, 33] - gt[:, 263], axis=-1)
    fit_lm, mp_lm = res.fit.landmarks_2d, res.landmarks.points[..., :2]

    def nme(a: np.ndarray, b: np.ndarray, sel: np.ndarray) -> float:
        return float(np.mean(np.linalg.norm(a[:, sel] - b[:, sel], axis=-1).mean(1) / iod))

    if arrays is not None:
        arrays.update(mediapipe=mp_lm, fit=fit_lm, truth=gt, used=use)
    rot_err = rotation_error_deg(res.fit.rotation, seq.rotation)
    exp_fig = {}
    for name in seq.animated:
        j = model.exp_names.index(name)
        a, b = res.fit.expression[:, j], seq.expression[:, j]
        exp_fig[name] = {"mae": round(float(np.abs(a - b).mean()), 4),
                         "r": round(float(np.corrcoef(a, b)[0, 1]), 4) if a.std() > 0 else None,
                         "true_range": [round(float(b.min()), 3), round(float(b.max()), 3)]}
    out = {
        "model": model.model_id(), "frames": n_frames, "frames_ok": int(res.status_counts()["ok"]),
        "image_size": list(seq.size), "gt_iod_px_mean": round(float(iod.mean()), 2),
        "reprojection_nme": round(nme(fit_lm, mp_lm, use), 5),
        "recovered_landmarks_nme": round(nme(fit_lm, gt, use), 5),
        "recovered_landmarks_nme_without_oval": round(nme(fit_lm, gt, inner), 5),
        "mediapipe_vs_truth_nme": round(nme(mp_lm, gt, use), 5),
        "rotation_error_deg_mean": round(float(rot_err.mean()), 3),
        "rotation_error_deg_max": round(float(rot_err.max()), 3),
        "translation_error_cm_mean": np.round(np.abs(res.fit.translation - seq.translation).mean(0), 3).tolist(),
        "focal_px": [round(float(res.fit.focal), 1), seq.focal],
        "expression": exp_fig,
        "expression_mae_all": round(float(np.abs(res.fit.expression - seq.expression).mean()), 4),
        "identity_rmse": round(float(np.sqrt(((res.fit.identity - seq.identity) ** 2).mean())), 4) if model.n_id else None,
        "render_s": round(t_render, 2), "track_s": round(float(res.header["timings"]["total_s"]), 2),
        "render": {"background": background, "shading": shading, "identity": identity},
        "diagnostics": _error_breakdown(fit_lm, mp_lm, gt, iod, use, inner),
    }
    return out


def _error_breakdown(fit_lm: np.ndarray, mp_lm: np.ndarray, gt: np.ndarray, iod: np.ndarray,
                     use: np.ndarray, inner: np.ndarray) -> dict:
    """Where the recovered-landmark error comes from (all normalised by the per-frame IOD).

    ``*_systematic``: the mean over frames of each landmark's residual (image space), i.e.
    the part that is the same on every frame; ``*_varying``: what is left per frame.
    MediaPipe's error on the renders is split the same way: the fit can average out the
    varying part but not the systematic one."""
    oval = use & ~inner
    out = {}
    for name, a in (("recovered", fit_lm), ("mediapipe", mp_lm)):
        r = (a - gt) / iod[:, None, None]
        bias = np.nanmean(r, 0)
        out[f"{name}_oval_nme"] = round(float(np.linalg.norm(r[:, oval], axis=-1).mean()), 5)
        out[f"{name}_inner_nme"] = round(float(np.linalg.norm(r[:, inner], axis=-1).mean()), 5)
        out[f"{name}_systematic_nme"] = round(float(np.linalg.norm(bias[use], axis=-1).mean()), 5)
        out[f"{name}_varying_nme"] = round(float(np.linalg.norm((r - bias)[:, use], axis=-1).mean()), 5)
        per_frame = np.linalg.norm(r[:, use], axis=-1).mean(1)
        out[f"{name}_per_frame_nme_min_max"] = [round(float(per_frame.min()), 5), round(float(per_frame.max()), 5)]
    return out


def mediapipe_shift_sensitivity(photo: np.ndarray | None = None, shifts: tuple[float, ...] = (0.25, 0.5, 1.0)
                                ) -> dict[str, float]:
    """How far MediaPipe's landmarks move when the *same* photo is shifted by a sub-pixel
    amount (bilinear resampling), after undoing the shift; mean over the 468 mesh points, in
    inter-ocular distances. An equivariant detector would give 0: this is MediaPipe's
    per-image precision floor, which any synthetic round trip inherits."""
    from engine.face.landmarks import LandmarkConfig, LandmarkTracker

    if photo is None:
        photo, ref = astronaut_photo()
    else:
        ref = None
    H, W = photo.shape[:2]
    out = {}
    with LandmarkTracker(LandmarkConfig(static=True, max_faces=1)) as tracker:
        if ref is None:
            r = tracker.process(photo)
            if not r.usable:
                raise MediaError("MediaPipe found no face on the photo")
            ref = r.points[:, :2].astype(np.float64)
        iod = float(np.linalg.norm(ref[33] - ref[263]))
        for d in shifts:
            M = np.float32([[1, 0, d], [0, 1, d / 2]])
            img = cv2.warpAffine(photo, M, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
            r = tracker.process(img)
            if not r.usable:
                continue
            p = r.points[:468, :2] - np.array([d, d / 2])
            out[f"shift_{d}px"] = round(float(np.linalg.norm(p - ref[:468], axis=-1).mean() / iod), 5)
    out["photo_iod_px"] = round(iod, 1)
    return out


def aligned_mean_residual(observed: np.ndarray, reference: np.ndarray, used: np.ndarray) -> np.ndarray:
    """(478, 2) mean over frames of ``observed - reference`` in each frame's eye-aligned,
    inter-ocular-normalised 2-D frame (reference eyes horizontal, IOD = 1): the systematic,
    per-landmark part of a residual, comparable between sequences with different head poses."""
    out = []
    for o, r in zip(np.asarray(observed, np.float64), np.asarray(reference, np.float64)):
        if not (np.isfinite(o[used]).all() and np.isfinite(r[used]).all()):
            continue
        e = r[263] - r[33]
        iod = float(np.linalg.norm(e))
        c, s = e / iod
        out.append((o - r) @ (np.array([[c, s], [-s, c]]) / iod).T)
    if not out:
        return np.full((observed.shape[1], 2), np.nan)
    return np.mean(out, 0)


def photo_pose_check(model: FaceModel, texture: PhotoTexture | None = None) -> dict[str, float]:
    """MediaPipe on a render at the texture photo's *own* camera, pose and expression.

    There the render is the photo itself up to the texture's small warp (the photo fit's
    residual, spread by the thin-plate spline) and resampling; with the photo as background
    and no extra shading it is as close to a real photo as the round trip can get. Figures
    (mean over the 468 mesh points, in inter-ocular distances): ``photo_fit_residual``
    (MediaPipe on the photo vs the fitted model), ``render_vs_truth`` (MediaPipe on the render
    vs the model's landmarks: the round trip's best case) and ``render_vs_photo`` (MediaPipe on
    the render vs on the photo: how much it moves on a nearly identical image)."""
    from engine.face.fit import FitConfig, fit_sequence, project_landmarks
    from engine.face.landmarks import LandmarkConfig, LandmarkTracker

    texture = texture or photo_texture(model)
    photo, lm = texture.photo, np.asarray(texture.photo_landmarks, np.float64)
    size = (photo.shape[1], photo.shape[0])
    fit = fit_sequence(model, lm[None], np.array([True]), size, FitConfig(smooth_iterations=0))
    with torch.inference_mode():
        ident = torch.as_tensor(fit.identity[None]) if model.n_id else None
        verts = model.vertices(ident, torch.as_tensor(fit.expression[:1]))
        rot = axis_angle_to_matrix(torch.as_tensor(fit.rotation[:1]))
        cam = (verts @ rot.transpose(1, 2) + torch.as_tensor(fit.translation[:1])[:, None])[0].numpy()
    K = intrinsics(torch.tensor(float(fit.focal)), float(fit.principal_point[0]),
                   float(fit.principal_point[1])).numpy()
    truth = project_landmarks(model, fit.identity, fit.expression[:1], fit.rotation[:1], fit.translation[:1],
                              fit.focal, fit.principal_point)[0]
    img = render_textured(model, cam, K, size, photo, texture.coords, background=photo.astype(np.float32) / 255,
                          shading=0.0)
    with LandmarkTracker(LandmarkConfig(static=True, max_faces=1)) as tracker:
        r = tracker.process(img)
    if not r.usable:
        raise MediaError("MediaPipe found no face on the photo-pose render")
    seen = r.points[:, :2].astype(np.float64)
    use = (np.asarray(model.landmark_tri) >= 0) & (np.asarray(model.landmark_weight) > 0)
    use[468:] = False
    iod = float(np.linalg.norm(truth[33] - truth[263]))

    def nme(a: np.ndarray, b: np.ndarray) -> float:
        return round(float(np.linalg.norm(a[use] - b[use], axis=-1).mean() / iod), 5)
    return {"photo_fit_residual": nme(lm, truth), "render_vs_truth": nme(seen, truth),
            "render_vs_photo": nme(seen, lm)}
