"""The QC measurements: one streaming pass over plate + render, then the sequence-level checks.

Per frame (streamed, two frames in memory)
    * **fidelity** (self-reenactment, the plate is the ground truth): PSNR and SSIM of the whole
      frame and of the **face crop** (an FFHQ-style square from the plate's landmarks, resampled
      to ``crop_size``), and the ST-LPIPS perceptual distance of the face crop
      (:mod:`engine.neural.metrics`; sampled on at most ``perceptual_max_frames`` frames: a VGG16
      per frame is the one expensive metric on CPU). Gates use the face crop: a paste-back render
      copies the background, so whole-frame figures flatter it.
    * **landmarks**: the render is re-tracked with the same MediaPipe tracker settings as the
      target (the plate, or the drive file's expected landmarks), so a pass-through scores 0.
      LMD (Chen et al. 2018) = mean point distance in plate pixels, over the 468 mesh points
      (``face``) and over the 40 lip points (``mouth``).
    * **expression**: landmark measures of the expression -- inner-lip opening and mouth width
      (inter-ocular units), both eyes' aspect ratios -- compared with the target's (mean
      absolute error; Pearson correlation of the mouth-opening curves).
    * **flicker** of the face crop: mean of max(0, |r_t - r_{t-1}| - |p_t - p_{t-1}|) per pixel,
      the render's frame-to-frame change *beyond* the plate's (both frames warped with frame
      t's crop, so head motion cancels): 0 for a pass-through, noise and popping show up.
    * **identity**: dlib face descriptors of the render and the plate (:mod:`engine.qc.identity`)
      on at most ``identity_max_frames`` frames; similarity = cosine to the plate's mean descriptor.
    * **matte edge** (EXRs with a ``matte.face`` layer): the matte in the face crop, its temporal
      second difference |a_{t+1} - 2 a_t + a_{t-1}| averaged over the edge band (0 < a < 1 in any of
      the three): smooth matte motion cancels, a boiling or popping edge does not.

Sequence checks: the frames without a face, and lip sync against the audio via
:mod:`engine.audio.sync` (mouth opening vs audio energy correlation, AV offset, bilabial
closures at /p b m/ phones).
"""
from __future__ import annotations

import logging
import math
import warnings
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from engine.errors import MediaError
from engine.face import landmarks as mp
from engine.face.crop import crop_affine, face_frame, warp_to_crop
from engine.io import colour
from engine.io.plate import open_plate
from engine.qc.media import AudioTrack, RenderSource, display_of

log = logging.getLogger(__name__)

__all__ = ["MeasureConfig", "Measurements", "measure", "expression_measures", "lip_sync"]

MESH = np.arange(mp.NUM_MESH_VERTICES)
LIPS = np.asarray(sorted(set(mp.LIPS_OUTER) | set(mp.LIPS_INNER)))
EXPRESSION_NAMES = ("mouth_open", "mouth_width", "eye_right", "eye_left")


@dataclass
class MeasureConfig:
    crop_size: int = 256
    ground_truth: bool = True          # the plate is the ground truth (self-reenactment / pass-through)
    perceptual: bool = True
    # The two costly metrics run on evenly spaced samples: ST-LPIPS is two VGG16 passes per frame
    # (~1-4 s on a busy CPU core at 256 px), a dlib descriptor ~0.1-0.3 s per face.
    perceptual_max_frames: int = 24
    identity: bool = True
    identity_max_frames: int = 48
    # p95 - p5 of the render's mouth opening (inter-ocular units) below which AV sync is not
    # measured: a face that does not articulate has no sync to measure. Measured: the demo's
    # still photo (mouth only jitters with tracking noise) 0.024; EDTalk speech 0.162. 0.05 IOD
    # is ~3 mm of lip travel, well below any spoken syllable.
    min_mouth_motion: float = 0.05
    lmd_region: str = "face"           # "face" (468 mesh points) or "mouth" (lips): the gated LMD
    max_lag_frames: int = 10
    bilabial_tol_frames: int = 1
    contact_every: int | None = None   # None: about 12 rows
    thumb: int = 160


@dataclass
class Measurements:
    """Everything measured: per-frame arrays (index = frame - first) and summary numbers."""

    frames: np.ndarray                               # (N,) plate frame numbers
    status: list[str]                                # "ok" | "missing: why"
    per_frame: dict[str, np.ndarray]                 # name -> (N,) float, NaN where not measured
    render_points: np.ndarray                        # (N, 478, 3)
    target_points: np.ndarray                        # (N, 478, 3)
    plate_points: np.ndarray                         # (N, 478, 3)
    render_usable: np.ndarray                        # (N,) bool
    target_usable: np.ndarray                        # (N,) bool
    summary: dict[str, Any] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    lipsync: dict[str, Any] = field(default_factory=dict)
    contact_rows: list[tuple[int, np.ndarray]] = field(default_factory=list)
    image_size: tuple[int, int] = (0, 0)
    has_matte: bool = False


def _nan(n: int) -> np.ndarray:
    return np.full(n, np.nan, np.float64)


def _even(n_total: int, k: int) -> set[int]:
    if k <= 0:
        return set()
    if n_total <= k:
        return set(range(n_total))
    return {int(round(x)) for x in np.linspace(0, n_total - 1, k)}


def _t(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img, np.float32)).permute(2, 0, 1)[None]


def _psnr(x: np.ndarray, y: np.ndarray) -> float:
    """PSNR (dB) of images in [0, 1]; identical images give 120 dB (MSE floored at 1e-12, as
    :func:`engine.neural.metrics.psnr`), so a pass-through stays finite in plots and JSON."""
    mse = float(np.mean((x.astype(np.float32) - y.astype(np.float32)) ** 2, dtype=np.float64))
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def _ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004) of two (H, W, 3) images in [0, 1]: scikit-image's, with the
    settings :func:`engine.neural.metrics.ssim` documents it matches (11-tap Gaussian, sigma 1.5,
    population covariance, channel mean, border discarded). Used here because its separable
    scipy filter is ~100x faster on CPU than the float64 grouped convolutions there."""
    from skimage.metrics import structural_similarity
    return float(structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                       data_range=1.0, channel_axis=2))


def expression_measures(points: np.ndarray) -> np.ndarray:
    """(N, 478, 2+) -> (N, 4): mouth opening and width (inter-ocular units), eye aspect ratios."""
    iod = np.maximum(mp.interocular_distance(points), 1e-9)
    width = np.linalg.norm(np.asarray(points, np.float64)[..., mp.MOUTH_CORNERS[0], :2]
                           - np.asarray(points, np.float64)[..., mp.MOUTH_CORNERS[1], :2], axis=-1) / iod
    return np.stack([mp.mouth_opening(points), width, mp.eye_aperture(points, "right"),
                     mp.eye_aperture(points, "left")], -1)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    x, y = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    den = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else float("nan")


class _Perceptual:
    """ST-LPIPS on face crops, batched (the metric is built once, 59 MB of weights)."""

    def __init__(self) -> None:
        from engine.neural.metrics import perceptual_distance
        from engine.neural.perceptual import STLPIPS
        self.metric = STLPIPS()
        self.fn = perceptual_distance
        self.pending: list[tuple[int, np.ndarray, np.ndarray]] = []

    def add(self, i: int, pc: np.ndarray, rc: np.ndarray, out: np.ndarray) -> None:
        self.pending.append((i, pc, rc))
        if len(self.pending) >= 8:
            self.flush(out)

    def flush(self, out: np.ndarray) -> None:
        if not self.pending:
            return
        x = torch.cat([_t(rc) for _, _, rc in self.pending])
        y = torch.cat([_t(pc) for _, pc, _ in self.pending])
        d = self.fn(x, y, metric=self.metric).numpy()
        for (i, _, _), v in zip(self.pending, d):
            out[i] = float(v)
        self.pending.clear()


def measure(render: RenderSource, plate_path: Path, fps: Fraction, first: int, last: int, *,
            plate_start_frame: int = 1001, plate_colourspace: str = "Rec.709",
            target_points: np.ndarray | None = None, target_source: str = "plate",
            audio: AudioTrack | None = None, plate_audio: AudioTrack | None = None,
            config: MeasureConfig | None = None,
            progress: Callable[[int, int], None] | None = None) -> Measurements:
    """Measure ``render`` against the plate over frames ``first..last`` (see the module doc).

    ``target_points`` (N, 478, 3): the landmarks the render should have (from a drive file);
    None: the plate's own landmarks (self-reenactment / a pass-through)."""

    cfg = config or MeasureConfig()
    n = last - first + 1
    frames = np.arange(first, last + 1)
    pf = {k: _nan(n) for k in ("psnr_full", "psnr_face", "ssim_face", "lpips_face", "flicker",
                               "identity", "identity_plate", "matte_edge")}
    r_pts = np.full((n, mp.NUM_LANDMARKS, 3), np.nan, np.float32)
    p_pts = np.full((n, mp.NUM_LANDMARKS, 3), np.nan, np.float32)
    r_status = np.full(n, mp.STATUS_NO_FACE, np.uint8)
    p_status = np.full(n, mp.STATUS_NO_FACE, np.uint8)
    status: list[str] = []
    unavailable: dict[str, str] = {}
    every = cfg.contact_every or max(1, math.ceil(n / 12))
    contact: list[tuple[int, np.ndarray]] = []

    perc = None
    perc_idx = _even(n, cfg.perceptual_max_frames) if (cfg.perceptual and cfg.ground_truth) else set()
    if perc_idx:
        try:
            perc = _Perceptual()
        except MediaError as exc:
            unavailable["lpips"] = str(exc)
            perc_idx = set()
    embedder = None
    id_idx = _even(n, cfg.identity_max_frames) if cfg.identity else set()
    if id_idx:
        try:
            from engine.qc.identity import FaceEmbedder
            embedder = FaceEmbedder()
        except MediaError as exc:
            unavailable["identity"] = str(exc)
            id_idx = set()
    if not cfg.identity:
        unavailable["identity"] = "identity check disabled (--no-identity)"
    r_emb: dict[int, np.ndarray] = {}
    p_emb: dict[int, np.ndarray] = {}

    affine = None
    prev: tuple[np.ndarray, np.ndarray] | None = None     # (plate, render) display frames of t-1
    mattes: deque = deque(maxlen=3)                       # (index, matte full-res)
    has_matte = False
    size = (0, 0)
    S = cfg.crop_size
    lm_cfg = mp.LandmarkConfig()
    with open_plate(plate_path, fps, plate_start_frame) as plate, \
            mp.LandmarkTracker(lm_cfg) as p_tracker, mp.LandmarkTracker(lm_cfg) as r_tracker:
        for i, ((f, pimg), rf) in enumerate(zip(plate.iter(first, last), render.iter(first, last))):
            p = display_of(pimg, plate_colourspace, plate_colourspace)
            p_u8 = colour.to_uint8(p)
            size = (p.shape[1], p.shape[0])
            pl = p_tracker.process(p_u8)
            p_pts[i], p_status[i] = pl.points, pl.status
            if pl.usable:
                c, ext, ang = face_frame(pl.points[None])
                # FFHQ framing (2 face extents), upright: the crop the renderer itself sees.
                affine = crop_affine(c[0], 2.0 * ext[0], 0.0, S)
            if rf.rgb is None:
                status.append(f"missing: {rf.error}")
                prev = None
                mattes.clear()
                if progress:
                    progress(i + 1, n)
                continue
            r = rf.rgb
            if r.shape[:2] != p.shape[:2]:
                raise MediaError(f"render frame {f} is {r.shape[1]}x{r.shape[0]}, the plate "
                                 f"{p.shape[1]}x{p.shape[0]}: QC compares them pixel for pixel")
            status.append("ok")
            r_u8 = colour.to_uint8(r)
            rl = r_tracker.process(r_u8)
            r_pts[i], r_status[i] = rl.points, rl.status
            if cfg.ground_truth:
                pf["psnr_full"][i] = _psnr(r, p)
            if affine is not None:
                pc, rc = warp_to_crop(p, affine, S), warp_to_crop(r, affine, S)
                if cfg.ground_truth:
                    pf["psnr_face"][i] = _psnr(rc, pc)
                    pf["ssim_face"][i] = _ssim(rc, pc)
                    if perc is not None and i in perc_idx:
                        perc.add(i, pc, rc, pf["lpips_face"])
                if prev is not None:
                    dp = np.abs(pc - warp_to_crop(prev[0], affine, S))
                    dr = np.abs(rc - warp_to_crop(prev[1], affine, S))
                    pf["flicker"][i] = float(np.maximum(dr - dp, 0.0).mean())
            if rf.matte is not None:
                has_matte = True
                mattes.append((i, rf.matte, affine))
                if len(mattes) == 3 and mattes[0][0] == i - 2 and mattes[1][2] is not None:
                    a_mid = mattes[1][2]
                    m3 = [warp_to_crop(m, a_mid, S, border="constant") for _, m, _ in mattes]
                    band = np.zeros((S, S), bool)
                    for m in m3:
                        band |= (m > 0.02) & (m < 0.98)
                    if band.any():
                        pf["matte_edge"][i - 1] = float(np.abs(m3[2] - 2 * m3[1] + m3[0])[band].mean())
            if embedder is not None and i in id_idx:
                if rl.usable:
                    e = embedder.embed(r_u8, rl.points)
                    if e is not None:
                        r_emb[i] = e
                if pl.usable:
                    e = embedder.embed(p_u8, pl.points)
                    if e is not None:
                        p_emb[i] = e
            if (f - first) % every == 0:
                contact.append((f, np.concatenate([p_u8, r_u8], 1)))
            prev = (p, r)
            if progress:
                progress(i + 1, n)
    if perc is not None:
        perc.flush(pf["lpips_face"])
    if len(status) != n:
        raise MediaError(f"plate ended after {len(status)} of {n} frames")

    present = np.array([s == "ok" for s in status])
    r_usable = np.isin(r_status, mp.USABLE_STATUSES) & present
    p_usable = np.isin(p_status, mp.USABLE_STATUSES)
    if target_points is None:
        t_pts, t_usable = p_pts, p_usable
    else:
        t_pts = np.asarray(target_points, np.float32)
        if t_pts.shape != p_pts.shape:
            raise MediaError(f"drive targets have shape {t_pts.shape}, expected {p_pts.shape}")
        t_usable = np.isfinite(t_pts[:, :, :2]).all((1, 2))
    _score_landmarks(pf, r_pts, r_usable, t_pts, t_usable)

    if r_emb and p_emb:
        ref = np.mean([e / np.linalg.norm(e) for e in p_emb.values()], 0)
        ref /= np.linalg.norm(ref)
        for i, e in r_emb.items():
            pf["identity"][i] = float(e @ ref / np.linalg.norm(e))
        for i, e in p_emb.items():
            pf["identity_plate"][i] = float(e @ ref / np.linalg.norm(e))
    elif embedder is not None:
        unavailable["identity"] = "no face found in the " + ("plate" if not p_emb else "render")

    m = Measurements(frames=frames, status=status, per_frame=pf, render_points=r_pts, target_points=t_pts,
                     plate_points=p_pts, render_usable=r_usable, target_usable=t_usable,
                     unavailable=unavailable, contact_rows=contact, image_size=size, has_matte=has_matte)
    _summarise(m, cfg, target_source)
    if audio is not None:
        m.lipsync = lip_sync(pf["render_mouth_open"], audio, fps, first, n, cfg, m.unavailable)
        if m.lipsync.get("av_offset_frames") is not None:
            raw = m.lipsync["av_offset_frames"]
            m.summary["av_offset_raw_frames"] = raw
            m.summary["av_offset_frames"] = raw
            m.summary["av_correlation"] = m.lipsync["correlation_at_offset"]
            m.summary["av_offset_p_value"] = m.lipsync.get("av_p_value")
            if plate_audio is not None:
                base = plate_av_baseline(pf["target_mouth_open"] if target_points is None
                                         else np.where(p_usable, expression_measures(p_pts)[:, 0], np.nan),
                                         plate_audio, fps, first, n, cfg)
                m.lipsync["plate_baseline"] = base
                if base.get("frames") is not None:
                    # The estimator's bias for this actor and recording (visible articulation leads
                    # the acoustic energy by a few frames), measured on the plate with its own
                    # production audio, taken as in sync: what is gated is the render's offset
                    # beyond the plate's.
                    m.summary["av_offset_plate_frames"] = base["frames"]
                    m.summary["av_offset_frames"] = raw - base["frames"]
                else:
                    m.lipsync["note_baseline"] = base.get("reason", "")
        if m.lipsync.get("correlation_lag0") is not None:
            m.summary["mouth_energy_correlation"] = m.lipsync["correlation_lag0"]
        if m.lipsync.get("closure_offset") and np.isfinite(m.lipsync["closure_offset"]["frames"]):
            m.summary["av_offset_closure_frames"] = m.lipsync["closure_offset"]["frames"]
        if m.lipsync.get("bilabial_hit_rate") is not None:
            m.summary["bilabial_hit_rate"] = m.lipsync["bilabial_hit_rate"]
    else:
        m.unavailable["av_offset_frames"] = "no audio for this shot"
    return m


def _score_landmarks(pf: dict[str, np.ndarray], r_pts: np.ndarray, r_usable: np.ndarray, t_pts: np.ndarray,
                     t_usable: np.ndarray) -> None:
    both = r_usable & t_usable
    d = np.linalg.norm(r_pts[..., :2].astype(np.float64) - t_pts[..., :2].astype(np.float64), axis=-1)
    # Target landmarks the face model cannot move may be NaN: average over the finite ones.
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)    # all-NaN rows (no face) -> NaN
        pf["lmd_face"] = np.where(both, np.nanmean(d[:, MESH], 1), np.nan)
        pf["lmd_mouth"] = np.where(both, np.nanmean(d[:, LIPS], 1), np.nan)
    em_r, em_t = expression_measures(r_pts), expression_measures(t_pts)
    pf["expression_error"] = np.where(both, np.abs(em_r - em_t).mean(1), np.nan)
    for k, name in enumerate(EXPRESSION_NAMES):
        pf[f"render_{name}"] = np.where(r_usable, em_r[:, k], np.nan)
        pf[f"target_{name}"] = np.where(t_usable, em_t[:, k], np.nan)


def rescore_targets(m: Measurements, target_points: np.ndarray, target_source: str, cfg: MeasureConfig) -> None:
    """Score the landmarks against other targets (a drive file's) without re-reading frames."""
    t = np.asarray(target_points, np.float32)
    if t.shape != m.render_points.shape:
        raise MediaError(f"drive targets have shape {t.shape}, expected {m.render_points.shape}")
    m.target_points = t
    m.target_usable = np.isfinite(t[:, :, :2]).any(2).any(1)
    _score_landmarks(m.per_frame, m.render_points, m.render_usable, t, m.target_usable)
    keep = {k: m.summary[k] for k in m.summary if k.startswith(("av_", "bilabial", "mouth_energy"))}
    _summarise(m, cfg, target_source)
    m.summary.update(keep)


def _mean(x: np.ndarray) -> float | None:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else None


def _summarise(m: Measurements, cfg: MeasureConfig, target_source: str) -> None:
    pf, n = m.per_frame, len(m.frames)
    present = np.array([s == "ok" for s in m.status])
    s: dict[str, Any] = {"frames": n, "frames_missing": int((~present).sum()),
                         "missing_frames": [int(f) for f, ok in zip(m.frames, present) if not ok]}
    no_face = present & ~m.render_usable
    s["no_face_frames"] = [int(f) for f in m.frames[no_face]]
    s["no_face_fraction"] = float(no_face.sum() / max(int(present.sum()), 1))
    s["plate_no_face_frames"] = [int(f) for f in m.frames[~np.isfinite(m.plate_points[:, 0, 0])]]
    if cfg.ground_truth:
        s["psnr_full_db"] = _mean(pf["psnr_full"])
        s["psnr_db"] = _mean(pf["psnr_face"])
        s["ssim"] = _mean(pf["ssim_face"])
        s["lpips"] = _mean(pf["lpips_face"])
        s["lpips_frames"] = int(np.isfinite(pf["lpips_face"]).sum())
        if s["psnr_db"] is None:
            m.unavailable.setdefault("psnr_db", "no face crop (no face in the plate)")
            m.unavailable.setdefault("ssim", "no face crop (no face in the plate)")
    else:
        for k in ("psnr_db", "ssim", "lpips"):
            m.unavailable[k] = "no ground truth (the drive changes the performance)"
    s["flicker"] = _mean(pf["flicker"])
    s["lmd_face_px"] = _mean(pf["lmd_face"])
    s["lmd_mouth_px"] = _mean(pf["lmd_mouth"])
    s["lmd_px"] = s["lmd_mouth_px"] if cfg.lmd_region == "mouth" else s["lmd_face_px"]
    s["lmd_region"] = cfg.lmd_region
    s["lmd_target"] = target_source
    s["expression_error"] = _mean(pf["expression_error"])
    s["mouth_open_correlation"] = _pearson(pf["render_mouth_open"], pf["target_mouth_open"])
    if s["lmd_px"] is None:
        m.unavailable["lmd_px"] = "no frame with a face in both the render and the target"
    s["identity"] = _mean(pf["identity"])
    s["identity_plate_baseline"] = _mean(pf["identity_plate"])
    s["identity_frames"] = int(np.isfinite(pf["identity"]).sum())
    s["matte_edge"] = _mean(pf["matte_edge"]) if m.has_matte else None
    if not m.has_matte:
        m.unavailable["matte_edge"] = "no matte.face layer in the render"
    m.summary = s


def lip_sync(mouth_open: np.ndarray, audio: AudioTrack, fps: Fraction, first: int, n: int,
             cfg: MeasureConfig, unavailable: dict[str, str]) -> dict[str, Any]:
    """Mouth opening of the render against the audio, with :mod:`engine.audio.sync`: the AV
    offset from the cross-correlation of mouth opening and 1-3 kHz band energy
    (``av_offset_from_audio``, the gated figure), the correlation at lag 0, and, from
    pocketsphinx's phone alignment, the bilabial closure hits and the closure-based offset
    (a second opinion without the anticipatory bias of energy correlation)."""
    try:
        from engine.audio import sync
    except ImportError as exc:
        unavailable["av_offset_frames"] = f"lip-sync analysis unavailable ({exc})"
        return {}
    samples, sr = audio.segment(first, n, fps)
    out: dict[str, Any] = {"audio": str(audio.path), "sample_rate": sr}
    valid = np.isfinite(mouth_open)
    if valid.sum() < 2 * cfg.max_lag_frames + 3:
        unavailable["av_offset_frames"] = f"only {int(valid.sum())} frames with a mouth to compare with the audio"
        return out
    mv = mouth_open[valid]
    motion = float(np.percentile(mv, 95) - np.percentile(mv, 5))
    out["mouth_motion"] = motion
    if motion < cfg.min_mouth_motion:
        unavailable["av_offset_frames"] = (f"the render's mouth hardly moves (opening range {motion:.3f} < "
                                           f"{cfg.min_mouth_motion} inter-ocular): sync cannot be measured")
        unavailable["bilabial_hit_rate"] = unavailable["av_offset_frames"]
        return out
    energy = np.asarray(sync.audio_energy(samples, sr, fps, n, 0, band_hz=sync.SYNC_BAND_HZ), np.float64)
    if float(np.max(energy)) <= sync.ENERGY_FLOOR_DB + 1e-6 or float(np.std(energy)) == 0.0:
        unavailable["av_offset_frames"] = "the audio is silent over the shot"
        return out
    out["energy_db"] = energy.tolist()
    out["mouth_open"] = [None if not np.isfinite(v) else float(v) for v in mouth_open]
    # the same band energy av_offset_from_audio would compute again
    av = sync.estimate_av_offset(mouth_open, energy, fps, cfg.max_lag_frames)
    # How much to trust the peak (reported, not gated): its p-value against circularly shifted
    # mouth tracks (the same signals with the pairing broken).
    out["av_p_value"] = sync.offset_p_value(mouth_open, energy, cfg.max_lag_frames)
    # the estimator's own (detrended) correlation at lag 0, comparable with the one at the peak
    out["correlation_lag0"] = float(av.curve[cfg.max_lag_frames]) if np.isfinite(av.curve[cfg.max_lag_frames]) else None
    out["av"] = av.to_dict()
    if np.isfinite(av.frames):
        out["av_offset_frames"] = float(av.frames)
        out["correlation_at_offset"] = float(av.correlation)
        if av.at_edge:
            out["note"] = f"the correlation peak is at the edge of +-{cfg.max_lag_frames} frames: the offset may be larger"
    else:
        unavailable["av_offset_frames"] = "mouth and audio do not correlate at any lag (too few frames or no motion)"
    try:
        phones = sync.phone_alignment(samples, sr)
    except Exception as exc:  # noqa: BLE001 -- an aligner failure only loses the bilabial check
        unavailable["bilabial_hit_rate"] = f"phone alignment failed: {type(exc).__name__}: {exc}"
        return out
    out["phones"] = [{"label": p.label, "start_s": round(float(p.start_s), 3), "end_s": round(float(p.end_s), 3)}
                     for p in phones]
    rep = sync.bilabial_hits(phones, mouth_open, fps, tol_frames=cfg.bilabial_tol_frames)
    out["bilabial"] = rep.to_dict()
    out["bilabial_hit_rate"] = float(rep.hit_rate) if np.isfinite(rep.hit_rate) else None
    out["bilabial_events"] = [_event_json(e) for e in rep.events]
    if out["bilabial_hit_rate"] is None:
        unavailable["bilabial_hit_rate"] = "no p/b/m phone with a visible mouth"
    closure = sync.estimate_closure_offset(phones, mouth_open, fps, cfg.max_lag_frames)
    out["closure_offset"] = closure.to_dict()
    return out


def plate_av_baseline(plate_mouth: np.ndarray, plate_audio: AudioTrack, fps: Fraction, first: int, n: int,
                      cfg: MeasureConfig) -> dict[str, Any]:
    """The same AV-offset estimate for the plate's own mouth against its production audio."""
    from engine.audio import sync
    samples, sr = plate_audio.segment(first, n, fps)
    valid = np.isfinite(plate_mouth)
    if valid.sum() < 2 * cfg.max_lag_frames + 3:
        return {"frames": None, "reason": "too few plate frames with a mouth"}
    av = sync.av_offset_from_audio(samples, sr, fps, plate_mouth, 0, cfg.max_lag_frames)
    if not np.isfinite(av.frames):
        return {"frames": None, "reason": "the plate's mouth and audio do not correlate"}
    return {"frames": float(av.frames), "correlation": float(av.correlation), "audio": str(plate_audio.path)}


def _event_json(event: Any) -> dict[str, Any]:
    from dataclasses import asdict
    d = asdict(event)
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}
