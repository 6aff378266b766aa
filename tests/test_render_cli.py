"""`portrait render SHOT.yaml --frames A-B` (one array task's chunk), and the stage driven by the
lead's real CropRenderer (face-model conditioning + generator) instead of a synthetic one."""
from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest

import tools.cli
from engine.io.exr import read_exr
from engine.pipeline import ExecutorConfig, run_stages
from engine.render.composite import MatteConfig
from engine.render.synthetic import write_synthetic_plate
from engine.stages.common import FrameTiming, ShotLayout
from engine.stages.render import NeuralRenderConfig, NeuralRenderStage

SHOT = """\
schema: portrait.shot/1
show: demo
sequence: sq010
shot: sh010
fps: 24
frames: {{first: 1001, last: 1008}}
plate: {{path: plate/plate.%04d.png, timecode: "01:00:00:00"}}
actor: {{id: jdoe, consent: internal test footage}}
render: {{layout: {layout}}}
output: {{root: out}}
"""


@pytest.fixture
def shot(tmp_path):
    write_synthetic_plate(tmp_path / "plate", 8, (64, 48), kind="png")
    path = tmp_path / "sh010.yaml"
    path.write_text(SHOT.format(layout="multilayer"))
    return path


def test_render_chunk_without_model_passes_through(shot, capsys, monkeypatch):
    monkeypatch.setattr(tools.cli, "SUBCOMMANDS", ("render",))
    assert tools.cli.main(["render", str(shot), "--frames", "1003-1005"]) == 0
    out = capsys.readouterr().out
    assert "render-1003-1005" in out and "3 of 3 frame(s) passed through" in out
    folder = shot.parent / "out" / "demo" / "sq010" / "sh010" / "render" / "v001"
    exrs = sorted(p.name for p in folder.glob("*.exr"))
    assert exrs == [f"demo_sq010_sh010_render_v001.{f}.exr" for f in (1003, 1004, 1005)]
    ch, header = read_exr(folder / exrs[0])
    assert {"R", "neural.A", "matte.face", "depth.Z", "N.X", "ST.x"} <= set(ch)
    assert not ch["neural.A"].any() and header["portrait/noFace"] == "no actor model"
    assert header["timeCode"] == "01:00:00:02" and header["portrait/shotVersion"] == "v001"
    side = json.loads((folder / "demo_sq010_sh010_render_v001.noface.1003-1005.json").read_text())
    assert [e["frame"] for e in side["no_face"]] == [1003, 1004, 1005]
    # the same chunk again: same version, nothing rewritten
    mtimes = {p: p.stat().st_mtime_ns for p in folder.glob("*.exr")}
    assert tools.cli.main(["render", str(shot), "--frames", "1003-1005"]) == 0
    assert {p: p.stat().st_mtime_ns for p in folder.glob("*.exr")} == mtimes


def test_render_rejects_frames_outside_the_shot(shot, capsys, monkeypatch):
    monkeypatch.setattr(tools.cli, "SUBCOMMANDS", ("render",))
    assert tools.cli.main(["render", str(shot), "--frames", "990-1002"]) == 2
    assert "outside the shot" in capsys.readouterr().err


def test_stage_with_the_real_crop_renderer(tmp_path):
    """The lead's CropRenderer (tiny generator, untrained) on the built-in face model: the
    interface (torch tensors, maps incl. depth/normal/uv) flows through to the passes."""
    pytest.importorskip("engine.neural.online")
    from bench.render_chunk import draft_renderer, posed_params
    from engine.face.model import load_face_model

    w, h, n = 160, 120, 6
    plate = write_synthetic_plate(tmp_path / "plate", n, (w, h), kind="png")
    face_model = load_face_model("builtin")
    params = posed_params(face_model, range(1001, 1001 + n), (w, h), crop_size=64)
    layout = ShotLayout("show", "sq", "sh010", "v001", tmp_path / "render", tmp_path / "review", tmp_path / "qc")
    stage = NeuralRenderStage(plate, layout, FrameTiming(Fraction(24), 1001, 1000 + n, 1001, None),
                              NeuralRenderConfig(colourspace="sRGB", device="cpu",
                                                 matte=MatteConfig(segmentation="none")),
                              renderer=draft_renderer(face_model, "tiny", "cpu"), params=params)
    assert run_stages([stage], ExecutorConfig(kind="debug"))[0].state == "ran"
    ch, header = read_exr(layout.frame_path(1003))
    face = ch["matte.face"] > 0.5
    assert face.sum() > 100 and header["portrait/noFace"] == ""
    geo = face & (ch["depth.Z"] > 0)     # the matte also covers the mesh's eye / mouth openings
    assert geo.sum() > 0.8 * face.sum()
    z = ch["depth.Z"][geo]
    assert 40 < z.min() and z.max() < 70                      # the face ~52-60 cm from the camera
    normal = np.stack([ch["N.X"], ch["N.Y"], ch["N.Z"]], -1).astype(np.float32)[geo]
    assert np.allclose(np.linalg.norm(normal, axis=-1), 1, atol=0.05) and (normal[:, 2] < 0).mean() > 0.9
    assert ch["ST.x"][geo].min() > 0 and ch["neural.A"].max() == 1
    # paste-back geometry: the depth pass covers where the posed mesh projects in the plate
    import cv2
    i = params.index_of(1003)
    R = cv2.Rodrigues(params.rotation[i].astype(np.float64))[0]
    cam = np.asarray(face_model.neutral, np.float64) @ R.T + params.translation[i]
    uv = cam[:, :2] / cam[:, 2:3] * params.focal + params.principal_point
    ys, xs = np.nonzero(ch["depth.Z"] > 0)
    assert abs(xs.min() + 0.5 - uv[:, 0].min()) < 2.5 and abs(xs.max() + 0.5 - uv[:, 0].max()) < 2.5
    assert abs(ys.min() + 0.5 - uv[:, 1].min()) < 2.5 and abs(ys.max() + 0.5 - uv[:, 1].max()) < 2.5


def test_job_id_of_an_array_task_in_the_metadata(shot, monkeypatch, capsys):
    monkeypatch.setattr(tools.cli, "SUBCOMMANDS", ("render",))
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "7700")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_JOB_ID", "7703")
    assert tools.cli.main(["render", str(shot), "--frames", "1001-1001"]) == 0
    folder = shot.parent / "out" / "demo" / "sq010" / "sh010" / "render" / "v001"
    _, header = read_exr(folder / "demo_sq010_sh010_render_v001.1001.exr")
    assert header["portrait/jobId"] == "7700_3"
