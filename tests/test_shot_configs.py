"""The example shots in shot_configs/ validate against the real media in ../shared."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from engine.shot import load_shot, validate_shot

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CONFIGS = REPO / "shot_configs"
EXAMPLES = ("self_reenactment.yaml", "video_driven.yaml", "dubbing.yaml")
PLATE = SHARED / "media" / "actor" / "EDTalk__pose_source2.mp4"

needs_shared = pytest.mark.skipif(not (SHARED / "media").is_dir(),
                                  reason="../shared test media not present")


def test_examples_present_and_cover_every_yaml():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXAMPLES)
    for name in EXAMPLES:
        head = (CONFIGS / name).read_text().splitlines()[0]
        assert head.startswith("# "), f"{name} should open with a comment explaining the shot"


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_valid_without_media(name):
    assert validate_shot(CONFIGS / name, check_files=False) == []


@needs_shared
@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_validate(name):
    problems = validate_shot(CONFIGS / name)
    assert problems == [], "\n".join(map(str, problems))


@needs_shared
def test_examples_content():
    selfre = load_shot(CONFIGS / "self_reenactment.yaml")
    video = load_shot(CONFIGS / "video_driven.yaml")
    dub = load_shot(CONFIGS / "dubbing.yaml")
    for shot in (selfre, video, dub):
        assert shot.plate.path == PLATE and shot.fps == Fraction(25)
        assert shot.actor.media == (PLATE,) and shot.actor.consent
        # The plate has 1,499 frames: nothing may ask for more.
        assert shot.plate.start_frame == 1001 and shot.frames.render_last <= 1001 + 1499 - 1
    assert selfre.drive.mode == "none" and selfre.frames.render_count == 1499
    assert video.drive.mode == "video" and video.drive.source.parent == SHARED / "media" / "driving"
    assert video.frames.render_count == 250  # the driving clip: 10 s at 25 fps
    assert dub.drive.mode == "audio" and dub.drive.region == "mouth"
    assert dub.drive.source == SHARED / "media" / "audio" / "MuseTalk__eng.wav"
