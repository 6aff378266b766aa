"""Audio: exact frame -> sample mapping, decoding from video/audio files, alignment, WAV."""
from __future__ import annotations

import math
import subprocess
import wave
from fractions import Fraction

import numpy as np
import pytest

from engine.errors import MediaError, OutputExistsError
from engine.io.audio import extract_audio, frame_for_sample, samples_for_frames, write_wav
from engine.io.ffmpeg import ffmpeg_cmd, probe


def _ff(*args: str) -> None:
    subprocess.run(ffmpeg_cmd(loglevel="error") + ["-y", *args], check=True)


# -- samples_for_frames ---------------------------------------------------------------------

def test_simple_rates():
    assert samples_for_frames(1001, 1, Fraction(25), 1001, 16000) == (0, 640)
    assert samples_for_frames(1101, 10, Fraction(25), 1001, 16000) == (64000, 70400)
    assert samples_for_frames(1001, 1, Fraction(24000, 1001), 1001, 48000) == (0, 2002)


@pytest.mark.parametrize("fps", [Fraction(30000, 1001), Fraction(24000, 1001), Fraction(60000, 1001), Fraction(24)])
@pytest.mark.parametrize("sr", [16000, 44100, 48000])
def test_ranges_tile_without_drift(fps, sr):
    n = 200_000  # ~2 hours at 29.97
    edges = [samples_for_frames(1001 + k, 1, fps, 1001, sr) for k in range(0, n, 997)]
    for (a, b), k in zip(edges, range(0, n, 997)):
        assert a == math.ceil(Fraction(k) * sr / fps)
        assert b - a in (math.floor(sr / fps), math.ceil(sr / fps))
    # adjacent ranges share their boundary; a long range equals the sum of its frames
    a0, b0 = samples_for_frames(1001, n, fps, 1001, sr)
    assert (a0, b0) == (0, math.ceil(Fraction(n) * sr / fps))
    assert samples_for_frames(1001, 7, fps, 1001, sr)[1] == samples_for_frames(1008, 3, fps, 1001, sr)[0]
    # ... which accumulated floats do not manage: show that the exact answer differs from
    # a naive float32 running sum over the same span (the bug this function prevents)
    naive = np.float32(0)
    step = np.float32(sr / float(fps))
    for _ in range(n):
        naive += step
    if fps.denominator != 1:
        assert int(naive) != b0


def test_frame_for_sample_inverts():
    fps, sr = Fraction(30000, 1001), 16000
    for frame in (1001, 1002, 1500, 20000):
        a, b = samples_for_frames(frame, 1, fps, 1001, sr)
        assert frame_for_sample(a, fps, 1001, sr) == frame
        assert frame_for_sample(b - 1, fps, 1001, sr) == frame
        assert frame_for_sample(b, fps, 1001, sr) == frame + 1


# -- decoding ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    sine = "sine=frequency=500:sample_rate=44100:duration=2"
    _ff("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25:duration=2", "-f", "lavfi", "-i", sine,
        "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-ac", "2", str(d / "av.mp4"))
    _ff("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25:duration=1", "-c:v", "libx264",
        "-preset", "ultrafast", str(d / "silent.mp4"))
    for name, extra in (("a.wav", []), ("a.mp3", []), ("a.m4a", ["-c:a", "aac"]),
                        ("a.aac", ["-c:a", "aac", "-f", "adts"])):
        _ff("-f", "lavfi", "-i", sine, *extra, str(d / name))
    return d


def test_from_video(files):
    x = extract_audio(files / "av.mp4", 16000)
    assert x.dtype == np.float32 and x.ndim == 1 and x.flags.writeable
    assert abs(len(x) - 32000) <= 16000 * 0.03
    # a 500 Hz sine: dominant frequency survives decode + resample
    seg = x[4000:20000]
    spec = np.abs(np.fft.rfft(seg))
    assert np.argmax(spec) * 16000 / len(seg) == pytest.approx(500, abs=2)
    st = extract_audio(files / "av.mp4", 48000, channels=2)
    assert st.shape[1] == 2 and abs(len(st) - 96000) <= 48000 * 0.03
    assert float(np.abs(st).max()) <= 1.0


@pytest.mark.parametrize("name", ["a.wav", "a.mp3", "a.m4a", "a.aac"])
def test_from_audio_files(files, name):
    x = extract_audio(files / name, 16000)
    assert abs(len(x) - 32000) <= 16000 * 0.06, len(x)
    assert 0.1 < float(np.abs(x).max()) <= 1.0  # lavfi sine peaks at 1/8


def test_no_audio_stream_is_a_clear_error(files):
    with pytest.raises(MediaError) as exc:
        extract_audio(files / "silent.mp4")
    assert "has no audio stream" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("offset", [0.5, -0.3])
def test_audio_is_aligned_to_first_video_frame(tmp_path, offset):
    """A click at audio time 0, muxed so that the audio starts `offset` s after (or before)
    the video: in the extracted samples the click sits at offset * sr (or is cut off)."""
    sr = 16000
    click = np.zeros(sr * 2, np.float32)
    click[0:40] = 0.8
    click[sr: sr + 40] = 0.8  # and a second click one second later
    wav = write_wav(tmp_path / "click.wav", click, sr)
    out = tmp_path / "av.mp4"
    if offset >= 0:
        inputs = ["-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25:duration=3",
                  "-itsoffset", str(offset), "-i", str(wav)]
    else:
        inputs = ["-itsoffset", str(-offset), "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25:duration=3",
                  "-i", str(wav)]
    _ff(*inputs, "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "ultrafast",
        "-c:a", "pcm_s16le", str(out.with_suffix(".mov")))
    info = probe(out.with_suffix(".mov"))
    # the muxer may round the video start to its time base (0.3 s became 0.32 s): the
    # container's own timestamps are the truth
    audio_start = max(offset, 0.0)
    shift = audio_start - float(info.video_start)
    assert shift == pytest.approx(offset, abs=0.03)
    x = extract_audio(out.with_suffix(".mov"), sr)
    peaks = np.flatnonzero(np.abs(x) > 0.4)
    second = (1 + shift) * sr
    assert np.any(np.abs(peaks - second) <= 2), (peaks[:5], second)
    if offset > 0:
        assert np.any(np.abs(peaks - shift * sr) <= 2)
        assert np.abs(x[: int(shift * sr) - 10]).max() < 1e-4  # padded with silence
    else:
        assert peaks.min() > 0.5 * sr  # the first click, before the picture, was cut


# -- WAV -----------------------------------------------------------------------------------

def test_write_wav_round_trip_and_atomicity(tmp_path):
    sr = 22050
    t = np.arange(sr) / sr
    x = np.stack([0.5 * np.sin(2 * np.pi * 220 * t), np.linspace(-1.2, 1.2, sr)], 1).astype(np.float32)
    path = write_wav(tmp_path / "out" / "x.wav", x, sr)
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (sr, 2, 2, sr)
        pcm = np.frombuffer(w.readframes(sr), "<i2").reshape(-1, 2)
    assert np.abs(pcm[:, 0] / 32767 - x[:, 0]).max() < 1e-4
    assert pcm[:, 1].max() == 32767 and pcm[:, 1].min() == -32768  # clipped, not wrapped
    assert [p.name for p in path.parent.iterdir()] == ["x.wav"]   # no temp file left
    back = extract_audio(path, sr, channels=2)
    assert np.abs(back[:, 0] - x[:, 0]).max() < 1e-3
    with pytest.raises(OutputExistsError):
        write_wav(path, x, sr, overwrite=False)
