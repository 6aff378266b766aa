"""QC report (#9): gates, measurements on a real face (the demo astronaut), the written report
and JSON, the `portrait qc` command. Synthetic renders made from the plate, so each check
knows what it must find."""
from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.demo import demo_frames
from engine.io.exr import write_exr
from engine.qc.gates import default_thresholds, evaluate_gates, verdict
from engine.qc.measure import MeasureConfig
from engine.qc.plots import Marker, Series, line_plot
from engine.qc.stage import QcInputs, QcReportConfig, run_qc
from tools.cli import main

N = 10
FPS = Fraction(25)
FAST = MeasureConfig(perceptual=False, identity=False, contact_every=3)


def _png_seq(folder: Path, frames: list[np.ndarray], skip: tuple[int, ...] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, img in enumerate(frames):
        if 1001 + k not in skip:
            cv2.imwrite(str(folder / f"f.{1001 + k:04d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return folder / "f.%04d.png"


@pytest.fixture(scope="module")
def plate(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    frames = demo_frames(N, 192)
    return _png_seq(tmp_path_factory.mktemp("plate"), frames), frames


def test_gates_order_values_and_na() -> None:
    summary = {"frames_missing": 0, "psnr_db": 24.0, "ssim": 0.95, "lmd_px": 1.0, "av_offset_frames": -4.6,
               "flicker": 0.001, "identity": None, "no_face_fraction": 0.0}
    gates = evaluate_gates(summary, {"psnr_min": 26.0}, {"identity": "no face in the plate"})
    assert [g.status for g in gates[:2]] == ["fail", "fail"]
    assert {g.name for g in gates[:2]} == {"psnr_min", "av_offset_max_frames"}
    av = next(g for g in gates if g.name == "av_offset_max_frames")
    assert av.value == -4.6 and av.threshold == 1 and "-4.6 frames" in av.reason   # |offset| is gated
    na = next(g for g in gates if g.name == "identity_min")
    assert na.status == "n/a" and na.reason == "no face in the plate" and na.passed
    assert verdict(gates) == "FAIL"
    ok = evaluate_gates({**summary, "psnr_db": 30.0, "av_offset_frames": 0.4}, {})
    assert verdict(ok) == "PASS"
    assert set(default_thresholds()) >= {"psnr_min", "ssim_min", "lmd_max_px", "av_offset_max_frames",
                                          "flicker_max", "identity_min", "no_face_max_fraction"}


def test_plot_svg_handles_gaps_and_markers() -> None:
    v = np.array([1.0, 2.0, np.nan, 3.0, np.nan, np.nan])
    svg = line_plot(np.arange(1001, 1007), [Series("x", v), Series("empty", np.full(6, np.nan))], title="t",
                    threshold=2.5, markers=[Marker(1002.5, "P 0.1-0.2s", strong=True, x_end=1003.0)], shade=[1005])
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<polyline") == 1 and svg.count("<circle") == 1   # NaN breaks the line
    assert "stroke-dasharray" in svg and "<title>frame 1005" in svg


def test_passthrough_passes_and_report_is_self_contained(plate, tmp_path: Path) -> None:
    plate_path, frames = plate
    render = _png_seq(tmp_path / "render", frames)
    res = run_qc(QcInputs(render=render, plate=plate_path, fps=FPS, first=1001, last=1000 + N,
                          plate_colourspace="sRGB", title="passthrough"), tmp_path / "qc",
                 QcReportConfig(measure=FAST))
    s = res.summary
    assert res.verdict == "PASS", [g.reason for g in res.gates if g.status == "fail"]
    assert s["lmd_px"] == 0.0 and s["no_face_frames"] == [] and s["psnr_db"] > 100 and s["flicker"] == 0.0
    page = res.report.read_text()
    assert page.count("data:image/png;base64,") >= 3 and "<svg" in page
    # self-contained: no external resource of any kind
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert not re.search(r"<link|<script|url\(|@import|https?://(?!www\.w3\.org/2000/svg)", page)
    m = json.loads(res.metrics.read_text())
    assert m["schema"] == "portrait.qc-report/2" and m["verdict"] == "PASS"
    assert len(m["per_frame"]["frame"]) == N and len(m["per_frame"]["lmd_face"]) == N
    assert m["unavailable"]["av_offset_frames"] == "no audio for this shot"
    assert any(k.startswith("sha256 plate") for k in m["provenance"])


def test_damaged_render_fails_with_reasons_first(plate, tmp_path: Path) -> None:
    """A missing frame, a noisy frame and a frame whose face is gone: FAIL, those gates first,
    the noisy frame among the worst, the faceless one in the no-face list."""
    plate_path, frames = plate
    bad = [f.copy() for f in frames]
    rng = np.random.default_rng(0)
    bad[3] = np.clip(bad[3].astype(np.int16) + rng.integers(-60, 60, bad[3].shape), 0, 255).astype(np.uint8)
    bad[6] = np.full_like(bad[6], 128)                      # no face at all
    render = _png_seq(tmp_path / "render", bad, skip=(1009,))
    res = run_qc(QcInputs(render=render, plate=plate_path, fps=FPS, first=1001, last=1000 + N,
                          plate_colourspace="sRGB"), tmp_path / "qc", QcReportConfig(measure=FAST))
    assert res.verdict == "FAIL"
    failing = [g.name for g in res.gates if g.status == "fail"]
    assert [g.status for g in res.gates[:len(failing)]] == ["fail"] * len(failing)
    assert {"frames_missing_max", "no_face_max_fraction"} <= set(failing)
    assert res.summary["missing_frames"] == [1009] and res.summary["no_face_frames"] == [1007]
    m = json.loads(res.metrics.read_text())
    psnr = m["per_frame"]["psnr_face"]
    assert psnr[3] < 30 and psnr[0] > 100
    page = res.report.read_text()
    assert page.index("FAIL") < page.index("within threshold")
    assert "1007" in page and "worst frame" in page
    assert set(m["worst_frames"][:2]) == {1004, 1007}     # the noisy and the faceless frame


def test_matte_edge_stability_sees_a_boiling_edge(plate, tmp_path: Path) -> None:
    """EXR renders with a ``matte.face`` layer: a matte that jitters by a few pixels frame to
    frame scores far higher than one that moves smoothly."""
    plate_path, frames = plate
    h, w = frames[0].shape[:2]
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    rng = np.random.default_rng(1)

    def write(folder: Path, jitter: float) -> Path:
        folder.mkdir()
        for k, img in enumerate(frames):
            lin = (img.astype(np.float32) / 255.0) ** 2.4   # Rec.709 display -> linear, as the render stage
            r = 50 + 0.5 * k + jitter * rng.standard_normal()
            matte = np.clip(r - np.hypot(xx - w / 2, yy - h / 2), 0, 1).astype(np.float32)
            rgba = np.dstack([lin, np.ones((h, w), np.float32)]).astype(np.float16)
            write_exr(folder / f"r.{1001 + k:04d}.exr", {"rgba": rgba, "matte.face": matte.astype(np.float16)},
                      metadata={"portrait/colourspace": "Linear Rec.709"})
        return folder / "r.%04d.exr"

    vals = {}
    for name, jit in (("smooth", 0.0), ("boiling", 3.0)):
        res = run_qc(QcInputs(render=write(tmp_path / name, jit), plate=plate_path, fps=FPS, first=1001,
                              last=1000 + N, plate_colourspace="Rec.709"), tmp_path / f"qc_{name}",
                     QcReportConfig(measure=FAST))
        vals[name] = res.summary["matte_edge"]
        assert res.summary["psnr_db"] > 40    # the display transform inverts the plate's encoding
    assert vals["boiling"] > 5 * vals["smooth"], vals


def test_cli_render_mode_exit_codes(plate, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    plate_path, frames = plate
    render = _png_seq(tmp_path / "render", frames)
    args = ["qc", "--render", str(render), "--plate", str(plate_path), "--fps", "25", "--plate-colourspace", "sRGB",
            "--no-perceptual", "--no-identity"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert "verdict: PASS" in capsys.readouterr().out
    assert main(args + ["--out", str(tmp_path / "b"), "--threshold", "flicker_max=-1"]) == 3
    out = capsys.readouterr().out
    assert "verdict: FAIL" in out and "FAIL flicker_max" in out
    assert main(["qc", "--render", str(render)]) == 2
    assert capsys.readouterr().err.startswith("error: --render needs --plate")


def test_qc_stage_runs_in_the_shot_graph(tmp_path: Path) -> None:
    """The stage the shot graph builds (``shot_qc_stage``) runs through the pipeline in place of
    the foundation's report, on the demo shot, and writes the full report into qc/vNNN."""
    from engine.demo import build_demo
    from engine.pipeline import ExecutorConfig, run_stages
    from engine.qc.stage import QcStage, shot_qc_stage
    from engine.shot import load_shot
    from engine.shotgraph import plan_shot

    shot = load_shot(build_demo(tmp_path / "demo", frames=8, executor="debug"))
    plan = plan_shot(shot)
    try:
        qc = shot_qc_stage(shot, plan.layout, plan.timing, {"shotFile": str(shot.source)}, perceptual=False,
                           identity=False)
        stages = [qc if s.name == "qc" else s for s in plan.stages]
        assert any(isinstance(s, QcStage) for s in stages)
        run_stages(stages, ExecutorConfig(kind="debug"), deps=plan.deps, version=plan.versions[0])
    finally:
        for v in plan.versions:
            v.release()
    m = json.loads((plan.layout.qc_dir / "metrics.json").read_text())
    assert m["verdict"] == "PASS" and m["frames"]["missing"] == [] and m["review_movie"]["ok"]
    assert m["inputs"]["audio"].endswith("astronaut_plate.mp4") and m["provenance"]["shotFile"] == str(shot.source)
    assert qc.check().state == "done"


def test_lip_sync_not_measured_on_a_face_that_does_not_articulate(tmp_path: Path) -> None:
    """The demo's still photo: the re-tracked mouth only jitters (p95-p5 0.024 inter-ocular).
    Against dialogue-like audio it must not produce an AV offset to gate (it used to give
    -2.9 frames and FAIL the demo); a mouth that really moves is measured."""
    from engine.demo import demo_audio
    from engine.qc.measure import lip_sync
    from engine.qc.media import AudioTrack

    n = 120
    audio = AudioTrack(demo_audio(n), 16000, 1001, tmp_path / "demo.wav")
    rng = np.random.default_rng(0)
    jitter = 0.30 + 0.0075 * rng.standard_normal(n)          # p95-p5 ~0.025, like the demo
    unavailable: dict[str, str] = {}
    out = lip_sync(jitter, audio, FPS, 1001, n, MeasureConfig(), unavailable)
    assert "av_offset_frames" not in out and "hardly moves" in unavailable["av_offset_frames"]
    # a mouth that opens and closes (syllables, 0.2 inter-ocular) is analysed
    t = np.arange(n) / 25.0
    talking = 0.25 + 0.1 * np.clip(np.sin(2 * np.pi * 4.0 * (t - 0.04)), 0, None)
    unavailable = {}
    out = lip_sync(talking, audio, FPS, 1001, n, MeasureConfig(), unavailable)
    assert "av_offset_frames" in out and "av_offset_frames" not in unavailable, unavailable
    assert out["av_p_value"] is not None and 0.0 < out["av_p_value"] <= 1.0
