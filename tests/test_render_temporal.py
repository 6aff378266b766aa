"""Temporal smoothing for compositing: a flickering renderer's added flicker (region and matte
edge, measured against the plate) drops when the matte and low frequencies are filtered."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from engine.io.exr import read_exr
from engine.io.plate import open_plate
from engine.pipeline import ExecutorConfig, run_stages
from engine.render import ocio
from engine.render.composite import MatteConfig
from engine.render.synthetic import SyntheticCropRenderer, synthetic_params, write_synthetic_plate
from engine.render.temporal import (TemporalConfig, flicker_report, smooth_sequence, temporal_flicker,
                                    temporal_weights)
from engine.stages.common import FrameTiming, ShotLayout
from engine.stages.render import NeuralRenderConfig, NeuralRenderStage

W, H, N, FIRST = 160, 120, 16, 1001


def test_weights_and_sequence_filter():
    w = temporal_weights(1.0)
    assert sorted(w) == [-3, -2, -1, 0, 1, 2, 3] and w[0] == 1.0 and w[1] == w[-1]
    assert sorted(temporal_weights(1.0, "causal")) == [-3, -2, -1, 0]
    vals = {f: np.full((2, 2), float(f % 2)) for f in range(10)}   # 0,1,0,1 ...: pure flicker
    out = smooth_sequence(vals, 5, 1.0)
    assert abs(float(out[0, 0]) - 0.5) < 0.12
    # shot edge: the missing side is renormalised away, values stay in range
    assert 0.0 <= float(smooth_sequence(vals, 0, 1.0)[0, 0]) <= 1.0
    # a no-face neighbour counts as 0 (fade), a no-face frame itself stays None
    vals[6] = None
    assert smooth_sequence(vals, 6, 1.0) is None
    ones = {f: (None if f == 6 else np.ones(1)) for f in range(10)}
    assert 0.5 < float(smooth_sequence(ones, 5, 1.0)[0]) < 0.8


def test_flicker_metric():
    rng = np.random.default_rng(0)
    plate = [np.full((8, 8, 3), 0.5, np.float32) for _ in range(6)]
    noisy = [p + rng.normal(0, 0.05, p.shape).astype(np.float32) for p in plate]
    mask = np.ones((8, 8), bool)
    assert temporal_flicker(plate, mask) == 0.0
    assert temporal_flicker(noisy, mask) > 0.02
    rep = flicker_report(plate, noisy, [np.ones((8, 8), np.float32)] * 6)
    assert rep["region"]["excess"] > 0.02 and rep["region"]["residual"] > 0.02


def _render(root, plate, temporal):
    layout = ShotLayout("show", "sq", "sh010", "v001", root / "render", root / "review", root / "qc")
    timing = FrameTiming(Fraction(24), FIRST, FIRST + N - 1, FIRST, None)
    cfg = NeuralRenderConfig(colourspace="sRGB", matte=MatteConfig(segmentation="none"), temporal=temporal,
                             passes=("rgba", "matte"))
    stage = NeuralRenderStage(plate, layout, timing, cfg,
                              renderer=SyntheticCropRenderer(64, mask_jitter=0.06, colour_jitter=0.06, seed=3),
                              params=synthetic_params(range(FIRST, FIRST + N), (W, H), drift=0.02))
    run_stages([stage], ExecutorConfig(kind="debug"))
    frames, mattes = [], []
    for f in range(FIRST, FIRST + N):
        ch, _ = read_exr(layout.frame_path(f))
        lin = np.stack([ch["R"], ch["G"], ch["B"]], -1).astype(np.float32)
        frames.append(ocio.view_transform(lin, "Linear Rec.709", plate_space="sRGB"))
        mattes.append(ch["matte.face"].astype(np.float32))
    return frames, mattes


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("flicker")
    plate = write_synthetic_plate(root / "plate", N, (W, H), kind="png")
    with open_plate(plate, Fraction(24), FIRST) as src:
        plates = [img.astype(np.float32) / 255 for _, img in src.iter(FIRST, FIRST + N - 1)]
    raw = _render(root / "off", plate, TemporalConfig(matte_sigma=0, colour_sigma=0))
    smooth = _render(root / "on", plate, TemporalConfig(matte_sigma=1.5, colour_sigma=1.5))
    return plates, raw, smooth


def test_smoothing_reduces_flicker_in_region_and_edge(runs):
    plates, (r_frames, r_mattes), (s_frames, s_mattes) = runs
    # Measure both on the same pixels: the union of both runs' mattes.
    mattes = [np.maximum(a, b) for a, b in zip(r_mattes, s_mattes)]
    raw = flicker_report(plates, r_frames, mattes)
    smooth = flicker_report(plates, s_frames, mattes)
    for region in ("region", "edge"):
        assert raw[region]["residual"] > 0.004, (region, raw)
        assert smooth[region]["residual"] < 0.6 * raw[region]["residual"], (region, raw, smooth)
        assert smooth[region]["excess"] < raw[region]["excess"], (region, raw, smooth)
    # the matte itself is steadier
    def matte_flicker(ms):
        return float(np.mean([np.abs(ms[t] - ms[t - 1]).mean() for t in range(1, len(ms))]))
    assert matte_flicker(s_mattes) < 0.6 * matte_flicker(r_mattes)


def test_plate_light_changes_pass_through_the_smoothing(tmp_path):
    """A flash in the plate must light the rendered face too: the filter smooths the
    render's difference to the plate, not the picture."""
    import cv2

    folder = tmp_path / "plate"
    folder.mkdir()
    n, flash = 9, 1005
    for f in range(FIRST, FIRST + n):
        img = np.full((H, W, 3), 230 if f == flash else 90, np.uint8)
        img[:, ::7] = 60                                    # some texture for the crop warps
        cv2.imwrite(str(folder / f"plate.{f:04d}.png"), img)
    layout = ShotLayout("show", "sq", "sh010", "v001", tmp_path / "render", tmp_path / "review", tmp_path / "qc")
    cfg = NeuralRenderConfig(colourspace="sRGB", matte=MatteConfig(segmentation="none"), passes=("rgba", "matte"),
                             temporal=TemporalConfig(matte_sigma=1.5, colour_sigma=1.5))
    stage = NeuralRenderStage(folder / "plate.%04d.png", layout, FrameTiming(Fraction(24), FIRST, FIRST + n - 1,
                                                                             FIRST, None), cfg,
                              renderer=SyntheticCropRenderer(64, tint=(1.1, 1.0, 0.9)),
                              params=synthetic_params(range(FIRST, FIRST + n), (W, H), drift=0.0))
    run_stages([stage], ExecutorConfig(kind="debug"))
    ratios = {}
    for f in (flash - 1, flash):
        ch, _ = read_exr(layout.frame_path(f))
        inside = ch["matte.face"] > 0.99
        g = ch["G"].astype(np.float32)[inside]
        plate_g = ocio.plate_to_linear(cv2.imread(str(folder / f"plate.{f:04d}.png"))[:, :, ::-1], "sRGB")[..., 1]
        ratios[f] = float(g.mean() / plate_g[inside].mean())
    assert abs(ratios[flash] - ratios[flash - 1]) < 0.02, ratios
