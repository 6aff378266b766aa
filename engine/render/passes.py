"""The delivery EXR of one frame: composite + AOV passes, in Nuke's channel conventions.

=============  ====================================  =======  ==================================
pass           channels                              type     content
=============  ====================================  =======  ==================================
``rgba``       ``R, G, B, A``                        half     the composited frame (A = 1)
``neural``     ``neural.R/G/B/A``                    half     the network's crop composite
                                                              pasted at plate resolution; A = 1
                                                              inside the crop's footprint, 0
                                                              outside (premultiplied: RGB = 0
                                                              where A = 0)
``matte``      ``matte.face``, ``matte.mouth``       half     the compositing matte (temporally
                                                              smoothed, segmentation-gated; the
                                                              lower face only for a mouth
                                                              drive), and the mouth interior
``depth``      ``depth.Z``                           float    camera-space Z of the face model
                                                              (model units; 0 off the face)
``normals``    ``N.X, N.Y, N.Z``                     half     camera-space unit normals
                                                              (OpenCV axes; renormalised after
                                                              resampling; 0 off the face)
``st``         ``ST.x, ST.y``                        float    the face model's texture UVs (as
                                                              stored in the model): an ST map
                                                              (0 off the face)
=============  ====================================  =======  ==================================

Rebuilding the composite from the passes: ``RGB = plate * (1 - matte.face) + neural.RGB *
matte.face`` (equal to ``R, G, B`` within half-float precision: tested).

Windows: the display window is always the plate. In the ``multilayer`` layout (one part,
the default: what every reader opens) the data window is the display window too: a part has
one data window and ``R, G, B, A`` covers the whole frame; the AOV layers are zero outside
the face and ZIP stores those runs of zeros in almost no bytes. In the ``multipart`` layout
each pass part gets its own data window: ``neural`` the bounding box of the crop's
footprint, ``matte``/``depth``/``N``/``ST`` the bounding box of the face region (so a
compositor's reader decodes a few hundred thousand pixels, not two million, for a depth or
ST lookup); the ``rgba`` part keeps the full frame. A frame without a face gets 1-pixel
windows at the origin (a data window cannot be empty).

Float for depth and ST: half has 11 significant bits, too few for depth differences at
camera distance and for an ST map addressing a 4K plate (1/4096 needs 12 bits).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import OpenEXR

from engine.errors import MediaError
from engine.io.exr import COMPRESSIONS, Layer, read_exr, write_exr
from engine.io.exr import _header_value  # one conversion of Python values to EXR attributes
from engine.render.composite import PlateBox
from engine.util.atomic import atomic_path

__all__ = ["PASS_CHANNELS", "FramePasses", "pass_channels", "write_frame", "frame_is_valid",
           "FINGERPRINT_KEY", "NO_FACE_KEY"]

PASS_CHANNELS: dict[str, tuple[tuple[str, str], ...]] = {
    "rgba": (("R", "half"), ("G", "half"), ("B", "half"), ("A", "half")),
    "neural": (("neural.R", "half"), ("neural.G", "half"), ("neural.B", "half"), ("neural.A", "half")),
    "matte": (("matte.face", "half"), ("matte.mouth", "half")),
    "depth": (("depth.Z", "float"),),
    "normals": (("N.X", "half"), ("N.Y", "half"), ("N.Z", "half")),
    "st": (("ST.x", "float"), ("ST.y", "float")),
}
PART_NAMES = {"rgba": "rgba", "neural": "neural", "matte": "matte", "depth": "depth", "normals": "N", "st": "ST"}
FINGERPRINT_KEY = "portrait/renderFingerprint"
NO_FACE_KEY = "portrait/noFace"


def pass_channels(passes: Sequence[str]) -> dict[str, str]:
    """Channel name -> pixel type of the listed passes."""
    out: dict[str, str] = {}
    for p in passes:
        if p not in PASS_CHANNELS:
            raise ValueError(f"unknown render pass {p!r}; passes: {', '.join(PASS_CHANNELS)}")
        out.update(dict(PASS_CHANNELS[p]))
    return out


@dataclass
class FramePasses:
    """Everything one output frame holds. ``rgb``: the composited frame (H, W, 3) scene-linear;
    ``neural_*`` are box-local arrays of the crop footprint ``box``; mattes and AOVs are
    local to ``face_box`` (where any of them is non-zero). Empty boxes: no face."""

    rgb: np.ndarray
    box: PlateBox
    neural_rgb: np.ndarray | None = None   # (h, w, 3) scene-linear, over box
    neural_alpha: np.ndarray | None = None  # (h, w), over box
    face_box: PlateBox | None = None       # None: same as box
    matte_face: np.ndarray | None = None   # (fh, fw), over face_box
    matte_mouth: np.ndarray | None = None  # (fh, fw)
    depth: np.ndarray | None = None        # (fh, fw)
    normal: np.ndarray | None = None       # (fh, fw, 3)
    st: np.ndarray | None = None           # (fh, fw, 2)

    def box_of(self, layer: str) -> PlateBox:
        if layer == "neural" or self.face_box is None:
            return self.box
        return self.face_box

    def layer_arrays(self) -> dict[str, np.ndarray | None]:
        na = self.neural_alpha
        neural = None
        if self.neural_rgb is not None and na is not None:
            neural = np.concatenate([self.neural_rgb * na[:, :, None], na[:, :, None]], 2)
        mattes = None
        if self.matte_face is not None:
            mouth = self.matte_mouth if self.matte_mouth is not None else np.zeros_like(self.matte_face)
            mattes = np.stack([self.matte_face, mouth], 2)
        return {"neural": neural, "matte": mattes, "depth": self.depth, "normals": self.normal, "st": self.st}


def _full(h: int, w: int, box: PlateBox, local: np.ndarray | None, channels: int, dtype) -> np.ndarray:
    out = np.zeros((h, w, channels), dtype)
    if local is not None and not box.empty:
        ys, xs = box.slices
        out[ys, xs] = np.asarray(local).reshape(box.size[1], box.size[0], channels)
    return out


def _rgba(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    rgba = np.empty((h, w, 4), np.float16)
    rgba[..., :3] = rgb
    rgba[..., 3] = 1.0
    return rgba


def write_frame(path: str | os.PathLike, frame: FramePasses, *, passes: Sequence[str],
                metadata: Mapping[str, Any], compression: str = "zip", layout: str = "multilayer",
                overwrite: bool = True) -> Path:
    """Write one delivery frame (atomically) with the listed passes."""
    h, w = frame.rgb.shape[:2]
    arrays = frame.layer_arrays()
    dtypes = {"half": np.float16, "float": np.float32}
    if layout == "multilayer":
        layers: list[Layer] = []
        for p in passes:
            chans = PASS_CHANNELS[p]
            if p == "rgba":
                layers.append(Layer("", _rgba(frame.rgb)))
                continue
            ptype = chans[0][1]
            data = _full(h, w, frame.box_of(p), arrays[p], len(chans), dtypes[ptype])
            layer, _, _ = chans[0][0].partition(".")
            layers.append(Layer(layer, data, channels=[c.partition(".")[2] for c, _ in chans], pixel_type=ptype))
        return write_exr(path, layers, compression=compression, display_window=(0, 0, w - 1, h - 1),
                         metadata=metadata, overwrite=overwrite)
    if layout != "multipart":
        raise ValueError(f"EXR layout must be 'multilayer' or 'multipart', got {layout!r}")
    return _write_multipart(Path(path), frame, arrays, passes, metadata, compression, overwrite)


def _write_multipart(path: Path, frame: FramePasses, arrays: Mapping[str, np.ndarray | None],
                     passes: Sequence[str], metadata: Mapping[str, Any], compression: str,
                     overwrite: bool) -> Path:
    h, w = frame.rgb.shape[:2]
    fps = metadata.get("framesPerSecond")
    base: dict[str, Any] = {"compression": COMPRESSIONS[compression], "type": OpenEXR.scanlineimage,
                            "displayWindow": (np.array([0, 0], np.int32), np.array([w - 1, h - 1], np.int32))}
    for key, value in metadata.items():
        base[key] = _header_value(key, value, fps)
    parts = []
    for p in passes:
        chans = PASS_CHANNELS[p]
        header = dict(base)
        if p == "rgba":
            rgba = _rgba(frame.rgb)
            channels = {c: np.ascontiguousarray(rgba[:, :, i]) for i, (c, _) in enumerate(chans)}
            header["dataWindow"] = (np.array([0, 0], np.int32), np.array([w - 1, h - 1], np.int32))
        else:
            own = frame.box_of(p)
            box = own if not own.empty else PlateBox(0, 0, 1, 1)
            local = arrays[p]
            bw, bh = box.size
            data = (np.zeros((bh, bw, len(chans)), np.float32) if local is None or own.empty
                    else np.asarray(local, np.float32).reshape(bh, bw, len(chans)))
            dt = np.float16 if chans[0][1] == "half" else np.float32
            channels = {c: np.ascontiguousarray(data[:, :, i].astype(dt)) for i, (c, _) in enumerate(chans)}
            header["dataWindow"] = (np.array([box.x0, box.y0], np.int32),
                                    np.array([box.x1 - 1, box.y1 - 1], np.int32))
        parts.append(OpenEXR.Part(header, channels, PART_NAMES[p]))
    exr = OpenEXR.File(parts)
    with atomic_path(path, overwrite=overwrite) as tmp:
        try:
            exr.write(str(tmp))
        except (RuntimeError, OSError) as exc:
            raise MediaError(f"cannot write {path}: {exc}") from exc
    return path


def frame_is_valid(path: str | os.PathLike, passes: Sequence[str], fingerprint: str) -> bool:
    """Whether an existing frame is complete and was made under ``fingerprint`` (the render
    stage's inputs + params): it decodes entirely, has exactly the passes' channels with
    their pixel types, and carries the fingerprint. Used to adopt frames a killed job wrote
    but did not record, instead of re-rendering them."""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        channels, header = read_exr(p)
    except (MediaError, IndexError, RuntimeError, ValueError, OSError):
        # engine.io.exr.read_exr raises IndexError (not MediaError) on a truncated file
        # whose parts list comes back empty: any failure to decode means "not valid".
        return False
    if header.get(FINGERPRINT_KEY) != fingerprint:
        return False
    want = pass_channels(passes)
    if header.get("pixel_types") != want or set(channels) != set(want):
        return False
    return all(np.all(np.isfinite(a)) for a in channels.values())
