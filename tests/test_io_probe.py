"""engine.io.ffmpeg.probe: exact figures from plain ffmpeg, one-line errors for bad files."""
from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import pytest

from engine.errors import MediaError
from engine.io.ffmpeg import ffmpeg_cmd, ffmpeg_exe, format_fps, probe

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def _ff(*args: str) -> None:
    subprocess.run(ffmpeg_cmd(loglevel="error") + ["-y", *args], check=True)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("probe")
    files = {
        # 30000/1001 with audio, 2 s
        "ntsc.mp4": ["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=30000/1001:duration=2",
                     "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=2",
                     "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-ac", "2"],
        "pal.mov": ["-f", "lavfi", "-i", "testsrc2=size=176x144:rate=25:duration=2",
                    "-c:v", "libx264", "-preset", "ultrafast"],
        "faststart.mp4": ["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=4",
                          "-c:v", "libx264", "-preset", "ultrafast", "-movflags", "+faststart"],
        "mkv_ntsc.mkv": ["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=24000/1001:duration=3",
                         "-c:v", "libx264", "-preset", "ultrafast"],
        "tone.wav": ["-f", "lavfi", "-i", "sine=frequency=300:sample_rate=22050:duration=1.5"],
        "tone.mp3": ["-f", "lavfi", "-i", "sine=frequency=300:sample_rate=24000:duration=1.5"],
        "tone.m4a": ["-f", "lavfi", "-i", "sine=frequency=300:sample_rate=48000:duration=1.5",
                     "-c:a", "aac"],
    }
    out = {}
    for name, args in files.items():
        _ff(*args, str(d / name))
        out[name] = d / name
    return out


def test_ffmpeg_is_found():
    assert Path(ffmpeg_exe()).is_file()


def test_video_with_audio(media):
    info = probe(media["ntsc.mp4"])
    assert info.has_video and info.has_audio
    assert info.fps == Fraction(30000, 1001)
    assert info.frame_count == 60
    assert (info.width, info.height) == (160, 120)
    assert info.video_codec == "h264" and info.audio_codec == "aac"
    assert info.sample_rate == 44100 and info.channels == 2
    assert info.duration == pytest.approx(2.0, abs=0.05)
    assert info.video_duration == Fraction(60) * Fraction(1001, 30000)


def test_mov_and_faststart(media):
    info = probe(media["pal.mov"])
    assert info.fps == 25 and info.frame_count == 50 and not info.has_audio
    info = probe(media["faststart.mp4"])
    assert info.fps == 25 and info.frame_count == 100


def test_coarse_timebase_rate_is_recovered(media):
    """Matroska stores 1 ms timestamps (41/42 ms steps at 23.976): the rate is still exact."""
    info = probe(media["mkv_ntsc.mkv"])
    assert info.time_base == Fraction(1, 1000)
    assert info.fps == Fraction(24000, 1001)
    assert info.frame_count == 72
    assert not info.vfr


@pytest.mark.parametrize("name,sr", [("tone.wav", 22050), ("tone.mp3", 24000), ("tone.m4a", 48000)])
def test_audio_only_files(media, name, sr):
    info = probe(media[name])
    assert not info.has_video and info.has_audio
    assert info.sample_rate == sr and info.channels == 1
    assert info.frame_count == 0 and info.fps is None


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and len(msg) < 300, msg
    return msg


def test_truncated_mp4_without_index(media, tmp_path):
    data = media["ntsc.mp4"].read_bytes()   # moov at the end: cutting it loses the index
    bad = tmp_path / "cut.mp4"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError) as exc:
        probe(bad)
    msg = _one_line(exc)
    assert "cut.mp4" in msg and "moov atom not found" in msg


def test_truncated_mp4_with_index_first(media, tmp_path):
    data = media["faststart.mp4"].read_bytes()  # index first: opens, data runs out
    bad = tmp_path / "cut_fs.mp4"
    bad.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(MediaError) as exc:
        probe(bad)
    msg = _one_line(exc)
    assert "truncated or corrupt" in msg and "cut_fs.mp4" in msg


def test_text_file_renamed_mp4(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is a shot list, not a movie\n" * 20)
    with pytest.raises(MediaError) as exc:
        probe(bad)
    msg = _one_line(exc)
    assert "notes.mp4" in msg and "cannot read" in msg


def test_missing_empty_and_folder(tmp_path):
    with pytest.raises(MediaError, match="not found"):
        probe(tmp_path / "nope.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        probe(tmp_path / "empty.mp4")
    with pytest.raises(MediaError, match="folder"):
        probe(tmp_path)


def test_format_fps():
    assert format_fps(Fraction(25)) == "25"
    assert format_fps(Fraction(30000, 1001)) == "29.97 (30000/1001)"
    assert format_fps(Fraction(24000, 1001)) == "23.976 (24000/1001)"


@pytest.mark.shared
def test_shared_primary_plate():
    plate = SHARED / "media" / "actor" / "EDTalk__pose_source2.mp4"
    if not plate.exists():
        pytest.skip(f"shared test media absent: {plate}")
    info = probe(plate)
    assert (info.width, info.height) == (256, 256)
    assert info.fps == 25 and info.has_audio and info.sample_rate == 48000
    # 60 s at 25 fps according to the README; the container says 59.96 s: count, not estimate.
    assert info.frame_count == round(info.duration * 25)
