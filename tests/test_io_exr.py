"""EXR writing, checked with independent readers: Debian's `exrheader` and OpenImageIO.

Our own read_exr is also checked, but a writer validated only by its own reader can share
its mistakes; the two independent readers catch naming, pixel-type, window, compression and
metadata errors the way Nuke or RV would see them.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from engine.errors import MediaError, OutputExistsError
from engine.io.exr import Layer, exr_frame_metadata, read_exr, sync_files, write_exr
from engine.io.sequence import ImageSequenceSource, sequence_path

H, W = 36, 52
DISPLAY = (0, 0, 127, 71)           # 128 x 72 frame
DATA = (40, 20, 40 + W - 1, 20 + H - 1)  # a "face bbox" region inside it


# -- independent readers -------------------------------------------------------------------

def exrheader(path: Path) -> list[dict[str, dict]]:
    """Parse `exrheader` output into one dict per part: attr -> {type, value, lines}."""
    exe = shutil.which("exrheader")
    if exe is None:
        pytest.skip("exrheader (Debian package openexr) not installed")
    text = subprocess.run([exe, str(path)], capture_output=True, text=True, check=True).stdout
    parts: list[dict[str, dict]] = []
    current: dict[str, dict] | None = None
    attr = None
    for line in text.splitlines():
        if re.match(r"^\s*part \d+:", line):
            current = {}
            parts.append(current)
            continue
        m = re.match(r"^(\S[^(]*?) \(type (\w+)\):?\s?(.*)$", line)
        if m:
            if current is None:
                current = {}
                parts.append(current)
            attr = m.group(1)
            current[attr] = {"type": m.group(2), "value": m.group(3).strip(), "lines": []}
        elif line.startswith("    ") and attr and current is not None:
            current[attr]["lines"].append(line.strip())
    return parts


def exrheader_channels(part: dict) -> dict[str, str]:
    out = {}
    for line in part["channels"]["lines"]:
        name, kind = line.split(",")[:2]
        out[name.strip()] = {"16-bit floating-point": "half", "32-bit floating-point": "float",
                             "32-bit unsigned integer": "uint"}[kind.strip()]
    return out


def oiio():
    try:
        import OpenImageIO
    except ImportError:
        pytest.skip("OpenImageIO python module not installed")
    return OpenImageIO


def oiio_specs(path: Path) -> list:
    OpenImageIO = oiio()
    inp = OpenImageIO.ImageInput.open(str(path))
    assert inp is not None, OpenImageIO.geterror()
    specs = []
    n = 0
    while inp.seek_subimage(n, 0):
        specs.append(inp.spec())
        n += 1
    inp.close()
    return specs


def bcd_timecode(packed: int) -> str:
    """SMPTE time-and-flags word (as OIIO reports it) -> HH:MM:SS:FF / ;FF."""
    def bcd(v, shift, tens_bits):
        return ((v >> shift) & 0xF) + 10 * ((v >> (shift + 4)) & ((1 << tens_bits) - 1))
    f, s, m, h = bcd(packed, 0, 2), bcd(packed, 8, 3), bcd(packed, 16, 3), bcd(packed, 24, 2)
    drop = (packed >> 6) & 1
    return f"{h:02d}:{m:02d}:{s:02d}{';' if drop else ':'}{f:02d}"


# -- fixtures ------------------------------------------------------------------------------

def _layers(rng):
    rgba = rng.uniform(-0.5, 8.0, (H, W, 4)).astype(np.float32)   # scene-linear, > 1 allowed
    return {
        "rgba": rgba,
        "neural": rng.uniform(0, 1, (H, W, 3)).astype(np.float32),
        "matte.face": rng.uniform(0, 1, (H, W)).astype(np.float32),
        "depth.Z": rng.uniform(30, 200, (H, W)).astype(np.float32),
    }


@pytest.fixture()
def frame(tmp_path):
    rng = np.random.default_rng(7)
    layers = _layers(rng)
    layer_list = [Layer("", layers["rgba"]), Layer("neural", layers["neural"]),
                  Layer("matte", layers["matte.face"], channels=("face",)),
                  Layer("depth", layers["depth.Z"]),
                  Layer("N", rng.normal(size=(H, W, 3)).astype(np.float32)),
                  Layer("ST", rng.uniform(0, 1, (H, W, 2)).astype(np.float32))]
    meta = exr_frame_metadata(1025, Fraction(24000, 1001), start_frame=1001,
                              start_timecode="01:00:00:00", owner="Portrait Studio",
                              comments="take 3, dub FR",
                              provenance={"engineVersion": "0.1.0", "actorModelHash": "ab12cd34"})
    path = write_exr(tmp_path / "shot.1025.exr", layer_list, display_window=DISPLAY,
                     data_window=DATA, metadata=meta)
    return path, layer_list


EXPECTED_TYPES = {"R": "half", "G": "half", "B": "half", "A": "half",
                  "neural.R": "half", "neural.G": "half", "neural.B": "half",
                  "matte.face": "half", "depth.Z": "float",
                  "N.X": "half", "N.Y": "half", "N.Z": "half", "ST.x": "half", "ST.y": "half"}


def test_read_back_ourselves(frame):
    path, layers = frame
    channels, header = read_exr(path)
    assert set(channels) == set(EXPECTED_TYPES)
    assert header["pixel_types"] == EXPECTED_TYPES
    assert channels["R"].dtype == np.float16 and channels["depth.Z"].dtype == np.float32
    assert channels["R"].shape == (H, W)
    np.testing.assert_array_equal(channels["depth.Z"], layers[3].data)         # float: exact
    np.testing.assert_array_equal(channels["G"], layers[0].data[..., 1].astype(np.float16))
    np.testing.assert_array_equal(channels["ST.y"], layers[5].data[..., 1].astype(np.float16))
    assert header["dataWindow"] == ((DATA[0], DATA[1]), (DATA[2], DATA[3]))
    assert header["displayWindow"] == ((0, 0), (127, 71))
    assert header["framesPerSecond"] == Fraction(24000, 1001)
    assert header["timeCode"] == "01:00:01:00"  # 24 frames after 01:00:00:00 at 24 fps nominal
    assert header["owner"] == "Portrait Studio" and header["comments"] == "take 3, dub FR"
    assert header["portrait/actorModelHash"] == "ab12cd34"
    assert header["compression"] == "zip"


def test_exrheader_sees_layers_types_windows_metadata(frame):
    path, _ = frame
    (part,) = exrheader(path)
    assert exrheader_channels(part) == EXPECTED_TYPES
    assert part["compression"]["value"].startswith("zip")
    assert part["dataWindow"]["value"] == f"({DATA[0]} {DATA[1]}) - ({DATA[2]} {DATA[3]})"
    assert part["displayWindow"]["value"] == "(0 0) - (127 71)"
    assert part["framesPerSecond"]["type"] == "rational"
    assert part["framesPerSecond"]["value"].startswith("24000/1001")
    assert part["timeCode"]["type"] == "timecode"
    assert "time 01:00:01:00" in part["timeCode"]["lines"]
    assert any(x.startswith("drop frame 0") for x in part["timeCode"]["lines"])
    assert part["owner"]["value"] == '"Portrait Studio"'
    assert part["comments"]["value"] == '"take 3, dub FR"'
    assert part["portrait/engineVersion"] == {"type": "string", "value": '"0.1.0"', "lines": []}
    assert part["portrait/actorModelHash"]["value"] == '"ab12cd34"'


def test_openimageio_sees_layers_types_windows_metadata(frame):
    path, layers = frame
    (spec,) = oiio_specs(path)
    names = list(spec.channelnames)
    assert set(names) == set(EXPECTED_TYPES)
    types = {n: str(f) for n, f in zip(names, spec.channelformats)} if spec.channelformats else {}
    assert types == EXPECTED_TYPES
    assert (spec.x, spec.y, spec.width, spec.height) == (DATA[0], DATA[1], W, H)
    assert (spec.full_x, spec.full_y, spec.full_width, spec.full_height) == (0, 0, 128, 72)
    assert spec.getattribute("compression") == "zip"
    assert tuple(spec.getattribute("framesPerSecond")) == (24000, 1001)
    assert bcd_timecode(spec.getattribute("smpte:TimeCode")[0]) == "01:00:01:00"
    assert spec.getattribute("Copyright") == "Portrait Studio"        # OIIO's name for owner
    assert spec.getattribute("ImageDescription") == "take 3, dub FR"  # ... and for comments
    assert spec.getattribute("portrait/actorModelHash") == "ab12cd34"
    # pixels: OIIO reads the depth channel bit-exact
    OpenImageIO = oiio()
    buf = OpenImageIO.ImageBuf(str(path))
    px = buf.get_pixels(OpenImageIO.FLOAT)
    np.testing.assert_array_equal(px[..., names.index("depth.Z")], layers[3].data)


@pytest.mark.parametrize("compression,exrh,oiio_name", [
    ("zip", "zip, multi-scanline blocks", "zip"),
    ("piz", "piz", "piz"),
    ("dwaa", "dwa, small scanline blocks", "dwaa"),
    ("none", "none", "none"),
])
def test_compression_per_file(tmp_path, compression, exrh, oiio_name):
    rgb = np.tile(np.linspace(0, 1, W, dtype=np.float32)[None, :, None], (H, 1, 3))
    path = write_exr(tmp_path / f"{compression}.exr", {"rgb": rgb}, compression=compression)
    (part,) = exrheader(path)
    assert part["compression"]["value"] == exrh
    (spec,) = oiio_specs(path)
    assert str(spec.getattribute("compression")).split(":")[0] == oiio_name
    channels, header = read_exr(path)
    assert header["compression"] == compression
    tol = 0.02 if compression == "dwaa" else 0.0  # DWAA is lossy, the others are exact (half)
    np.testing.assert_allclose(channels["R"].astype(np.float32),
                               rgb[..., 0].astype(np.float16).astype(np.float32), atol=tol)


def test_pixel_type_overrides_and_uint(tmp_path):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 2**31, (H, W), dtype=np.uint32)
    path = write_exr(tmp_path / "t.exr",
                     {"rgba": rng.uniform(0, 1, (H, W, 4)).astype(np.float32),
                      "neural": rng.uniform(0, 1, (H, W, 3)).astype(np.float32),
                      "id.object": ids, "P": rng.normal(size=(H, W, 3)).astype(np.float32)},
                     pixel_types={"neural": "float", "A": "float"})
    types = exrheader_channels(exrheader(path)[0])
    assert types["neural.R"] == "float" and types["A"] == "float" and types["R"] == "half"
    assert types["id.object"] == "uint"
    assert types["P.X"] == "float"  # positions default to float like depth
    channels, _ = read_exr(path)
    np.testing.assert_array_equal(channels["id.object"], ids)


def test_multipart(tmp_path):
    rng = np.random.default_rng(3)
    layers = _layers(rng)
    path = write_exr(tmp_path / "mp.exr", layers, multipart=True,
                     metadata={"framesPerSecond": Fraction(25), "owner": "x"})
    parts = exrheader(path)
    assert [p["name"]["value"] for p in parts] == ['"rgba"', '"neural"', '"matte"', '"depth"']
    assert set(exrheader_channels(parts[3])) == {"depth.Z"}
    assert exrheader_channels(parts[3])["depth.Z"] == "float"
    specs = oiio_specs(path)
    assert [s.getattribute("name") for s in specs] == ["rgba", "neural", "matte", "depth"]
    assert [tuple(s.channelnames) for s in specs][2] == ("matte.face",)
    channels, header = read_exr(path)
    assert set(channels) == {"R", "G", "B", "A", "neural.R", "neural.G", "neural.B", "matte.face", "depth.Z"}
    assert [p["name"] for p in header["parts"]] == ["rgba", "neural", "matte", "depth"]
    np.testing.assert_array_equal(channels["depth.Z"], layers["depth.Z"])


def test_drop_frame_and_high_rate_timecode(tmp_path):
    rgb = np.zeros((4, 4, 3), np.float32)
    meta = exr_frame_metadata(1001 + 1800, Fraction(30000, 1001), start_frame=1001,
                              start_timecode="01:00:00;00")
    path = write_exr(tmp_path / "df.exr", {"rgb": rgb}, metadata=meta)
    tc = exrheader(path)[0]["timeCode"]["lines"]
    assert "time 01:01:00:02" in tc and any(x.startswith("drop frame 1") for x in tc)
    assert bcd_timecode(oiio_specs(path)[0].getattribute("smpte:TimeCode")[0]) == "01:01:00;02"
    assert read_exr(path)[1]["timeCode"] == "01:01:00;02"
    # 50 fps: SMPTE stores frame pairs + the field-phase bit; we read back the frame itself
    path = write_exr(tmp_path / "hfr.exr", {"rgb": rgb},
                     metadata={"framesPerSecond": Fraction(50), "timeCode": "10:00:00:45"})
    assert read_exr(path)[1]["timeCode"] == "10:00:00:45"


def test_existing_file_needs_overwrite(tmp_path):
    a = np.zeros((4, 4, 3), np.float32)
    path = write_exr(tmp_path / "f.exr", {"rgb": a})
    before = path.read_bytes()
    with pytest.raises(OutputExistsError):
        write_exr(path, {"rgb": a + 1})
    assert path.read_bytes() == before
    write_exr(path, {"rgb": a + 1}, overwrite=True, fsync=True)
    assert read_exr(path)[0]["R"][0, 0] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.exr"]  # no temp files left
    sync_files([path])


def test_strided_and_float64_input_written_correctly(tmp_path):
    rng = np.random.default_rng(5)
    base = rng.uniform(0, 1, (W, H, 4))           # float64, transposed view below
    view = base.transpose(1, 0, 2)[:, :, ::-1]     # non-contiguous, reversed channels
    path = write_exr(tmp_path / "s.exr", {"rgba": view}, pixel_types={"": "float"})
    channels, _ = read_exr(path)
    np.testing.assert_array_equal(channels["R"], view[..., 0].astype(np.float32))
    np.testing.assert_array_equal(channels["A"], view[..., 3].astype(np.float32))


def test_sequence_numbering_round_trip(tmp_path):
    pattern = tmp_path / "render" / "shot010_neural.####.exr"
    for n in (1001, 1002, 1003):
        rgb = np.full((8, 8, 3), n - 1000, np.float32)
        write_exr(sequence_path(pattern, n), {"rgb": rgb},
                  metadata=exr_frame_metadata(n, Fraction(25), start_timecode="00:59:59:24"))
    names = sorted(p.name for p in (tmp_path / "render").iterdir())
    assert names == ["shot010_neural.1001.exr", "shot010_neural.1002.exr", "shot010_neural.1003.exr"]
    seq = ImageSequenceSource(pattern)
    assert seq.frame_numbers == range(1001, 1004)
    assert seq.read(1003)[0, 0, 0] == 3.0
    tcs = [exrheader(sequence_path(pattern, n))[0]["timeCode"]["lines"][0] for n in (1001, 1002, 1003)]
    assert tcs == ["time 00:59:59:24", "time 01:00:00:00", "time 01:00:00:01"]  # 25 fps: 0..24


def test_bad_arguments(tmp_path):
    a = np.zeros((4, 4, 3), np.float32)
    with pytest.raises(ValueError, match="compression"):
        write_exr(tmp_path / "x.exr", {"rgb": a}, compression="jpeg")
    with pytest.raises(ValueError, match="different sizes"):
        write_exr(tmp_path / "x.exr", {"rgb": a, "depth.Z": np.zeros((5, 4), np.float32)})
    with pytest.raises(ValueError, match="data_window"):
        write_exr(tmp_path / "x.exr", {"rgb": a}, data_window=(0, 0, 9, 9))
    with pytest.raises(ValueError, match="dataWindow"):
        write_exr(tmp_path / "x.exr", {"rgb": a}, metadata={"dataWindow": (0, 0, 3, 3)})
    assert not any(tmp_path.iterdir())


def test_corrupt_exr_is_media_error(tmp_path):
    bad = tmp_path / "bad.exr"
    bad.write_bytes(b"v/1\x01" + b"\x00" * 100)
    with pytest.raises(MediaError, match="bad.exr"):
        read_exr(bad)
    with pytest.raises(MediaError, match="not found"):
        read_exr(tmp_path / "none.exr")


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_exr_is_media_error(tmp_path, keep):
    """A frame cut short by a killed writer (or a full disk) is a one-line MediaError."""
    good = tmp_path / "good.exr"
    rng = np.random.default_rng(0)
    write_exr(good, {"rgba": rng.random((32, 48, 4)).astype(np.float32), "depth.Z": np.ones((32, 48), np.float32)})
    data = good.read_bytes()
    cut = tmp_path / "cut.exr"
    cut.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(MediaError, match="cut.exr"):
        read_exr(cut)
