"""Final render stage: delivery EXRs (channels, types, windows, metadata in OpenImageIO and
exrheader), composite rebuilt from the passes, plate pixels outside the matte bit-identical,
no-face frames, resume / adoption of frames, seamless chunks."""
from __future__ import annotations

import json
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from engine.io.exr import read_exr
from engine.io.plate import open_plate
from engine.pipeline import ExecutorConfig, run_stages
from engine.render import ocio
from engine.render.composite import MatteConfig
from engine.render.passes import PASS_CHANNELS, pass_channels
from engine.render.synthetic import SyntheticCropRenderer, synthetic_params, write_synthetic_plate
from engine.stages.common import FrameTiming, ShotLayout
from engine.stages.render import NeuralRenderConfig, NeuralRenderStage

W, H = 192, 144
N = 10
FIRST = 1001
NO_FACE = 1005
FPS = Fraction(24)


def _layout(root: Path) -> ShotLayout:
    return ShotLayout("show", "sq", "sh010", "v001", root / "render", root / "review", root / "qc")


def _timing(first=FIRST, last=FIRST + N - 1) -> FrameTiming:
    return FrameTiming(FPS, first, last, FIRST, "01:00:00:00")


def _params():
    return synthetic_params(range(FIRST, FIRST + N), (W, H), usable=[f != NO_FACE for f in range(FIRST, FIRST + N)])


def _stage(root, plate, space, *, frames=None, name=None, layout="multilayer", **cfg):
    config = NeuralRenderConfig(colourspace=space, layout=layout, owner="show", comments="test render",
                                provenance={"drivingSource": "test"}, matte=MatteConfig(segmentation="none"), **cfg)
    return NeuralRenderStage(plate, _layout(root), _timing(), config, frames=frames, name=name,
                             renderer=SyntheticCropRenderer(48), params=_params())


def _run(stage):
    return run_stages([stage], ExecutorConfig(kind="debug"))


@pytest.fixture(scope="module")
def png_render(tmp_path_factory):
    root = tmp_path_factory.mktemp("png")
    plate = write_synthetic_plate(root / "plate", N, (W, H), kind="png")
    stage = _stage(root, plate, "sRGB")
    _run(stage)
    return root, plate, stage


@pytest.fixture(scope="module")
def exr_render(tmp_path_factory):
    root = tmp_path_factory.mktemp("exr")
    plate = write_synthetic_plate(root / "plate", N, (W, H), kind="exr")
    stage = _stage(root, plate, "ACEScg", layout="multipart")
    _run(stage)
    return root, plate, stage


def _plates(plate, space):
    with open_plate(plate, FPS, FIRST) as src:
        return {f: ocio.plate_to_linear(img, space) for f, img in src.iter(FIRST, FIRST + N - 1)}


def _rgb(ch):
    return np.stack([ch["R"], ch["G"], ch["B"]], -1)


def test_files_naming_and_sidecar(png_render):
    root, _, stage = png_render
    names = sorted(p.name for p in (root / "render").glob("*.exr"))
    assert names == [f"show_sq_sh010_render_v001.{f:04d}.exr" for f in range(FIRST, FIRST + N)]
    side = json.loads(stage.sidecar_path.read_text())
    assert side["schema"] == "portrait.render-noface/1"
    assert [e["frame"] for e in side["no_face"]] == [NO_FACE]


def test_oiio_channels_types_windows_metadata(png_render):
    import OpenImageIO as oiio

    root, _, stage = png_render
    path = stage.layout.frame_path(1003)
    inp = oiio.ImageInput.open(str(path))
    assert inp is not None, oiio.geterror()
    spec = inp.spec()
    want = pass_channels(PASS_CHANNELS)
    assert sorted(spec.channelnames) == sorted(want)
    formats = spec.channelformats or [spec.format] * spec.nchannels
    for name, fmt in zip(spec.channelnames, formats):
        assert str(fmt) == want[name], name
    assert (spec.full_x, spec.full_y, spec.full_width, spec.full_height) == (0, 0, W, H)
    assert (spec.x, spec.y, spec.width, spec.height) == (0, 0, W, H)
    assert spec.get_string_attribute("compression").startswith("zip")
    assert spec.get_string_attribute("smpte:TimeCode") == "01:00:00:02"
    # OpenImageIO's names for the EXR standard attributes owner / comments
    assert spec.get_string_attribute("Copyright") == "show"
    assert spec.get_string_attribute("ImageDescription") == "test render"
    assert tuple(spec.getattribute("framesPerSecond")) == (24, 1)
    for key in ("portrait/engineVersion", "portrait/actorModelHash", "portrait/drivingSource",
                "portrait/shotVersion", "portrait/plateHash", "portrait/renderFingerprint"):
        assert spec.getattribute(key) is not None, key
    assert spec.get_string_attribute("portrait/shotVersion") == "v001"
    inp.close()


def test_exrheader_independent_reader(png_render, exr_render):
    exrheader = shutil.which("exrheader")
    if exrheader is None:
        pytest.skip("exrheader (Debian package openexr) not installed")
    _, _, stage = png_render
    out = subprocess.run([exrheader, str(stage.layout.frame_path(1002))], capture_output=True, text=True,
                         check=True).stdout
    for line in ("R, 16-bit floating-point", "neural.A, 16-bit floating-point", "matte.face, 16-bit floating-point",
                 "matte.mouth, 16-bit floating-point", "depth.Z, 32-bit floating-point", "N.X, 16-bit floating-point",
                 "ST.x, 32-bit floating-point", "ST.y, 32-bit floating-point",
                 "compression (type compression): zip", f"displayWindow (type box2i): (0 0) - ({W - 1} {H - 1})",
                 f"dataWindow (type box2i): (0 0) - ({W - 1} {H - 1})", "framesPerSecond (type rational): 24/1",
                 "time 01:00:00:01", 'owner (type string): "show"', 'comments (type string): "test render"',
                 'portrait/shotVersion (type string): "v001"', "portrait/engineVersion", "portrait/jobId",
                 "portrait/actorModelHash", "portrait/drivingSource"):
        assert line in out, line
    # multipart: each AOV part has the face's bounding box as its data window
    _, _, mstage = exr_render
    out = subprocess.run([exrheader, str(mstage.layout.frame_path(1002))], capture_output=True, text=True,
                         check=True).stdout
    assert out.count("dataWindow") == 6 and 'name (type string): "depth"' in out
    windows = [line.split(":", 1)[1] for line in out.splitlines() if line.startswith("dataWindow")]
    assert windows[0].strip() == f"(0 0) - ({W - 1} {H - 1})"
    assert all(w != windows[0] for w in windows[1:])


def test_composite_rebuilt_from_passes_and_outside_matte_exact(png_render):
    root, plate, stage = png_render
    plates = _plates(plate, "sRGB")
    changed = 0
    for f in range(FIRST, FIRST + N):
        ch, header = read_exr(stage.layout.frame_path(f))
        rgb = _rgb(ch).astype(np.float32)
        m = ch["matte.face"].astype(np.float32)[:, :, None]
        neural = np.stack([ch["neural.R"], ch["neural.G"], ch["neural.B"]], -1).astype(np.float32)
        rebuilt = plates[f] * (1 - m) + neural * m
        # within half precision: the rounding of the stored result itself
        tol = np.maximum(np.abs(rebuilt), 2.0 ** -14) * 2.0 ** -10
        assert np.all(np.abs(rebuilt - rgb) <= tol), f
        outside = m[:, :, 0] == 0
        plate_half = plates[f].astype(np.float16)
        assert np.array_equal(_rgb(ch)[outside].view(np.uint16), plate_half[outside].view(np.uint16)), f
        assert np.all(ch["A"] == 1)
        if f == NO_FACE:
            assert not m.any() and not ch["neural.A"].any() and header["portrait/noFace"]
            assert np.array_equal(_rgb(ch).view(np.uint16), plate_half.view(np.uint16))
        else:
            inside = m[:, :, 0] > 0.5
            assert inside.sum() > 200
            # the render (a tinted plate) really changed the pixels under the matte
            changed += int((np.abs(rgb - plates[f]).max(-1)[inside] > 1e-2).sum())
            assert ch["depth.Z"].dtype == np.float32 and ch["depth.Z"][inside].min() > 2.5
            n = np.stack([ch["N.X"], ch["N.Y"], ch["N.Z"]], -1).astype(np.float32)[inside]
            assert np.allclose(np.linalg.norm(n, axis=-1), 1.0, atol=0.05)
            assert (ch["ST.x"][inside] > 0).all() and (ch["matte.mouth"] > 0.5).any()
            assert ch["neural.A"].max() == 1 and (ch["neural.A"] == 0).any()
    assert changed > 1000


def test_exr_plate_outside_matte_bit_identical(exr_render):
    root, plate, stage = exr_render
    for f in (FIRST, NO_FACE, FIRST + N - 1):
        src, _ = read_exr(Path(str(plate).replace("%04d", f"{f:04d}")))
        out, header = read_exr(stage.layout.frame_path(f))
        assert header["portrait/colourspace"] == "ACEScg" and header["portrait/ocioColourspace"] == "ACEScg"
        m = np.zeros((H, W), np.float32)
        (x0, y0), (x1, y1) = next(p for p in header["parts"] if p["name"] == "matte")["dataWindow"]
        m[y0:y1 + 1, x0:x1 + 1] = out["matte.face"]
        outside = m == 0
        for c in "RGB":
            assert np.array_equal(out[c][outside].view(np.uint16), src[c][outside].view(np.uint16)), (f, c)
        if f != NO_FACE:
            assert (m > 0.5).sum() > 200


def test_resume_renders_only_missing_or_invalid_frames(tmp_path):
    plate = write_synthetic_plate(tmp_path / "plate", N, (W, H), kind="png")
    stage = _stage(tmp_path, plate, "sRGB")
    _run(stage)
    paths = {f: stage.layout.frame_path(f) for f in range(FIRST, FIRST + N)}
    before = {f: p.stat().st_mtime_ns for f, p in paths.items()}
    paths[1002].unlink()
    with open(paths[1007], "r+b") as fh:      # truncate: an invalid frame
        fh.truncate(paths[1007].stat().st_size // 2)
    _run(_stage(tmp_path, plate, "sRGB"))
    after = {f: p.stat().st_mtime_ns for f, p in paths.items()}
    assert {f for f in paths if after[f] != before[f]} == {1002, 1007}
    assert read_exr(paths[1007])[0]["R"].shape == (H, W)
    # A lost ledger: complete frames carrying this stage's fingerprint are adopted, not rendered.
    stage.ledger_path().unlink()
    snap = {f: p.stat().st_mtime_ns for f, p in paths.items()}
    _run(_stage(tmp_path, plate, "sRGB"))
    assert {f: p.stat().st_mtime_ns for f, p in paths.items()} == snap
    # Other params (another matte): nothing is adopted, every frame is rendered again.
    _run(_stage(tmp_path, plate, "sRGB", temporal=__import__("engine.render.temporal", fromlist=["x"])
                .TemporalConfig(matte_sigma=2.0)))
    assert all(p.stat().st_mtime_ns != snap[f] for f, p in paths.items())


def test_chunks_are_seamless(tmp_path, png_render):
    root, plate, whole = png_render
    for a, b in ((FIRST, FIRST + 3), (FIRST + 4, FIRST + N - 1)):
        _run(_stage(tmp_path, plate, "sRGB", frames=list(range(a, b + 1)), name=f"render-{a}-{b}"))
    for f in range(FIRST, FIRST + N):
        x, _ = read_exr(whole.layout.frame_path(f))
        y, _ = read_exr(_layout(tmp_path).frame_path(f))
        for k in x:
            assert np.array_equal(x[k], y[k]), (f, k)
