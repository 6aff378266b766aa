"""SMPTE timecode, including drop-frame at 29.97 and 59.94."""
from __future__ import annotations

from fractions import Fraction

import pytest

from engine.errors import ConfigError
from engine.io.timecode import (frames_to_timecode, nominal_rate, parse_timecode, timecode_for_frame,
                                timecode_to_frames)

NTSC = Fraction(30000, 1001)
NTSC60 = Fraction(60000, 1001)


def test_non_drop_rates():
    assert str(frames_to_timecode(0, 24)) == "00:00:00:00"
    assert str(frames_to_timecode(24 * 3600, 24)) == "01:00:00:00"
    assert str(frames_to_timecode(86400 * 25 - 1, 25)) == "23:59:59:24"
    assert str(frames_to_timecode(86400 * 25, 25)) == "00:00:00:00"  # wraps at 24 h
    assert timecode_to_frames("01:00:00:00", Fraction(24000, 1001)) == 86400  # nominal 24
    assert nominal_rate(Fraction(24000, 1001)) == 24 and nominal_rate(NTSC60) == 60


@pytest.mark.parametrize("count,label", [
    (0, "00:00:00;00"), (1799, "00:00:59;29"), (1800, "00:01:00;02"), (1801, "00:01:00;03"),
    (3597, "00:01:59;29"), (3598, "00:02:00;02"),
    (17981, "00:09:59;29"), (17982, "00:10:00;00"),     # minute 10 keeps labels 00 and 01
    (107892, "01:00:00;00"),                           # one hour of 29.97 DF
])
def test_drop_frame_2997_known_values(count, label):
    assert str(frames_to_timecode(count, NTSC)) == label
    assert timecode_to_frames(label, NTSC) == count


def test_drop_frame_5994_known_values():
    assert str(frames_to_timecode(3599, NTSC60)) == "00:00:59;59"
    assert str(frames_to_timecode(3600, NTSC60)) == "00:01:00;04"
    assert str(frames_to_timecode(215784, NTSC60)) == "01:00:00;00"


@pytest.mark.parametrize("fps", [NTSC, NTSC60])
def test_drop_frame_round_trip_and_wall_clock(fps):
    last = "23:59:59;29" if fps == NTSC else "23:59:59;59"
    day = timecode_to_frames(last, fps) + 1
    for n in range(0, day + 20_000, 4999):
        assert timecode_to_frames(str(frames_to_timecode(n, fps)), fps) == n % day
    # drop-frame stays within a frame of real time: 1 h of frames reads 01:00:00;00 (+-)
    one_hour = round(3600 * fps)
    t = parse_timecode(str(frames_to_timecode(one_hour, fps)))
    assert (t.hours, t.minutes, t.seconds) in ((1, 0, 0), (0, 59, 59))


def test_skipped_labels_are_rejected():
    with pytest.raises(ConfigError, match="does not exist"):
        timecode_to_frames("00:01:00;00", NTSC)
    assert timecode_to_frames("00:10:00;00", NTSC) == 17982


def test_non_drop_at_2997_when_asked():
    assert str(frames_to_timecode(1800, NTSC, drop_frame=False)) == "00:01:00:00"
    assert timecode_to_frames("00:01:00:00", NTSC) == 1800


def test_bad_timecodes():
    for bad in ("1:00:00", "01:60:00:00", "25:00:00:00", "aa:bb:cc:dd"):
        with pytest.raises(ConfigError):
            parse_timecode(bad)
    with pytest.raises(ConfigError, match="counts 0..24"):
        timecode_to_frames("00:00:00:25", 25)
    with pytest.raises(ConfigError, match="drop-frame"):
        frames_to_timecode(10, 25, drop_frame=True)


def test_timecode_for_plate_frames():
    assert timecode_for_frame(1001, 24, start_frame=1001, start_timecode="01:00:00:00") == "01:00:00:00"
    assert timecode_for_frame(1049, 24, start_frame=1001, start_timecode="01:00:00:00") == "01:00:02:00"
    assert timecode_for_frame(1000 + 1800, NTSC, start_frame=1000, start_timecode="00:00:00;00") == "00:01:00;02"
    assert timecode_for_frame(1000, 25, start_frame=1001, start_timecode="10:00:00:00") == "09:59:59:24"
