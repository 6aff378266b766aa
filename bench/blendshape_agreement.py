"""Benchmark: do the fitted ICT expression coefficients agree with Google's blendshape scores?

An independent check of expression fitting. For each driving video in ../shared/media/driving:

* our tracker (:func:`engine.face.track.track_media`, ICT face model) gives per-frame ICT
  expression coefficients (ARKit-style names, see ``engine.face.model_ict``);
* MediaPipe's Face Landmarker v2 (``face_landmarker_v2_with_blendshapes.task``, MediaPipe Tasks
  API, VIDEO running mode) gives its 52 ARKit blendshape scores on the same frames; it is a
  separately trained network predicting blendshapes directly, so agreement is evidence that
  the fitted coefficients mean what their names say.

Figures: Pearson r per shared blendshape name over all frames of all videos where both have a
face (ICT's ``browInnerUpLeft/Right`` and ``cheekPuffLeft/Right`` are averaged to meet ARKit's
single ``browInnerUp`` / ``cheekPuff``), per video for jawOpen and the blinks, and the minimum
over jawOpen, eyeBlinkLeft, eyeBlinkRight (goal: >= 0.7). Names whose MediaPipe score barely
moves in this footage (std < 0.02) are marked: their r measures noise, not agreement.

Left/right conventions are checked, not assumed: the blink asymmetry (``eyeBlinkLeft -
eyeBlinkRight``) of each set is correlated with the eye-aspect-ratio asymmetry of the subject's
left and right eyes measured on MediaPipe's landmarks (:func:`engine.face.landmarks.eye_aperture`,
named by the subject's sides; winks and one-sided squints carry the signal, bilateral blinks
cancel). A set whose ``...Left`` follows the subject's right eye is mirrored, and pairs are
formed accordingly (ICT Left with MediaPipe Right when exactly one of them is mirrored).

Run: ``python -m bench.blendshape_agreement [--videos a.mp4,b.mp4] [--max-frames 0]``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from engine.benchmark import BenchResult, peak_rss_mib

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DRIVING = SHARED / "media" / "driving"
ICT = SHARED / "models" / "ict_facekit" / "ict_face_model_light_basis.npz"
TASK = SHARED / "models" / "mediapipe" / "face_landmarker_v2_with_blendshapes.task"
# Footage with varied expressions, blinks and speech (see shared/MEDIA.md).
DEFAULT_VIDEOS = ("LivePortrait__d3.mp4", "LivePortrait__d6.mp4", "LivePortrait__d9.mp4", "LivePortrait__d10.mp4",
                  "LivePortrait__d18.mp4", "LivePortrait__d19.mp4", "EDTalk__expression_source.mp4",
                  "EDTalk__mouth_source.mp4")
KEY = ("jawOpen", "eyeBlinkLeft", "eyeBlinkRight")
AVERAGED = {"browInnerUp": ("browInnerUpLeft", "browInnerUpRight"), "cheekPuff": ("cheekPuffLeft", "cheekPuffRight")}
LOW_VARIATION = 0.02


def mediapipe_blendshapes(video: Path, n_max: int | None = None) -> tuple[list[str], np.ndarray]:
    """(names, scores (N, 52), NaN where no face) from the Tasks API."""
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    from engine.face.track import open_media

    opts = vision.FaceLandmarkerOptions(base_options=BaseOptions(model_asset_path=str(TASK)),
                                        running_mode=vision.RunningMode.VIDEO, output_face_blendshapes=True,
                                        num_faces=1)
    source, fps, _ = open_media(video, None, 0)
    names: list[str] = []
    scores = []
    with source, vision.FaceLandmarker.create_from_options(opts) as lmk:
        numbers = source.frame_numbers
        last = numbers.stop - 1 if not n_max else min(numbers.stop - 1, numbers.start + n_max - 1)
        for number, rgb in source.iter(numbers.start, last):
            ts = int(round(1000 * (number - numbers.start) / float(fps)))
            res = lmk.detect_for_video(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb)), ts)
            if res.face_blendshapes:
                cats = res.face_blendshapes[0]
                if not names:
                    names = [c.category_name for c in cats]
                scores.append([c.score for c in cats])
            else:
                scores.append(None)
    k = len(names)
    return names, np.array([row if row is not None else [np.nan] * k for row in scores], np.float64)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.blendshape_agreement", description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", default=",".join(DEFAULT_VIDEOS), help="comma-separated names in media/driving")
    ap.add_argument("--max-frames", type=int, default=0, help="frames per video (0: all)")
    args = ap.parse_args(argv)
    for need in (DRIVING, ICT, TASK):
        if not need.exists():
            print(f"missing {need}: this benchmark needs ../shared", file=sys.stderr)
            return 2
    import torch

    from engine.face import landmarks as lm
    from engine.face.model import FaceModelConfig
    from engine.face.track import TrackConfig, track_media

    torch.set_num_threads(1)
    spec = FaceModelConfig(kind="ict", path=str(ICT))
    videos = [DRIVING / v.strip() for v in args.videos.split(",") if v.strip()]
    pooled_ict: list[np.ndarray] = []
    pooled_mp: list[np.ndarray] = []
    pooled_eye: list[np.ndarray] = []
    per_video: dict = {}
    ict_names: tuple[str, ...] = ()
    mp_names: list[str] = []
    t_start = time.perf_counter()
    for video in videos:
        t0 = time.perf_counter()
        n_max = args.max_frames or None
        res = track_media(video, None, TrackConfig(), spec, start_frame=0,
                          frames=None if n_max is None else (0, n_max - 1))
        names, scores = mediapipe_blendshapes(video, n_max)
        n = min(len(res), len(scores))
        ok = res.usable[:n] & np.isfinite(scores[:n]).all(1)
        ict_names = res.exp_names
        mp_names = names
        exp = np.where(ok[:, None], res.fit.expression[:n], np.nan)
        sc = np.where(ok[:, None], scores[:n], np.nan)
        pts = res.landmarks.points[:n]
        eyes = np.stack([lm.eye_aperture(pts, "left"), lm.eye_aperture(pts, "right")], 1)  # subject's sides
        eyes = np.where(ok[:, None], eyes, np.nan)
        pooled_ict.append(exp)
        pooled_mp.append(sc)
        pooled_eye.append(eyes)
        per_video[video.name] = {"frames": int(n), "both_have_face": int(ok.sum()),
                                 "nme_mean": res.header["summary"].get("nme_mean"),
                                 "wall_s": round(time.perf_counter() - t0, 2)}
        print(f"{video.name}: {per_video[video.name]}", flush=True)
    E = np.concatenate(pooled_ict)
    S = np.concatenate(pooled_mp)
    EYE = np.concatenate(pooled_eye)
    ii = {n: i for i, n in enumerate(ict_names)}
    mi = {n: i for i, n in enumerate(mp_names)}

    # ---- left/right conventions, from the data ------------------------------------------------
    def side_of(left: np.ndarray, right: np.ndarray) -> dict:
        # Most blinks use both eyes, so each side's blink correlates with both apertures; the
        # asymmetric part (winks, one-sided squints) decides: (blink L - blink R) must fall
        # when (aperture of the subject's left - right) rises, if "Left" is the subject's left.
        r_left, r_right = pearson(left, EYE[:, 0]), pearson(left, EYE[:, 1])
        r_asym = pearson(left - right, EYE[:, 0] - EYE[:, 1])
        return {"r_with_subject_left_eye_aperture": round(r_left, 3), "r_with_subject_right_eye_aperture": round(r_right, 3),
                "r_asymmetry": round(r_asym, 3), "follows": "subject_left" if r_asym < 0 else "subject_right"}

    conv = {"mediapipe_eyeBlinkLeft": side_of(S[:, mi["eyeBlinkLeft"]], S[:, mi["eyeBlinkRight"]]),
            "ict_eyeBlinkLeft": side_of(E[:, ii["eyeBlinkLeft"]], E[:, ii["eyeBlinkRight"]])}
    mp_mirrored = conv["mediapipe_eyeBlinkLeft"]["follows"] != "subject_left"
    ict_mirrored = conv["ict_eyeBlinkLeft"]["follows"] != "subject_left"
    swap = mp_mirrored != ict_mirrored
    conv.update(mediapipe_mirrored=mp_mirrored, ict_mirrored=ict_mirrored, pairs_swapped_left_right=swap)

    def ict_for(arkit: str) -> tuple[str, ...] | None:
        name = arkit
        if swap:
            name = arkit.replace("Left", "\0").replace("Right", "Left").replace("\0", "Right")
        if name in ii:
            return (name,)
        if arkit in AVERAGED and all(n in ii for n in AVERAGED[arkit]):
            return AVERAGED[arkit]
        return None

    per_name: dict = {}
    for name in mp_names:
        if name.startswith("_"):
            continue
        src = ict_for(name)
        if src is None:
            continue
        ict_sig = np.mean([E[:, ii[s]] for s in src], 0)
        mp_sig = S[:, mi[name]]
        per_name[name] = {"r": round(pearson(ict_sig, mp_sig), 4), "ict": "+".join(src),
                          "mp_std": round(float(np.nanstd(mp_sig)), 4), "ict_std": round(float(np.nanstd(ict_sig)), 4),
                          "low_variation": bool(np.nanstd(mp_sig) < LOW_VARIATION)}
    # per video, the key names
    a = 0
    for video in videos:
        n = per_video[video.name]["frames"]
        sl = slice(a, a + n)
        a += n
        for key in KEY:
            src = ict_for(key)
            per_video[video.name][f"r_{key}"] = round(pearson(E[sl, ii[src[0]]], S[sl, mi[key]]), 4)
    key_r = {k: per_name[k]["r"] for k in KEY}
    varied = [v["r"] for v in per_name.values() if not v["low_variation"] and np.isfinite(v["r"])]
    figures = {
        "videos": [v.name for v in videos], "frames": int(len(E)),
        "frames_both_have_face": int((np.isfinite(E).all(1) & np.isfinite(S).all(1)).sum()),
        "shared_names": len(per_name), "per_name": per_name, "key_r": key_r,
        "key_min_r": round(min(key_r.values()), 4), "goal_key_min_r_ge_0.7": bool(min(key_r.values()) >= 0.7),
        "mean_r_names_with_variation": round(float(np.mean(varied)), 4) if varied else None,
        "names_with_variation": len(varied), "conventions": conv, "per_video": per_video,
        "wall_s": round(time.perf_counter() - t_start, 1), "load_avg_1min": round(os.getloadavg()[0], 2),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    notes = ["r: Pearson correlation over all frames of all listed videos where both trackers have a face.",
             "ICT coefficients: TrackConfig defaults (batch fit with identity per video, Savitzky-Golay output filter).",
             "ICT browInnerUp/cheekPuff: the mean of its Left/Right shapes (ARKit has one of each)."]
    print({k: v for k, v in figures.items() if k != "per_name"}, flush=True)
    for name, v in sorted(per_name.items(), key=lambda kv: -np.nan_to_num(kv[1]["r"], nan=-2)):
        print(f"  {name:20s} r={v['r']:+.3f}  mp_std={v['mp_std']:.3f}{'  (low variation)' if v['low_variation'] else ''}")
    out = BenchResult("blendshape_agreement", figures=figures, notes=notes).write()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
