"""The QC report in a real browser: headless Chromium (Debian package ``chromium``) renders it
without errors and the screenshot is not blank; the checker itself catches a script error, a
broken image and a blank page (negative controls, so the check can fail)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.demo import demo_frames
from engine.qc.browser import check_page, find_chromium, is_blank
from engine.qc.measure import MeasureConfig
from engine.qc.stage import QcInputs, QcReportConfig, run_qc

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="chromium not installed (Debian: apt-get install -y chromium)")


def _seq(folder: Path, frames: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True)
    for k, img in enumerate(frames):
        cv2.imwrite(str(folder / f"f.{1001 + k:04d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return folder / "f.%04d.png"


def test_report_renders_without_errors(tmp_path: Path) -> None:
    frames = demo_frames(8, 160)
    render = [f.copy() for f in frames]
    render[4] = cv2.GaussianBlur(render[4], (0, 0), 3)          # something to see in the difference
    res = run_qc(QcInputs(render=_seq(tmp_path / "r", render), plate=_seq(tmp_path / "p", frames), fps=Fraction(25),
                          first=1001, last=1008, plate_colourspace="sRGB", title="browser test"),
                 tmp_path / "qc", QcReportConfig(measure=MeasureConfig(perceptual=False, identity=False)))
    chk = check_page(res.report, tmp_path / "shot.png", window_size=(1200, 1600))
    assert chk.errors == [] and chk.log_errors == []
    assert not chk.blank and chk.title.startswith(f"QC {res.verdict}")
    img = cv2.imread(str(chk.screenshot))
    assert img.shape[:2] == (1600, 1200)
    # the verdict banner is drawn: the top rows are the verdict colour (green PASS / red FAIL)
    top = img[5:40, 5:400].reshape(-1, 3).mean(0)       # BGR
    assert (top[1] > top[2] + 40) if res.verdict == "PASS" else (top[2] > top[1] + 40), top


def test_checker_catches_errors_and_blank_pages(tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text('<!doctype html><html><head><title>bad</title></head><body><h1>x</h1>'
                   '<img alt="broken" src="data:image/png;base64,AAAA">'
                   '<script>undefinedFunction();</script></body></html>')
    chk = check_page(bad, tmp_path / "bad.png", window_size=(400, 300))
    text = " ".join(chk.errors + chk.log_errors)
    assert "undefinedFunction" in text and "did not decode" in text and not chk.ok
    blank = tmp_path / "blank.html"
    blank.write_text("<!doctype html><html><body style='background:#fff'></body></html>")
    chk = check_page(blank, tmp_path / "blank.png", window_size=(400, 300))
    assert chk.blank and not chk.ok
    assert is_blank(np.zeros((50, 50, 3), np.uint8)) and not is_blank(
        np.random.default_rng(0).integers(0, 255, (50, 50, 3), dtype=np.uint8))
