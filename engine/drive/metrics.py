"""How well a drive carries the driver's performance: transfer statistics and expression error.

:func:`transfer_statistics` compares, on the shot's frames, the driver's facial measures
(sampled at the exact driving positions of the drive) with the actor's measures under the
transferred expressions: mouth opening and eye apertures of the posed-free model-space
landmarks (:func:`engine.drive.geometry.face_measures`), each taken relative to its person's
rest. A faithful identity-independent transfer has correlations near 1 and a gain (least-
squares slope of actor change on driver change) near the ratio of the faces' proportions
(near 1 for mouth opening normalised by the eye width). Named coefficients both models have
(``jawOpen``, ``eyeBlinkLeft`` ...) are correlated directly too.

:func:`expression_error` is the end-to-end check once frames are rendered: re-track the
rendered frames (MediaPipe + the landmark fit, with the actor's identity and camera fixed)
and compare the recovered expressions with the drive's targets: a landmark error in model
space (mm, pose-free, so head-pose errors do not count; also with each sequence's mean shape
removed, the error of the *motion*), the mouth-opening correlation and mean absolute error,
and the coefficient RMSE (only meaningful within one expression basis).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from engine.errors import ConfigError

from .geometry import LandmarkBasis, face_measures

__all__ = ["correlation", "transfer_statistics", "expression_error", "sampled_driver_values"]


def correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation over finite pairs; None when either side does not vary."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return None
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 1e-12 else None


def _slope(x: np.ndarray, y: np.ndarray) -> float | None:
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok] - x[ok].mean(), y[ok] - y[ok].mean()
    den = float((x * x).sum())
    return float((x * y).sum() / den) if den > 1e-12 else None


def sampled_driver_values(values: np.ndarray, valid: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(M, ...) per-driving-frame values -> (N, ...) linearly interpolated at the exact
    positions ((N, 2) numerator, denominator); NaN where a needed driving frame is invalid
    or the position is outside the clip."""
    v = np.asarray(values, np.float64)
    ok = np.asarray(valid, bool)
    m = len(v)
    out = np.full((len(positions),) + v.shape[1:], np.nan)
    for k, (num, den) in enumerate(np.asarray(positions, np.int64)):
        j, rem = divmod(int(num), int(den))
        if j < 0 or j > m - 1 or (j == m - 1 and rem):
            continue
        w = rem / den
        if not ok[j] or (w > 0 and not ok[j + 1]):
            continue
        out[k] = v[j] if w == 0 else (1 - w) * v[j] + w * v[j + 1]
    return out


def transfer_statistics(result, driver, plate_model, driver_model, plate_identity: np.ndarray,
                        driver_identity: np.ndarray) -> dict[str, Any]:
    """Statistics of a video drive (:class:`~engine.drive.transfer.DriveResult`) against its
    driver's tracking (module doc). Frames flagged anything but ``clamped`` are left out."""
    if result.positions is None:
        raise ConfigError("transfer statistics need a video drive (exact driving positions)")
    from .transfer import FLAG_NAMES

    clamp_bit = 1 << FLAG_NAMES.index("clamped")
    keep = (np.asarray(result.flags, np.int64) & ~clamp_bit) == 0
    fit = driver.fit
    d_expr = np.asarray(fit.expression, np.float64)
    d_valid = np.asarray(driver.usable, bool) & np.asarray(fit.fitted, bool) & np.isfinite(d_expr).all(1)
    lb_d = LandmarkBasis.of(driver_model, driver_identity)
    lb_a = LandmarkBasis.of(plate_model, plate_identity)
    md = face_measures(lb_d.points(np.nan_to_num(d_expr)))
    ma = face_measures(lb_a.points(np.nan_to_num(result.params.expression.astype(np.float64))))
    rest_d = np.asarray(result.info.get("rest_driver", np.zeros(driver_model.n_exp)), np.float64)
    rest_a = np.asarray(result.info.get("rest_actor", np.zeros(plate_model.n_exp)), np.float64)
    rd, ra = face_measures(lb_d.points(rest_d[None])), face_measures(lb_a.points(rest_a[None]))
    flags = np.asarray(result.flags, np.int64)
    out: dict[str, Any] = {"frames": int(len(result)), "frames_compared": int(keep.sum()),
                           "flagged_fraction": float(np.mean(flags != 0)),
                           # frames a reviewer must look at (no face / held / interpolated) vs
                           # frames whose expression was limited to the actor's range
                           "flagged_fraction_face_or_time": float(np.mean((flags & ~clamp_bit) != 0)),
                           "clamped_fraction": float(np.mean((flags & clamp_bit) != 0)),
                           "flag_counts": result.flag_counts()}
    for key, label in (("mouth_open", "mouth_open"), ("eye_left", "eye_left"), ("eye_right", "eye_right")):
        ds = sampled_driver_values(md[key], d_valid, result.positions) - float(rd[key][0])
        ac = ma[key] - float(ra[key][0])
        ds, ac = np.where(keep, ds, np.nan), np.where(keep, ac, np.nan)
        out[label] = {"correlation": correlation(ds, ac), "gain": _slope(ds, ac),
                      "driver_range": _range(ds), "actor_range": _range(ac)}
    named = {}
    for name in ("jawOpen", "eyeBlinkLeft", "eyeBlinkRight", "mouthSmile", "browRaise", "eyeLookInLeft",
                 "eyeLookOutLeft", "eyeLookUpLeft", "eyeLookDownLeft"):
        if name in driver_model.exp_names and name in plate_model.exp_names:
            ds = sampled_driver_values(d_expr[:, driver_model.exp_names.index(name)], d_valid, result.positions)
            ac = result.params.expression[:, plate_model.exp_names.index(name)].astype(np.float64)
            c = correlation(np.where(keep, ds, np.nan), np.where(keep, ac, np.nan))
            if c is not None:
                named[name] = c
    out["coefficient_correlation"] = named
    return out


def _range(x: np.ndarray) -> list[float] | None:
    x = x[np.isfinite(x)]
    return [float(np.percentile(x, 5)), float(np.percentile(x, 95))] if x.size else None


def expression_error(render_frames: Sequence[np.ndarray], targets, model, *, identity: np.ndarray | None = None,
                     focal: float | None = None, principal_point: Sequence[float] | None = None,
                     fit_config=None) -> dict[str, Any]:
    """Re-track rendered frames and compare their expressions with the targets (module doc).

    render_frames: RGB frames (uint8, or float display-referred [0, 1]), all one size.
    targets: (N, K) expression coefficients of ``model`` (or a FrameParams, whose
    identity / focal / principal point are then used unless given).
    """
    from engine.face.fit import fit_sequence
    from engine.face.landmarks import track_frames

    frames = [np.asarray(f) for f in render_frames]
    if not frames:
        raise ConfigError("expression_error: no frames")
    if hasattr(targets, "expression"):
        identity = targets.identity if identity is None else identity
        focal = targets.focal if focal is None else focal
        principal_point = targets.principal_point if principal_point is None else principal_point
        targets = targets.expression
    tgt = np.asarray(targets, np.float64)
    if tgt.shape != (len(frames), model.n_exp):
        raise ConfigError(f"expression_error: {len(frames)} frames but targets of shape {tgt.shape} "
                          f"(model has {model.n_exp} coefficients)")
    u8 = [f if f.dtype == np.uint8 else np.clip(np.round(f * 255.0), 0, 255).astype(np.uint8) for f in frames]
    track = track_frames(u8)
    valid = track.usable
    if not valid.any():
        return {"frames": len(frames), "tracked": 0, "landmark_error_mm": None, "landmark_motion_error_mm": None,
                "mouth_open_correlation": None,
                "mouth_open_mae": None, "coefficient_rmse": None}
    fit = fit_sequence(model, track.points, valid, track.image_size, fit_config,
                       identity=None if identity is None or not model.n_id else np.asarray(identity, np.float32),
                       focal=focal, principal_point=None if principal_point is None else tuple(principal_point))
    ok = valid & np.asarray(fit.fitted, bool)
    got = np.asarray(fit.expression, np.float64)
    lb = LandmarkBasis.of(model, fit.identity if identity is None else identity)
    lg, lt = lb.points(np.nan_to_num(got[ok])), lb.points(tgt[ok])
    emb = lb.embedded
    err_mm = 10.0 * np.linalg.norm(lg[:, emb] - lt[:, emb], axis=-1).mean(1)     # model units are cm
    # The same with each sequence's mean shape removed: re-tracking a render has a static bias
    # (the tracker's own view of that face) that says nothing about the performance.
    dyn = (lg[:, emb] - lg[:, emb].mean(0)) - (lt[:, emb] - lt[:, emb].mean(0))
    motion_mm = 10.0 * np.linalg.norm(dyn, axis=-1).mean(1)
    mg, mt = face_measures(lg)["mouth_open"], face_measures(lt)["mouth_open"]
    return {"frames": len(frames), "tracked": int(ok.sum()),
            "landmark_error_mm": float(err_mm.mean()), "landmark_error_mm_p95": float(np.percentile(err_mm, 95)),
            "landmark_motion_error_mm": float(motion_mm.mean()),
            "mouth_open_correlation": correlation(mg, mt), "mouth_open_mae": float(np.abs(mg - mt).mean()),
            "coefficient_rmse": float(np.sqrt(np.mean((got[ok] - tgt[ok]) ** 2)))}
