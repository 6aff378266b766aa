"""OpenEXR frames: multi-layer, Nuke channel naming, windows, metadata, written atomically.

Channel naming follows Nuke's convention, which every compositing package reads: the main
layer's channels are ``R, G, B, A``; any other layer's are ``layer.channel``
(``neural.R``, ``matte.face``, ``depth.Z``, ``N.X``, ``ST.x``). Colour is stored as half
(float16: 10-bit mantissa, plenty for scene-linear colour, half the bytes); depth and
anything the caller marks as float is stored as float32 (half's 11-bit precision is not
enough for camera-space depth or positions); uint32 arrays (ids) stay uint.

Files are written on the OpenEXR 3.x Python API (``OpenEXR.File`` / ``OpenEXR.Part``),
to a temporary name next to the target and renamed into place: a reader, a compositor
watching the folder or a resumed render never sees a half-written frame. An existing file
is only replaced when the caller says ``overwrite=True``.

Durability (fsync) is a separate, per-call choice: ``fsync=False`` by default for frames.
The rename already makes each frame all-or-nothing for every process on the machine; what
fsync adds is survival of a *power loss / kernel crash* before the page cache is flushed.
Paying one fsync per frame (a disk round trip, often 5-50 ms, as much as the encode on fast
disks) buys little for a re-renderable frame; instead the render stage calls
:func:`sync_files` once per chunk, before it records the chunk as done, so a crash can never
leave a frame that is recorded complete but empty on disk. ``bench/exr_write.py`` measures
both.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import OpenEXR

from engine.errors import MediaError
from engine.util.atomic import atomic_path

__all__ = ["Layer", "write_exr", "read_exr", "read_exr_header", "sync_files", "COMPRESSIONS",
           "channel_names", "exr_frame_metadata"]

COMPRESSIONS: dict[str, Any] = {
    "none": OpenEXR.NO_COMPRESSION,
    "rle": OpenEXR.RLE_COMPRESSION,
    "zips": OpenEXR.ZIPS_COMPRESSION,
    "zip": OpenEXR.ZIP_COMPRESSION,
    "piz": OpenEXR.PIZ_COMPRESSION,
    "pxr24": OpenEXR.PXR24_COMPRESSION,
    "b44": OpenEXR.B44_COMPRESSION,
    "b44a": OpenEXR.B44A_COMPRESSION,
    "dwaa": OpenEXR.DWAA_COMPRESSION,
    "dwab": OpenEXR.DWAB_COMPRESSION,
}
_COMPRESSION_NAMES = {v: k for k, v in COMPRESSIONS.items()}
_PIXEL_DTYPES = {"half": np.float16, "float": np.float32, "uint": np.uint32}
_PIXEL_TYPE_NAMES = {OpenEXR.HALF: "half", OpenEXR.FLOAT: "float", OpenEXR.UINT: "uint"}
# Layers whose every channel defaults to float32: precision matters more than size there.
_FLOAT_LAYERS = {"depth", "Z", "P", "position", "Pworld", "Pref"}
# Header keys that write_exr's own arguments control.
_RESERVED = {"channels", "dataWindow", "displayWindow", "compression", "type", "name",
             "tiles", "chunkCount", "version"}

Box = tuple[int, int, int, int]   # (xmin, ymin, xmax, ymax), inclusive, as in the EXR spec


def channel_names(layer: str, n: int) -> tuple[str, ...]:
    """Default channel names of an n-channel layer (Nuke conventions)."""
    if layer in ("depth", "Z") and n == 1:
        return ("Z",)
    if layer in ("N", "P", "normals", "position", "Pworld", "Pref") and n == 3:
        return ("X", "Y", "Z")
    if layer in ("ST", "uv", "UV") and n == 2:
        return ("x", "y")
    defaults = {1: ("Y",), 2: ("x", "y"), 3: ("R", "G", "B"), 4: ("R", "G", "B", "A")}
    if n not in defaults:
        raise ValueError(f"layer {layer or '(main)'!r} has {n} channels: give channel names")
    return defaults[n]


@dataclass
class Layer:
    """One layer: ``data`` is H x W x C (or H x W), ``name`` "" for the main R,G,B,A layer."""

    name: str
    data: np.ndarray
    channels: Sequence[str] | None = None
    pixel_type: str | None = None     # "half" | "float" | "uint"; None: by name and dtype

    def channel_list(self) -> tuple[str, ...]:
        n = 1 if self.data.ndim == 2 else self.data.shape[2]
        names = tuple(self.channels) if self.channels is not None else channel_names(self.name, n)
        if len(names) != n:
            raise ValueError(f"layer {self.name!r}: {len(names)} channel names for {n} channels")
        return names

    def full_names(self) -> tuple[str, ...]:
        return tuple(f"{self.name}.{c}" if self.name else c for c in self.channel_list())


def _as_layers(layers_or_channels) -> list[Layer]:
    """Accepts a list of Layer, or a mapping of channel name -> H x W array (full Nuke names:
    ``"R"``, ``"neural.R"``) and/or layer name -> H x W x C array (``"neural"``, ``""`` or
    ``"rgba"`` for the main layer)."""
    if isinstance(layers_or_channels, Layer):
        return [layers_or_channels]
    if isinstance(layers_or_channels, Mapping):
        out: list[Layer] = []
        singles: dict[str, list[tuple[str, np.ndarray]]] = {}
        for key, arr in layers_or_channels.items():
            arr = np.asarray(arr)
            if arr.ndim == 3:
                out.append(Layer("" if key.lower() in ("", "rgba", "rgb") else key, arr))
            elif arr.ndim == 2:
                layer, _, chan = key.rpartition(".")
                singles.setdefault(layer, []).append((chan, arr))
            else:
                raise ValueError(f"channel {key!r}: expected an H x W or H x W x C array, got {arr.shape}")
        for layer, items in singles.items():
            for chan, arr in items:
                out.append(Layer(layer, arr, channels=(chan,)))
        return out
    layers = list(layers_or_channels)
    if not all(isinstance(x, Layer) for x in layers):
        raise TypeError("write_exr: pass a mapping of name -> array or a list of Layer")
    return layers


def _pixel_type(layer: Layer, full: str, arr: np.ndarray, pixel_types: Mapping[str, str]) -> str:
    for key in (full, layer.name):
        if key in pixel_types:
            return pixel_types[key]
    if layer.pixel_type:
        return layer.pixel_type
    if arr.dtype == np.uint32:
        return "uint"
    if layer.name in _FLOAT_LAYERS or (not layer.name and full == "Z"):
        return "float"
    return "half"


def _header_value(key: str, value: Any, fps: Fraction | None) -> Any:
    """Python values -> what the OpenEXR binding writes as the right attribute type."""
    if key == "timeCode":
        if isinstance(value, OpenEXR.TimeCode):
            return value
        return _exr_timecode(str(value), fps)
    if isinstance(value, Fraction):
        return value      # the binding writes a Fraction as a 'rational' attribute
    if key == "framesPerSecond":
        return Fraction(value)
    if isinstance(value, (str, int, float, bool, tuple, np.ndarray, OpenEXR.TimeCode,
                          OpenEXR.KeyCode)):
        return value
    if isinstance(value, Path):
        return str(value)
    raise ValueError(f"EXR header {key!r}: cannot store a {type(value).__name__}")


def _exr_timecode(text: str, fps: Fraction | None) -> OpenEXR.TimeCode:
    from engine.io.timecode import parse_timecode
    t = parse_timecode(text)
    tc = OpenEXR.TimeCode()
    tc.hours, tc.minutes, tc.seconds = t.hours, t.minutes, t.seconds
    tc.dropFrame = t.drop_frame
    high_rate = fps is not None and round(fps) > 30
    if not high_rate:
        if t.frames >= 30:
            raise ValueError(f"timeCode {text}: frames field >= 30 needs framesPerSecond > 30 "
                             "in the metadata")
        tc.frame = t.frames
    else:
        # SMPTE ST 12-1 above 30 fps: the frames field counts frame *pairs*; the
        # field-phase bit marks the second frame of a pair.
        tc.frame = t.frames // 2
        tc.fieldPhase = bool(t.frames % 2)
    return tc


def _timecode_string(tc: Any, fps: Fraction | None) -> str:
    if isinstance(tc, tuple):
        h, m, s, f, drop = tc[0], tc[1], tc[2], tc[3], bool(tc[4])
        phase = bool(tc[6]) if len(tc) > 6 else False
    else:
        h, m, s, f, drop, phase = tc.hours, tc.minutes, tc.seconds, tc.frame, tc.dropFrame, tc.fieldPhase
    if fps is not None and round(fps) > 30:
        f = f * 2 + int(phase)
    return f"{h:02d}:{m:02d}:{s:02d}{';' if drop else ':'}{f:02d}"


def _box(box: Box | None, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    if box is None:
        return None
    if len(box) != 4:
        raise ValueError(f"{name} must be (xmin, ymin, xmax, ymax), got {box}")
    x0, y0, x1, y1 = (int(v) for v in box)
    if x1 < x0 or y1 < y0:
        raise ValueError(f"{name} {box} is empty (max < min)")
    return (np.array([x0, y0], np.int32), np.array([x1, y1], np.int32))


def _channel_arrays(layer: Layer, pixel_types: Mapping[str, str]) -> list[tuple[str, np.ndarray]]:
    data = layer.data
    out = []
    for k, full in enumerate(layer.full_names()):
        plane = data if data.ndim == 2 else data[:, :, k]
        ptype = _pixel_type(layer, full, plane, pixel_types)
        if ptype not in _PIXEL_DTYPES:
            raise ValueError(f"channel {full!r}: pixel type must be half, float or uint, not {ptype!r}")
        # The binding reads the buffer as C-contiguous and ignores strides (a strided
        # view is written scrambled), so planes must be made contiguous; astype with
        # copy=False and ascontiguousarray are free when the data is already right.
        plane = np.ascontiguousarray(plane.astype(_PIXEL_DTYPES[ptype], copy=False))
        out.append((full, plane))
    return out


def _fast_packed(layer: Layer, pixel_types: Mapping[str, str]) -> tuple[str, np.ndarray] | None:
    """An H x W x 3/4 R,G,B(,A) layer whose dtype is already the stored type can be handed to
    the binding whole (key "RGBA" or "layer"), which splits it in C++: no Python copies."""
    data = layer.data
    if data.ndim != 3 or data.shape[2] not in (3, 4) or layer.channels not in (None, ("R", "G", "B"),
                                                                             ("R", "G", "B", "A")):
        return None
    names = layer.full_names()
    if layer.channel_list() != ("R", "G", "B", "A")[:data.shape[2]]:
        return None
    types = {_pixel_type(layer, n, data[:, :, 0], pixel_types) for n in names}
    if len(types) != 1:
        return None
    ptype = types.pop()
    if ptype not in _PIXEL_DTYPES or data.dtype != _PIXEL_DTYPES[ptype] or not data.flags.c_contiguous:
        return None
    key = layer.name if layer.name else ("RGBA" if data.shape[2] == 4 else "RGB")
    return key, data


def write_exr(path: str | os.PathLike, layers_or_channels, *, compression: str = "zip",
              display_window: Box | None = None, data_window: Box | None = None,
              metadata: Mapping[str, Any] | None = None, multipart: bool = False,
              pixel_types: Mapping[str, str] | None = None, overwrite: bool = False,
              fsync: bool = False) -> Path:
    """Write one EXR frame.

    ``layers_or_channels``: a mapping (``{"rgba": HxWx4, "neural": HxWx3, "matte.face": HxW,
    "depth.Z": HxW}``) or a list of :class:`Layer`. All arrays are the data window's size.
    ``data_window`` defaults to the display window; ``display_window`` defaults to the
    arrays' size at the origin. ``metadata`` values: str, int, float, Fraction (rational:
    use it for ``framesPerSecond``), ``timeCode`` as an SMPTE string. ``multipart=True``
    writes each layer as its own part (named after the layer, ``rgba`` for the main one),
    so a reader can load one layer without decompressing the others.
    """
    path = Path(path)
    layers = _as_layers(layers_or_channels)
    if not layers:
        raise ValueError("write_exr: no channels")
    pixel_types = dict(pixel_types or {})
    comp = COMPRESSIONS.get(compression.lower()) if isinstance(compression, str) else None
    if comp is None:
        raise ValueError(f"unknown EXR compression {compression!r} (one of {', '.join(COMPRESSIONS)})")
    shapes = {layer.data.shape[:2] for layer in layers}
    if len(shapes) != 1:
        raise ValueError(f"write_exr: layers have different sizes {sorted(shapes)}")
    h, w = shapes.pop()
    if data_window is None:
        data_window = display_window if display_window is not None else (0, 0, w - 1, h - 1)
    if display_window is None:
        display_window = data_window
    dw = _box(data_window, "data_window")
    if (dw[1][0] - dw[0][0] + 1, dw[1][1] - dw[0][1] + 1) != (w, h):
        raise ValueError(f"data_window {data_window} is {dw[1][0] - dw[0][0] + 1}x{dw[1][1] - dw[0][1] + 1} "
                         f"but the arrays are {w}x{h}")
    header: dict[str, Any] = {"compression": comp, "type": OpenEXR.scanlineimage,
                              "dataWindow": dw, "displayWindow": _box(display_window, "display_window")}
    metadata = metadata or {}
    fps = Fraction(metadata["framesPerSecond"]) if "framesPerSecond" in metadata else None
    for key, value in metadata.items():
        if key in _RESERVED:
            raise ValueError(f"EXR header {key!r} is set by write_exr's arguments, not metadata")
        header[key] = _header_value(key, value, fps)

    seen: set[str] = set()
    for layer in layers:
        for full in layer.full_names():
            if full in seen:
                raise ValueError(f"write_exr: channel {full!r} given twice")
            seen.add(full)

    if multipart:
        parts = []
        for layer in layers:
            chans = dict(_channel_arrays(layer, pixel_types))
            parts.append(OpenEXR.Part(dict(header), chans, layer.name or "rgba"))
        exr = OpenEXR.File(parts)
    else:
        channels: dict[str, np.ndarray] = {}
        for layer in layers:
            packed = _fast_packed(layer, pixel_types)
            if packed is not None:
                channels[packed[0]] = packed[1]
            else:
                channels.update(_channel_arrays(layer, pixel_types))
        exr = OpenEXR.File(header, channels)
    with atomic_path(path, overwrite=overwrite, fsync=fsync) as tmp:
        try:
            exr.write(str(tmp))
        except (RuntimeError, OSError) as exc:
            raise MediaError(f"cannot write {path}: {exc}") from exc
    return path


def sync_files(paths: Iterable[str | os.PathLike]) -> None:
    """Make written files durable: fsync each file, then each folder holding them (so the
    renames are durable too). Call once per render chunk before recording it as done."""
    folders = set()
    for p in paths:
        p = Path(p)
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        folders.add(p.parent)
    for d in folders:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------

def _normalise_header(raw: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fps = raw.get("framesPerSecond")
    fps = Fraction(fps) if fps is not None else None
    for key, value in raw.items():
        if key in ("dataWindow", "displayWindow"):
            lo, hi = value
            out[key] = ((int(lo[0]), int(lo[1])), (int(hi[0]), int(hi[1])))
        elif key == "compression":
            out[key] = _COMPRESSION_NAMES.get(value, str(value))
        elif key == "channels":
            continue
        elif key == "timeCode":
            out[key] = _timecode_string(value, fps)
        elif key == "framesPerSecond":
            out[key] = fps
        elif key == "type":
            out[key] = getattr(value, "name", str(value))
        else:
            out[key] = value
    return out


def read_exr_header(path: str | os.PathLike) -> dict[str, Any]:
    """Header of the first part (see :func:`read_exr`), without reading pixels."""
    return read_exr(path, header_only=True)[1]


def read_exr(path: str | os.PathLike, *, header_only: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """All channels of all parts (``{"R": HxW, "neural.R": HxW, ...}``, stored dtype) and the
    first part's header with Python values: windows as ((xmin, ymin), (xmax, ymax)),
    ``compression`` as its name, ``framesPerSecond`` a Fraction, ``timeCode`` an SMPTE
    string, ``pixel_types`` {channel: "half"|"float"|"uint"}, and ``parts`` (one header per
    part, each with its ``name`` and ``channels`` list) for multi-part files."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"EXR file not found: {path}")
    try:
        exr = OpenEXR.File(str(path), separate_channels=True, header_only=header_only)
    except (RuntimeError, OSError, ValueError, IndexError) as exc:
        # A truncated file surfaces from the binding as IndexError (its part list is short).
        raise MediaError(f"cannot read EXR {path}: {str(exc).splitlines()[0] if str(exc) else 'corrupt file'}") from exc
    try:
        return _exr_contents(exr, path, header_only)
    except (RuntimeError, IndexError, KeyError) as exc:
        raise MediaError(f"cannot read EXR {path}: {str(exc).splitlines()[0] if str(exc) else 'corrupt file'}") from exc


def _exr_contents(exr: Any, path: Path, header_only: bool) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    channels: dict[str, np.ndarray] = {}
    types: dict[str, str] = {}
    parts_info = []
    for part in exr.parts:
        part_channels = []
        for name, ch in part.channels.items():
            if not header_only:
                if name in channels:
                    raise MediaError(f"{path}: channel {name!r} appears in more than one part")
                channels[name] = ch.pixels
            types[name] = _PIXEL_TYPE_NAMES.get(ch.type(), str(ch.type()))
            part_channels.append(name)
        ph = _normalise_header(part.header)
        ph["name"] = part.name() if callable(part.name) else part.name
        ph["channels"] = sorted(part_channels)
        parts_info.append(ph)
    header = dict(parts_info[0])
    header.pop("channels", None)
    header["pixel_types"] = types
    header["parts"] = parts_info
    return channels, header


def exr_frame_metadata(frame_number: int, fps: Fraction, *, start_frame: int = 1001,
                       start_timecode: str | None = None, owner: str | None = None,
                       comments: str | None = None,
                       provenance: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The standard header of one output frame: framesPerSecond, timeCode (when the shot has
    a start timecode), owner, comments and ``portrait/<key>`` provenance strings."""
    from engine.io.timecode import timecode_for_frame
    meta: dict[str, Any] = {"framesPerSecond": Fraction(fps)}
    if start_timecode:
        meta["timeCode"] = timecode_for_frame(frame_number, fps, start_frame=start_frame,
                                              start_timecode=start_timecode)
    if owner:
        meta["owner"] = owner
    if comments:
        meta["comments"] = comments
    for key, value in (provenance or {}).items():
        meta[key if "/" in key else f"portrait/{key}"] = str(value)
    meta.setdefault("portrait/frameNumber", str(frame_number))
    return meta
