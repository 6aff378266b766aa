"""Transfer statistics and the re-tracked expression error (engine.drive.metrics), synthetic."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from engine.drive.metrics import correlation, expression_error, sampled_driver_values, transfer_statistics
from engine.drive.synthetic import synthetic_tracking
from engine.drive.transfer import VideoDriveConfig, transfer_video
from engine.errors import ConfigError
from engine.face.model_builtin import load_builtin_model


@pytest.fixture(scope="module")
def model():
    return load_builtin_model(None)


def test_sampled_driver_values_at_exact_positions() -> None:
    v = np.arange(10, dtype=float)
    valid = np.ones(10, bool)
    valid[5] = False
    pos = np.array([[0, 1], [6, 5], [12, 5], [24, 5], [9, 1], [19, 2]])
    out = sampled_driver_values(v, valid, pos)
    assert out[0] == 0 and out[1] == pytest.approx(1.2) and out[2] == pytest.approx(2.4)
    assert np.isnan(out[3])            # needs frame 5, which has no face
    assert out[4] == 9 and np.isnan(out[5])   # 9.5 is past the last frame
    assert correlation(np.ones(5), np.arange(5)) is None


def test_transfer_statistics_of_a_faithful_transfer(model) -> None:
    n = 50
    rng = np.random.default_rng(0)
    e = np.zeros((n, model.n_exp))
    e[:, model.exp_names.index("jawOpen")] = 0.5 * (1 + np.sin(np.arange(n) / 3.0))
    e[:, model.exp_names.index("eyeBlinkLeft")] = np.clip(np.sin(np.arange(n) / 2.0), 0, 1)
    pose = (np.tile([np.pi, 0, 0], (n, 1)), np.tile([0, 0, 60.0], (n, 1)))
    plate = synthetic_tracking(model, 0.05 * rng.normal(size=(n, model.n_exp)), *pose, start_frame=1001)
    driver = synthetic_tracking(model, e, *pose, start_frame=0)
    res = transfer_video(plate, driver, np.arange(1001, 1001 + n), plate_start_frame=1001, plate_fps=Fraction(25),
                         config=VideoDriveConfig(range_margin=None))
    st = transfer_statistics(res, driver, model, model, plate.fit.identity, driver.fit.identity)
    assert st["mouth_open"]["correlation"] > 0.999 and st["mouth_open"]["gain"] == pytest.approx(1.0, abs=5e-3)
    assert st["eye_left"]["correlation"] > 0.999
    assert st["coefficient_correlation"]["jawOpen"] > 0.999 and st["flagged_fraction"] == 0.0


@pytest.mark.slow
def test_expression_error_of_rendered_frames(model) -> None:
    from engine.face.synthetic import render_sequence, synthetic_parameters

    seq = synthetic_parameters(model, 16, size=(256, 256), focal=700.0, distance_cm=45.0, seed=3)
    frames = list(render_sequence(model, seq))
    good = expression_error(frames, seq.expression, model, identity=seq.identity, focal=seq.focal,
                            principal_point=seq.principal_point)
    assert good["tracked"] == 16
    assert good["mouth_open_correlation"] > 0.8
    wrong = expression_error(frames, seq.expression[::-1], model, identity=seq.identity, focal=seq.focal,
                             principal_point=seq.principal_point)
    assert good["mouth_open_correlation"] > 0.9 and wrong["mouth_open_correlation"] < 0.5
    assert good["landmark_motion_error_mm"] < 0.6 * wrong["landmark_motion_error_mm"]
    assert good["mouth_open_mae"] < wrong["mouth_open_mae"]
    with pytest.raises(ConfigError, match="targets of shape"):
        expression_error(frames, seq.expression[:3], model)
