"""The embedded demo shot: real data a dependency ships, no media of the user's needed.

scikit-image ships the NASA portrait of astronaut Eileen Collins (public domain). The demo
turns it into a short plate: a slow push-in and drift over the photo (the camera moves, the
face is real), 25 fps, with a dialogue-like audio track (syllable-rate tone bursts) muxed in,
then writes a shot YAML for it and runs the shot end to end.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from engine.io.movie import ReviewMovieWriter
from engine.util.atomic import atomic_write_text

DEMO_FPS = Fraction(25)
DEMO_FRAMES = 50
DEMO_SIZE = 256
# The demo's actor model: the draft preset, shortened (the plate is a 2-second still with a
# camera move; a few hundred steps already paint it recognisably at 128 px).
DEMO_PRESET = "draft"
DEMO_STEPS = 300
AUDIO_SR = 48000


def demo_frames(n: int = DEMO_FRAMES, size: int = DEMO_SIZE) -> list[np.ndarray]:
    """A push-in with a slight drift and roll over the astronaut photo (RGB uint8)."""
    from skimage import data  # ships the photo in its wheel
    photo = data.astronaut()
    cx0, cy0 = 226.0, 130.0          # around the face
    frames = []
    for i in range(n):
        t = i / max(n - 1, 1)
        s = 1.0 + 0.15 * t            # push in by 15 %
        ang = 2.0 * np.sin(2 * np.pi * t)  # degrees of roll
        cx = cx0 + 6.0 * np.sin(np.pi * t)
        cy = cy0 + 4.0 * t
        half = 150.0 / s
        m = cv2.getRotationMatrix2D((cx, cy), ang, size / (2 * half))
        m[:, 2] += np.array([size / 2 - cx, size / 2 - cy])
        frames.append(cv2.warpAffine(photo, m, (size, size), flags=cv2.INTER_CUBIC,
                                     borderMode=cv2.BORDER_REFLECT101))
    return frames


def demo_audio(n_frames: int = DEMO_FRAMES, fps: Fraction = DEMO_FPS, sr: int = AUDIO_SR) -> np.ndarray:
    """Syllable-like tone bursts (4 per second) with pauses, float32 mono."""
    n = int(n_frames * sr / fps)
    t = np.arange(n) / sr
    env = np.clip(np.sin(2 * np.pi * 4.0 * t), 0, None) ** 2 * (np.sin(2 * np.pi * 0.5 * t) > -0.3)
    pitch = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    tone = np.sin(2 * np.pi * np.cumsum(pitch) / sr) + 0.3 * np.sin(4 * np.pi * np.cumsum(pitch) / sr)
    return (0.3 * env * tone).astype(np.float32)


SHOT_YAML = """\
# The embedded demo shot (written by `portrait demo`): the astronaut plate, self-reenactment.
schema: portrait.shot/1
show: demo
sequence: sq010
shot: sh010
version: auto
fps: 25
frames: {{first: 1001, last: {last}}}
plate:
  path: plate/astronaut_plate.mp4
  colourspace: Rec.709
  timecode: "01:00:00:00"
actor:
  id: astronaut
  consent: "NASA photo (public domain), shipped by scikit-image; demo use only"
face_model: {{kind: builtin}}
drive: {{mode: none}}
quality: online
train: {{preset: {preset}, overrides: {{steps: {steps}}}}}
render:
  compression: zip
  review_movie: {{enabled: true, burn_in: true, side_by_side: true}}
output:
  root: out
executor: {{kind: {executor}}}
"""


def build_demo(workdir: str | Path, *, frames: int = DEMO_FRAMES, executor: str = "local",
               preset: str = DEMO_PRESET, steps: int = DEMO_STEPS) -> Path:
    """Write the demo plate and shot YAML into ``workdir`` (reused if already there).

    The actor model is trained on the plate itself (self-reenactment): ``preset`` /
    ``steps`` size that training (the default draft model, ~2 minutes on 2 CPU cores;
    tests use the ``tiny`` preset)."""
    workdir = Path(workdir)
    plate = workdir / "plate" / "astronaut_plate.mp4"
    if not plate.exists():
        plate.parent.mkdir(parents=True, exist_ok=True)
        with ReviewMovieWriter(plate, DEMO_FPS, (DEMO_SIZE, DEMO_SIZE), audio=(demo_audio(frames), AUDIO_SR),
                               crf=12) as mov:
            for img in demo_frames(frames):
                mov.write(img)
    shot = workdir / "demo_shot.yaml"
    text = SHOT_YAML.format(last=1000 + frames, executor=executor, preset=preset, steps=int(steps))
    if not shot.exists() or shot.read_text() != text:
        atomic_write_text(shot, text)
    return shot
