"""Review movie of the final render: frame count, fps, audio duration, audio/picture offset 0
(a flash in the render and a click in the dub, measured on the movie), a dub offset, side by
side, OCIO view transform."""
from __future__ import annotations

from fractions import Fraction

import cv2
import numpy as np
import pytest

from engine.io.audio import extract_audio, frame_for_sample, samples_for_frames, write_wav
from engine.io.ffmpeg import probe
from engine.io.video import VideoSource
from engine.pipeline import ExecutorConfig, run_stages
from engine.render.composite import MatteConfig
from engine.render.synthetic import SyntheticCropRenderer, synthetic_params
from engine.stages.common import FrameTiming, ShotLayout
from engine.stages.render import NeuralRenderConfig, NeuralRenderStage
from engine.stages.review import ReviewConfig, ReviewStage

FPS = Fraction(24000, 1001)
SR = 48000
W, H = 96, 72
FIRST, N = 1001, 24
FLASH = 1013          # frame number of the white flash / the click


def _plate(folder):
    folder.mkdir(parents=True)
    for f in range(FIRST, FIRST + N):
        v = 250 if f == FLASH else 40 + 2 * (f - FIRST)
        cv2.imwrite(str(folder / f"plate.{f:04d}.png"), np.full((H, W, 3), v, np.uint8))
    return folder / "plate.%04d.png"


def _click(at_frame: int) -> np.ndarray:
    """Audio whose sample 0 belongs to the plate's first frame, click at ``at_frame``."""
    x = np.zeros(samples_for_frames(0, N + 10, FPS, 0, SR)[1], np.float32)
    a, _ = samples_for_frames(at_frame - FIRST, 1, FPS, 0, SR)
    x[a:a + 64] = 0.9
    return x


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("review")
    plate = _plate(root / "plate")
    layout = ShotLayout("show", "sq", "sh010", "v001", root / "render", root / "review", root / "qc")
    timing = FrameTiming(FPS, FIRST, FIRST + N - 1, FIRST, "01:00:00:00")
    stage = NeuralRenderStage(plate, layout, timing, NeuralRenderConfig(
        colourspace="sRGB", matte=MatteConfig(segmentation="none"), passes=("rgba", "matte")),
        renderer=SyntheticCropRenderer(32, tint=(1.0, 1.0, 1.0)), params=synthetic_params(range(FIRST, FIRST + N), (W, H)))
    run_stages([stage], ExecutorConfig(kind="debug"))
    wav = write_wav(root / "dub.wav", _click(FLASH), SR)
    return root, plate, layout, timing, wav


def _measure(path):
    frames = list(VideoSource(path).iter_frames())
    flash = int(np.argmax([f[: H - 20].mean() for f in frames]))   # above the burn-in band
    audio = extract_audio(path, SR)
    click = int(np.flatnonzero(np.abs(audio) > 0.3)[0])
    return frames, flash, frame_for_sample(click, FPS, 0, SR)


def test_review_movie_counts_rate_audio_and_sync(rendered):
    root, plate, layout, timing, wav = rendered
    review = ReviewStage(layout, timing, ReviewConfig(colourspace="sRGB", burn_in=True), plate, wav)
    run_stages([review], ExecutorConfig(kind="debug"))
    info = probe(layout.review_movie)
    assert info.frame_count == N and info.fps == FPS and (info.width, info.height) == (W, H)
    assert info.video_codec == "h264" and info.has_audio and info.audio_codec == "aac"
    assert info.video_duration == N / FPS
    decoded = extract_audio(layout.review_movie, SR)
    assert abs(len(decoded) - samples_for_frames(0, N, FPS, 0, SR)[1]) <= 2   # audio ends with the picture
    frames, flash, click = _measure(layout.review_movie)
    assert flash == FLASH - FIRST and click - flash == 0                       # A/V offset 0
    # Un-tone-mapped view of an sRGB plate: an untouched pixel comes back as the plate's value
    assert abs(float(frames[0][5, 5].mean()) - 40) <= 2


def test_dub_offset_and_side_by_side(rendered):
    root, plate, layout, timing, wav = rendered
    review = ReviewStage(layout, timing, ReviewConfig(colourspace="sRGB", side_by_side=True, burn_in=False,
                                                      audio_offset_frames=3), plate, wav)
    run_stages([review], ExecutorConfig(kind="debug"))
    info = probe(layout.review_movie)
    assert (info.width, info.height) == (2 * W, H) and info.frame_count == N
    frames, flash, click = _measure(layout.review_movie)
    assert click - flash == 3
    left, right = frames[0][:, :W].astype(int), frames[0][:, W:].astype(int)
    assert abs(left[5, 5] - right[5, 5]).max() <= 2          # plate | render agree off the face
