"""Exact time alignment of a driving clip onto the shot's frames (engine.drive.timing)."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from engine.drive.timing import driver_positions, nearest_driver_frames, sample_plan
from engine.errors import ConfigError


def test_30fps_driver_on_25fps_plate_samples_by_exact_time() -> None:
    frames = np.arange(1001, 1011)
    pos = driver_positions(frames, plate_start_frame=1001, offset=0, plate_fps=Fraction(25), driver_fps=Fraction(30))
    assert pos == [Fraction(6 * k, 5) for k in range(10)]
    near = sample_plan(frames, 100, plate_start_frame=1001, offset=0, plate_fps=Fraction(25),
                       driver_fps=Fraction(30), sampling="nearest")
    # 0, 1.2, 2.4, 3.6, 4.8, 6, 7.2, 8.4, 9.6, 10.8 -> nearest
    assert near.i0.tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 10, 11]
    assert (near.weight == 0).all()
    lin = sample_plan(frames, 100, plate_start_frame=1001, offset=0, plate_fps=Fraction(25),
                      driver_fps=Fraction(30), sampling="linear")
    ramp = np.arange(100, dtype=np.float64) * 3.0          # a coefficient moving linearly in time
    assert np.allclose(lin.blend(ramp), 3.0 * np.array([float(p) for p in pos]), atol=1e-12)


def test_long_ntsc_shot_has_no_drift() -> None:
    # frame 100000 of a 24000/1001 plate driven by a 30000/1001 clip: exactly 5/4 of the index
    f = 1001 + 100_000
    pos = driver_positions([f], plate_start_frame=1001, offset=0, plate_fps=Fraction(24000, 1001),
                           driver_fps=Fraction(30000, 1001))
    assert pos == [Fraction(125_000)]


def test_offset_and_holding_outside_the_clip() -> None:
    frames = np.arange(1001, 1011)
    plan = sample_plan(frames, 5, plate_start_frame=1001, offset=3, plate_fps=Fraction(25),
                       driver_fps=Fraction(25), sampling="linear")
    # driving frame 0 lines up with plate frame 1004
    assert plan.before_start.tolist() == [True] * 3 + [False] * 7
    assert plan.i0[3:8].tolist() == [0, 1, 2, 3, 4]
    assert plan.after_end.tolist() == [False] * 8 + [True] * 2
    assert plan.i0[8:].tolist() == [4, 4] and plan.i1[8:].tolist() == [4, 4]
    neg = sample_plan([1001], 50, plate_start_frame=1001, offset=-10, plate_fps=Fraction(25),
                      driver_fps=Fraction(25))
    assert neg.i0.tolist() == [10]


def test_bad_timing_input_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="sampling"):
        sample_plan([1001], 10, plate_start_frame=1001, offset=0, plate_fps=Fraction(25), driver_fps=Fraction(25),
                    sampling="cubic")
    with pytest.raises(ConfigError, match="driving fps"):
        driver_positions([1001], plate_start_frame=1001, offset=0, plate_fps=Fraction(25), driver_fps=0)
    with pytest.raises(ConfigError, match="no frames"):
        sample_plan([1001], 0, plate_start_frame=1001, offset=0, plate_fps=Fraction(25), driver_fps=Fraction(25))


def test_nearest_driver_frames_matches_nearest_sampling() -> None:
    # 25 fps shot from a 30 fps driver, starting 3 frames before the clip: clamped at both ends
    frames = np.arange(998, 1040)
    plan = sample_plan(frames, 40, plate_start_frame=1001, offset=0, plate_fps=Fraction(25),
                       driver_fps=Fraction(30), sampling="nearest")
    pos = np.array([[p.numerator, p.denominator] for p in plan.positions], np.int64)
    got = nearest_driver_frames(pos, 40)
    assert np.array_equal(got, plan.i0)
    assert got[0] == 0 and got[-1] == 39
