"""Synthetic media whose frames carry their own frame index (for tests and benchmarks).

Each frame shows its index as a 4 x 4 grid of big black/white blocks (16 bits, most
significant first, row-major), drawn at video levels 16 and 235. Blocks are tens of pixels
wide, so the code survives lossy H.264 (chroma subsampling, deblocking) untouched and any
off-by-one in decoding or seeking shows up as a wrong number, not as a small pixel error.
"""
from __future__ import annotations

import itertools
import os
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import ffmpeg as ffmpeg_python
import numpy as np

from engine.errors import MediaError
from engine.io.ffmpeg import StderrTail, ffmpeg_cmd

__all__ = ["BITS", "barcode_frame", "read_barcode", "encode_video"]

BITS = 16
_GRID = 4
_DARK, _LIGHT = 16, 235


def barcode_frame(index: int, height: int, width: int) -> np.ndarray:
    """An RGB uint8 frame (height x width x 3) encoding ``index`` (0 <= index < 2**16)."""
    if not 0 <= index < 2**BITS:
        raise ValueError(f"barcode index {index} out of range")
    bits = [(index >> (BITS - 1 - k)) & 1 for k in range(BITS)]
    grid = np.array(bits, dtype=np.uint8).reshape(_GRID, _GRID)
    ys = (np.arange(height) * _GRID) // height
    xs = (np.arange(width) * _GRID) // width
    img = np.where(grid[ys][:, xs] == 1, _LIGHT, _DARK).astype(np.uint8)
    return np.repeat(img[:, :, None], 3, axis=2)


def read_barcode(frame: np.ndarray) -> int:
    """Decode the index from a (possibly lossy) barcode frame: mean of each block's centre."""
    gray = frame.astype(np.float32).mean(axis=2) if frame.ndim == 3 else frame.astype(np.float32)
    h, w = gray.shape
    value = 0
    for r in range(_GRID):
        for c in range(_GRID):
            y0, y1 = (r * h) // _GRID, ((r + 1) * h) // _GRID
            x0, x1 = (c * w) // _GRID, ((c + 1) * w) // _GRID
            my, mx = (y1 - y0) // 4, (x1 - x0) // 4
            cell = gray[y0 + my:y1 - my, x0 + mx:x1 - mx]
            value = (value << 1) | int(cell.mean() > (_DARK + _LIGHT) / 2)
    return value


def encode_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: Fraction, *,
                 codec: str = "libx264", crf: int = 20, gop: int = 12, bframes: int = 2,
                 preset: str = "veryfast", extra_output: dict | None = None) -> Path:
    """Encode RGB uint8 frames (all the same size) to ``path`` through an ffmpeg pipe.

    ``gop`` (key-frame interval) and ``bframes`` are explicit so tests can put seek targets
    in the middle of a GOP with frame reordering, where naive seeking goes wrong.
    """
    path = Path(path)
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise MediaError("encode_video: no frames")
    h, w = first.shape[:2]
    out_opts = {"vcodec": codec, "pix_fmt": "yuv420p", "g": gop, "bf": bframes,
                "color_primaries": "bt709", "color_trc": "bt709", "colorspace": "bt709"}
    if codec in ("libx264", "libx265"):
        out_opts.update(crf=crf, preset=preset)
    out_opts.update(extra_output or {})
    stream = (ffmpeg_python
              .input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}",
                     framerate=f"{fps.numerator}/{fps.denominator}")
              .filter("scale", out_color_matrix="bt709", out_range="tv")
              .filter("format", "yuv420p")
              .filter("setparams", color_primaries="bt709", color_trc="bt709",
                      colorspace="bt709", range="tv")
              .output(str(path), **out_opts)
              .overwrite_output())
    proc = subprocess.Popen(stream.compile(cmd=ffmpeg_cmd(loglevel="error")),
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    tail = StderrTail(proc.stderr)
    try:
        for f in itertools.chain([first], it):
            if f.shape != first.shape or f.dtype != np.uint8:
                raise MediaError("encode_video: frames must all be uint8 of the same shape")
            proc.stdin.write(np.ascontiguousarray(f).data)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    proc.wait()
    tail.join()
    if proc.returncode != 0:
        raise MediaError(f"ffmpeg failed writing {path}: {tail.last_error()}")
    return path
