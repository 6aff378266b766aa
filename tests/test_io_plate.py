"""Image sequences and open_plate: frame numbers, gaps, fps checks, ranges."""
from __future__ import annotations

from fractions import Fraction

import cv2
import numpy as np
import pytest

from engine.errors import MediaError
from engine.io.exr import write_exr
from engine.io.plate import FrameSource, SequencePlate, VideoPlate, open_plate
from engine.io.sequence import ImageSequenceSource, SequencePattern, format_ranges, sequence_path
from engine.io.synthetic import barcode_frame, encode_video, read_barcode

H, W = 48, 64


def _write_png_seq(folder, frames, ext=".png", name="plate"):
    folder.mkdir(parents=True, exist_ok=True)
    for n in frames:
        img = barcode_frame(n, H, W)
        img[0, 0] = (255, 0, 0)  # a red pixel, to catch RGB/BGR mix-ups
        assert cv2.imwrite(str(folder / f"{name}.{n:04d}{ext}"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


def test_pattern_paths():
    assert sequence_path("out/sh.####.exr", 1001).as_posix() == "out/sh.1001.exr"
    assert sequence_path("out/sh.%04d.exr", 7).as_posix() == "out/sh.0007.exr"
    assert sequence_path("sh.%d.png", 12).as_posix() == "sh.12.png"
    assert sequence_path("sh.####.png", 10001).as_posix() == "sh.10001.png"
    with pytest.raises(MediaError):
        SequencePattern("plate.mp4")


def test_format_ranges():
    assert format_ranges([1003, 1004, 1005, 1009]) == "1003-1005, 1009"
    assert format_ranges([5]) == "5"


@pytest.mark.parametrize("pattern", ["plate.%04d.png", "plate.####.png"])
def test_png_sequence_numbers_from_names(tmp_path, pattern):
    _write_png_seq(tmp_path, range(1001, 1011))
    _write_png_seq(tmp_path, [1001], name="other")  # a different sequence in the same folder
    seq = ImageSequenceSource(tmp_path / pattern)
    assert seq.frame_numbers == range(1001, 1011)
    img = seq.read(1004)
    assert img.dtype == np.uint8 and img.shape == (H, W, 3)
    assert tuple(img[0, 0]) == (255, 0, 0)
    assert read_barcode(img) == 1004
    assert [n for n, _ in seq.iter(1008, 1010)] == [1008, 1009, 1010]


def test_jpeg_sequence(tmp_path):
    _write_png_seq(tmp_path, range(1, 4), ext=".jpg")
    seq = ImageSequenceSource(tmp_path / "plate.####.jpg")
    assert seq.frame_numbers == range(1, 4)
    assert read_barcode(seq.read(2)) == 2


def test_gaps_name_the_missing_frames(tmp_path):
    _write_png_seq(tmp_path, [1001, 1002, 1006, 1007, 1009])
    with pytest.raises(MediaError) as exc:
        ImageSequenceSource(tmp_path / "plate.####.png")
    msg = str(exc.value)
    assert "1003-1005, 1008" in msg and "\n" not in msg


def test_no_match_and_corrupt_frame(tmp_path):
    with pytest.raises(MediaError, match="no files match"):
        ImageSequenceSource(tmp_path / "plate.####.png")
    _write_png_seq(tmp_path, [1, 2])
    (tmp_path / "plate.0003.png").write_bytes(b"not a png")
    seq = ImageSequenceSource(tmp_path / "plate.####.png")
    with pytest.raises(MediaError, match="plate.0003.png"):
        seq.read(3)


def test_exr_sequence_is_float_linear(tmp_path):
    for n in (1001, 1002):
        rgb = np.full((H, W, 3), 0.25 * (n - 1000), np.float32)
        rgb[0, 0] = (4.5, -0.1, 0.0)  # scene-linear: over 1 and negative must survive
        write_exr(tmp_path / f"bg.{n}.exr", {"rgb": rgb},
                  metadata={"framesPerSecond": Fraction(24)}, pixel_types={"": "float"})
    plate = open_plate(tmp_path / "bg.####.exr", Fraction(24))
    assert isinstance(plate, SequencePlate) and isinstance(plate, FrameSource)
    img = plate.read(1002)
    assert img.dtype == np.float32 and img.shape == (H, W, 3)
    assert img[5, 5, 0] == pytest.approx(0.5)
    assert tuple(img[0, 0]) == pytest.approx((4.5, -0.1, 0.0), abs=1e-6)
    with pytest.raises(MediaError, match="plate is 24 fps, shot says 25 fps"):
        open_plate(tmp_path / "bg.####.exr", Fraction(25))


@pytest.fixture(scope="module")
def video30(tmp_path_factory):
    path = tmp_path_factory.mktemp("plate") / "p30.mp4"
    return encode_video(path, (barcode_frame(i, H, W) for i in range(40)), Fraction(30), gop=10)


def test_open_plate_video_numbers_from_start_frame(video30):
    plate = open_plate(video30, Fraction(30), start_frame=1001)
    assert isinstance(plate, VideoPlate) and isinstance(plate, FrameSource)
    assert plate.frame_numbers == range(1001, 1041)
    got = [(n, read_barcode(f)) for n, f in plate.iter(1017, 1020)]
    assert got == [(1017, 16), (1018, 17), (1019, 18), (1020, 19)]
    # sequential reads share one decoder; a jump restarts it
    assert [read_barcode(plate.read(n)) for n in (1005, 1006, 1007, 1030, 1002)] == [4, 5, 6, 29, 1]
    plate.close()


def test_open_plate_refuses_other_fps(video30):
    with pytest.raises(MediaError) as exc:
        open_plate(video30, Fraction(25))
    assert "plate is 30 fps, shot says 25 fps" in str(exc.value)
    with pytest.raises(MediaError, match=r"29\.97"):
        open_plate(video30, Fraction(30000, 1001))


def test_range_outside_plate_is_named(video30, tmp_path):
    plate = open_plate(video30, Fraction(30), start_frame=1001)
    with pytest.raises(MediaError, match="frames 990-1010 are outside the plate .*1001-1040"):
        plate.iter(990, 1010)
    with pytest.raises(MediaError, match="1041"):
        plate.read(1041)
    _write_png_seq(tmp_path, range(1001, 1004))
    seq = open_plate(tmp_path / "plate.%04d.png", Fraction(30))
    with pytest.raises(MediaError, match="frames 1002-1005 are outside"):
        seq.iter(1002, 1005)


def test_open_plate_audio_only_file(tmp_path):
    from engine.io.audio import write_wav
    wav = write_wav(tmp_path / "a.wav", np.zeros(1600, np.float32), 16000)
    with pytest.raises(MediaError, match="no video stream"):
        open_plate(wav, Fraction(25))
