"""Synthetic round trip: render a face model with known parameters, textured with a real face
photo, track the video with the full pipeline, and recover the parameters.

The figures are printed (``pytest -s``) and written by ``python -m bench.track_synthetic``.
What the assertions encode (measured, see engine/face/synthetic.py for why): MediaPipe finds
the face on every frame and the fit explains its landmarks to ~1 % of the inter-ocular
distance; the recovered model landmarks are *closer to the ground truth than MediaPipe's own
landmarks are* (the fit removes part of the measurement error, it cannot remove MediaPipe's
systematic ~1.5 % deviation from the rendered model); jaw and blinks are recovered with high
correlation (r > 0.85 with ICT) and the head pose within a few degrees. The issue's goal
(recovered landmarks < 1 % of the inter-ocular distance) is NOT met: see the error budget in
bench/results/track_synthetic.json (diagnostics, ablations, mediapipe_shift_sensitivity,
real_plate_calibration_check).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.face.model import FaceModelConfig
from engine.face.synthetic import round_trip


def _report(fig: dict) -> None:
    print(json.dumps(fig, indent=1))


def test_round_trip_builtin_model(tmp_path: Path) -> None:
    fig = round_trip(FaceModelConfig(kind="builtin"), 40, tmp_path)
    _report(fig)
    assert fig["frames_ok"] == 40
    assert fig["reprojection_nme"] < 0.015
    assert fig["recovered_landmarks_nme"] < fig["mediapipe_vs_truth_nme"]
    assert fig["recovered_landmarks_nme"] < 0.02   # measured 0.0136 (40 frames), 0.0149 (60)
    # Why not < 1 %: MediaPipe's error on the renders is mostly the same on every frame
    # (systematic), which no fit of its landmarks can remove (bench/track_synthetic notes).
    d = fig["diagnostics"]
    assert d["mediapipe_systematic_nme"] > d["mediapipe_varying_nme"]
    assert d["recovered_varying_nme"] < d["mediapipe_varying_nme"]  # the fit does average that part
    assert fig["rotation_error_deg_mean"] < 6.0
    assert fig["expression"]["jawOpen"]["r"] > 0.8   # the built-in basis mixes named and PCA shapes


@pytest.mark.slow
def test_round_trip_ict_model(shared_dir: Path, tmp_path: Path) -> None:
    ict = shared_dir / "models" / "ict_facekit" / "ict_face_model_light_basis.npz"
    fig = round_trip(FaceModelConfig(kind="ict", path=str(ict)), 40, tmp_path)
    _report(fig)
    assert fig["frames_ok"] == 40
    assert fig["reprojection_nme"] < 0.015
    assert fig["recovered_landmarks_nme"] < fig["mediapipe_vs_truth_nme"]
    assert fig["recovered_landmarks_nme"] < 0.022   # measured 0.0158-0.0163 (40-60 frames)
    d = fig["diagnostics"]
    assert d["mediapipe_systematic_nme"] > d["mediapipe_varying_nme"]
    assert d["recovered_varying_nme"] < d["mediapipe_varying_nme"]
    assert fig["rotation_error_deg_mean"] < 4.0
    for name in ("jawOpen", "eyeBlinkLeft", "eyeBlinkRight"):
        assert fig["expression"][name]["r"] > 0.85, name
