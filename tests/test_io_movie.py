"""Review movie writer: counts, rate, durations, and audio/picture sync measured on the result."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from engine.errors import MediaError, OutputExistsError
from engine.io.audio import extract_audio, frame_for_sample, samples_for_frames, write_wav
from engine.io.ffmpeg import probe
from engine.io.movie import ReviewMovieWriter
from engine.io.video import VideoSource

FPS = Fraction(24000, 1001)
SR = 48000
N = 48
FLASH = 29
W, H = 101, 75   # odd on purpose: 4:2:0 needs padding to 102 x 76


def _frames(flash=FLASH):
    for i in range(N):
        yield np.full((H, W, 3), 255 if i == flash else 20, np.uint8)


def _click_track(at_frame: int, length_frames: int) -> np.ndarray:
    """Silence with a short click at the first sample of ``at_frame``."""
    x = np.zeros(samples_for_frames(0, length_frames, FPS, 0, SR)[1], np.float32)
    a, _ = samples_for_frames(at_frame, 1, FPS, 0, SR)
    x[a:a + 64] = 0.9
    return x


def _measured(path):
    src = VideoSource(path)
    flash = int(np.argmax([f.mean() for f in src.iter_frames()]))
    audio = extract_audio(path, SR)
    click = int(np.flatnonzero(np.abs(audio) > 0.3)[0])
    return flash, frame_for_sample(click, FPS, 0, SR), audio


def _write(path, **kw):
    with ReviewMovieWriter(path, FPS, (W, H), **kw) as mov:
        for f in _frames():
            mov.write(f)
    return path


def test_counts_rate_durations(tmp_path):
    audio = _click_track(FLASH, N + 40)   # longer than the picture: must be cut to it
    path = _write(tmp_path / "review.mp4", audio=(audio, SR))
    info = probe(path)
    assert info.frame_count == N and info.fps == FPS
    assert (info.width, info.height) == (W + 1, H + 1)
    assert info.video_codec == "h264" and info.pix_fmt == "yuv420p" and info.color_matrix == "bt709"
    assert info.has_audio and info.audio_codec == "aac" and info.sample_rate == SR
    assert info.video_duration == N / FPS
    assert info.duration == pytest.approx(float(N / FPS), abs=0.011)
    decoded = extract_audio(path, SR)
    want = samples_for_frames(0, N, FPS, 0, SR)[1]
    assert abs(len(decoded) - want) <= 2, (len(decoded), want)   # ends with the picture
    data = path.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")   # +faststart: index first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["review.mp4"]  # temp files gone


def test_flash_and_click_in_sync(tmp_path):
    path = _write(tmp_path / "sync.mp4", audio=(_click_track(FLASH, N), SR))
    flash, click_frame, _ = _measured(path)
    assert flash == FLASH
    assert click_frame - flash == 0


@pytest.mark.parametrize("offset", [5, -3])
def test_audio_offset_frames(tmp_path, offset):
    # click at audio frame 20: shown at movie frame 20 + offset
    path = _write(tmp_path / f"off{offset}.mp4", audio=(_click_track(20, N), SR),
                  audio_offset_frames=offset)
    _, click_frame, _ = _measured(path)
    assert click_frame == 20 + offset


def test_audio_from_file_and_mono_input(tmp_path):
    wav = write_wav(tmp_path / "dub.wav", _click_track(FLASH, N), SR)
    path = _write(tmp_path / "from_wav.mp4", audio=wav)
    flash, click_frame, _ = _measured(path)
    assert flash == click_frame == FLASH
    assert probe(path).channels == 2   # file audio is muxed as stereo


def test_no_audio(tmp_path):
    path = _write(tmp_path / "silent.mp4", metadata={"comment": "v003", "title": "sh010"})
    info = probe(path)
    assert info.frame_count == N and not info.has_audio


def test_refuses_to_overwrite(tmp_path):
    path = _write(tmp_path / "v1.mp4")
    before = path.read_bytes()
    with pytest.raises(OutputExistsError):
        ReviewMovieWriter(path, FPS, (W, H)).open()
    assert path.read_bytes() == before
    _write(path, overwrite=True)


def test_exception_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with ReviewMovieWriter(tmp_path / "x.mp4", FPS, (W, H)) as mov:
            mov.write(np.zeros((H, W, 3), np.uint8))
            raise RuntimeError("render failed")
    assert list(tmp_path.iterdir()) == []


def test_wrong_frame_is_rejected(tmp_path):
    with ReviewMovieWriter(tmp_path / "y.mp4", FPS, (W, H)) as mov:
        with pytest.raises(ValueError, match="uint8"):
            mov.write(np.zeros((H, W, 3), np.float32))
        with pytest.raises(ValueError):
            mov.write(np.zeros((H + 1, W, 3), np.uint8))
        mov.write(np.zeros((H, W, 3), np.uint8))


def test_ffmpeg_failure_is_one_clear_line(tmp_path):
    with pytest.raises(MediaError) as exc:
        with ReviewMovieWriter(tmp_path / "z.mp4", FPS, (W, H), preset="no-such-preset") as mov:
            for f in _frames():
                mov.write(f)
    msg = str(exc.value)
    assert "ffmpeg failed writing" in msg and "\n" not in msg
    assert not (tmp_path / "z.mp4").exists()
