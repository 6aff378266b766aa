"""Frame-exact decoding and seeking (engine.io.video) on videos whose frames carry their index.

The fixtures are H.264 with a short GOP (12) and B-frames, so most seek targets are in the
middle of a GOP and behind reordered frames: exactly where approximate seeking returns the
key frame or a neighbour. Every frame read is checked by decoding its barcode.
"""
from __future__ import annotations

import dataclasses
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from engine.errors import MediaError
from engine.io.ffmpeg import ffmpeg_cmd, probe
from engine.io.synthetic import barcode_frame, encode_video, read_barcode
from engine.io.video import VideoSource

N_FRAMES = 90
H, W = 96, 128
GOP = 12

CASES = [
    ("ntsc_film.mp4", Fraction(24000, 1001)),
    ("pal.mov", Fraction(25)),
    ("ntsc_film.mov", Fraction(24000, 1001)),
    ("pal.mp4", Fraction(25)),
]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, tuple[Path, Fraction]]:
    root = tmp_path_factory.mktemp("barcode")
    out = {}
    for name, fps in CASES:
        path = encode_video(root / name, (barcode_frame(i, H, W) for i in range(N_FRAMES)), fps,
                            gop=GOP, bframes=2)
        out[name] = (path, fps)
    return out


def _indices(frames) -> list[int]:
    return [read_barcode(f) for f in frames]


@pytest.mark.parametrize("name,fps", CASES)
def test_probe_reports_exact_rate_and_count(videos, name, fps):
    info = probe(videos[name][0])
    assert info.fps == fps and isinstance(info.fps, Fraction)
    assert info.frame_count == N_FRAMES
    assert (info.width, info.height) == (W, H)
    assert info.video_duration == Fraction(N_FRAMES) / fps
    assert not info.vfr and info.pts_reliable


@pytest.mark.parametrize("name,fps", CASES)
def test_full_decode_is_every_frame_in_order(videos, name, fps):
    src = VideoSource(videos[name][0])
    frames = list(src.iter_frames())
    assert len(frames) == N_FRAMES
    assert frames[0].shape == (H, W, 3) and frames[0].dtype == np.uint8
    assert _indices(frames) == list(range(N_FRAMES))


@pytest.mark.parametrize("name,fps", CASES)
@pytest.mark.parametrize("start,count", [(37, 5), (1, 3), (13, 1), (GOP * 5 - 1, 4),
                                         (N_FRAMES - 1, 1), (50, None)])
def test_seek_mid_gop_is_frame_exact(videos, name, fps, start, count):
    assert start % GOP != 0 or start == 0 or count == 1  # most targets are not key frames
    src = VideoSource(videos[name][0])
    got = _indices(src.iter_frames(start, count))
    n = count if count is not None else N_FRAMES - start
    assert got == list(range(start, start + n))


def test_fixture_detects_approximate_seeking(videos):
    """The barcode fixture is sensitive: an inexact seek (to the preceding key frame, what
    `-noaccurate_seek` does) reads a different index, so the tests above could fail."""
    path, fps = videos["ntsc_film.mp4"]
    target = 37  # GOP starts at 36
    args = ffmpeg_cmd(loglevel="error") + [
        "-noaccurate_seek", "-ss", f"{float(target / fps):.6f}", "-i", str(path),
        "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"]
    raw = subprocess.run(args, capture_output=True, check=True).stdout
    frame = np.frombuffer(raw, np.uint8).reshape(H, W, 3)
    assert read_barcode(frame) != target


def test_read_single_frames_random_order(videos):
    src = VideoSource(videos["pal.mov"][0])
    for i in (71, 3, 40, 0, 89):
        assert read_barcode(src.read(i)) == i


def test_overshooting_seek_falls_back_and_stays_exact(videos, monkeypatch):
    """If the demuxer seek lands *after* the target, the pts check notices and the reader
    restarts from the beginning instead of returning the wrong frames."""
    path, fps = videos["ntsc_film.mp4"]
    src = VideoSource(path)
    real = VideoSource._command
    calls = []

    def late_seek(self, start, count, seek, verify):
        calls.append(seek)
        return real(self, start + 3 if seek else start, count, seek, verify)

    monkeypatch.setattr(VideoSource, "_command", late_seek)
    assert _indices(src.iter_frames(40, 4)) == [40, 41, 42, 43]
    assert calls == [True, False]


def test_early_seek_drops_extra_frames(videos, monkeypatch):
    path, _ = videos["pal.mp4"]
    src = VideoSource(path)
    real = VideoSource._command
    monkeypatch.setattr(VideoSource, "_command",
                        lambda self, start, count, seek, verify: real(self, max(1, start - 7), count, seek, verify))
    assert _indices(src.iter_frames(45, 3)) == [45, 46, 47]


def test_without_timestamps_select_path_is_exact(videos):
    """Files without usable timestamps decode from the start and select by frame number."""
    path, _ = videos["pal.mov"]
    info = dataclasses.replace(probe(path), frame_pts=None)
    assert not info.pts_reliable
    src = VideoSource(path, info=info)
    assert _indices(src.iter_frames(29, 4)) == [29, 30, 31, 32]


def test_edit_list_trimmed_file_counts_only_shown_frames(videos, tmp_path):
    """A stream copy cut mid-GOP keeps earlier packets behind an MP4 edit list; they are not
    frames. The probe's count must equal what the decoder outputs."""
    path, fps = videos["pal.mp4"]
    cut = tmp_path / "cut.mp4"
    subprocess.run(ffmpeg_cmd(loglevel="error") + ["-ss", "1.3", "-i", str(path), "-c", "copy", str(cut)],
                   check=True)
    info = probe(cut)
    frames = list(VideoSource(cut).iter_frames())
    assert info.frame_count == len(frames)
    idx = _indices(frames)
    assert idx == list(range(idx[0], idx[0] + len(idx)))  # contiguous, nothing duplicated
    assert _indices(VideoSource(cut).iter_frames(5, 2)) == idx[5:7]


def test_nonzero_start_time(videos, tmp_path):
    """Broadcast files often start at a timecode-like offset (here 10 s): seeking is
    relative to the file's own timestamps, and still exact."""
    path, fps = videos["ntsc_film.mp4"]
    shifted = tmp_path / "offset.mov"
    subprocess.run(ffmpeg_cmd(loglevel="error") + ["-i", str(path), "-c", "copy",
                                                   "-output_ts_offset", "10", str(shifted)], check=True)
    info = probe(shifted)
    assert info.start_time == pytest.approx(10, abs=0.2) and info.frame_count == N_FRAMES
    src = VideoSource(shifted)
    assert _indices(src.iter_frames(37, 3)) == [37, 38, 39]
    assert _indices(src.iter_frames(0, 2)) == [0, 1]


def test_variable_frame_rate_indexes_by_decode_order(videos, tmp_path):
    """A 0.5 s hole after frame 30 (VFR): index i is still the i-th decoded frame, and
    seeking uses the real timestamps, not i / fps (which would land 12 frames early)."""
    path, _ = videos["pal.mp4"]
    vfr = tmp_path / "vfr.mp4"
    subprocess.run(ffmpeg_cmd(loglevel="error") + [
        "-i", str(path), "-vf", "setpts=N/25/TB+if(gte(N\\,30)\\,0.5/TB\\,0)", "-fps_mode", "passthrough",
        "-c:v", "libx264", "-preset", "ultrafast", "-g", "12", str(vfr)], check=True)
    info = probe(vfr)
    assert info.vfr and info.fps == 25 and info.frame_count == N_FRAMES
    src = VideoSource(vfr)
    assert _indices(src.iter_frames(35, 3)) == [35, 36, 37]
    assert _indices(src.iter_frames(29, 3)) == [29, 30, 31]


def test_out_of_range_requests_name_the_range(videos):
    src = VideoSource(videos["pal.mov"][0])
    with pytest.raises(MediaError, match=r"85\.\.94.*0\.\.89"):
        src.iter_frames(85, 10)
    with pytest.raises(MediaError):
        src.iter_frames(-1, 2)


def test_stopping_early_ends_ffmpeg(videos):
    src = VideoSource(videos["pal.mov"][0])
    it = src.iter_frames(0)
    first = next(it)
    assert read_barcode(first) == 0
    it.close()  # must not hang or leave a process behind


def test_frames_are_writable_and_independent(videos):
    src = VideoSource(videos["pal.mp4"][0])
    a, b = list(src.iter_frames(10, 2))
    a[:] = 0
    assert read_barcode(b) == 11


def test_colour_round_trip_through_rec709(tmp_path):
    """Encode (RGB -> Rec.709 limited YUV) and decode (tag-aware) agree: flat patches of
    primaries and greys come back within a few code values."""
    colours = np.array([[0, 0, 0], [255, 255, 255], [128, 128, 128], [200, 30, 30],
                        [30, 200, 30], [30, 30, 200], [240, 200, 120], [60, 90, 140]], np.uint8)
    frame = np.repeat(np.repeat(colours[None], 1, 0), 1, 1)
    frame = np.kron(frame, np.ones((64, 32, 1), np.uint8))  # 64 x 256 patches of 32 px
    path = encode_video(tmp_path / "c.mp4", [frame] * 3, Fraction(25), crf=4, gop=1, bframes=0)
    got = VideoSource(path).read(1).astype(int)
    for k, c in enumerate(colours):
        patch = got[16:48, k * 32 + 8:k * 32 + 24].reshape(-1, 3).mean(0)
        assert np.abs(patch - c).max() <= 4, (k, c, patch)


def test_memory_stays_constant_while_streaming(videos):
    """Iterating holds one frame at a time: traced Python allocations stay at a few frames
    however long the video is (the 1080p, 3000-frame figure is bench/decode_stream.py)."""
    import tracemalloc
    src = VideoSource(videos["pal.mp4"][0])
    frame_bytes = H * W * 3
    tracemalloc.start()
    n = 0
    for _ in src.iter_frames():
        n += 1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == N_FRAMES
    assert peak < 8 * frame_bytes + 256 * 1024, peak


SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.mark.slow
@pytest.mark.shared
def test_real_plate_seeks_match_sequential_decode():
    """On real footage (no barcode), a seek must return bit-identical pixels to the same
    frame reached by decoding sequentially."""
    plate = SHARED / "media" / "actor" / "EDTalk__pose_source2.mp4"
    if not plate.exists():
        pytest.skip(f"shared test media absent: {plate}")
    src = VideoSource(plate)
    targets = {0: None, 1: None, 263: None, 264: None, 801: None, src.frame_count - 1: None}
    for i, frame in enumerate(src.iter_frames()):
        if i in targets:
            targets[i] = frame
    for i, want in targets.items():
        got = src.read(i)
        assert np.array_equal(got, want), f"frame {i} differs after seeking"
    pair = list(src.iter_frames(800, 2))
    assert np.array_equal(pair[1], targets[801])
    assert not np.array_equal(pair[0], pair[1])  # consecutive frames do differ
