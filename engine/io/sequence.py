"""Image sequences: ``name.%04d.ext`` / ``name.####.ext`` patterns, frame numbers from names.

A sequence's frame numbers are the numbers in its file names (``plate.1001.exr`` is frame
1001): the plate's own numbering, which the engine uses everywhere. Gaps are an error that
names the missing frames, never a silent skip or a duplicated neighbour.

PNG / JPEG / TIFF frames are display-referred and come back as RGB uint8 (16-bit PNGs are
rounded to 8 bits). EXR frames are scene-linear and come back as float32 RGB, unclamped.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from engine.errors import MediaError

__all__ = ["SequencePattern", "ImageSequenceSource", "is_sequence_pattern", "sequence_path",
           "format_ranges"]

_PRINTF_RE = re.compile(r"%(0?)(\d*)d")
_HASH_RE = re.compile(r"#+")
_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".exr", ".tif", ".tiff"}


def is_sequence_pattern(path: str | os.PathLike) -> bool:
    name = Path(path).name
    return bool(_PRINTF_RE.search(name) or "#" in name)


class SequencePattern:
    """A frame-number pattern in the file *name* (not the folder): ``shot.%04d.exr``,
    ``shot.####.exr`` (4 digits), ``shot.%d.exr`` (unpadded). Numbers wider than the
    padding are allowed (frame 10000 of a ``####`` pattern is ``shot.10000.exr``)."""

    def __init__(self, pattern: str | os.PathLike) -> None:
        p = Path(pattern)
        name = p.name
        m = _PRINTF_RE.search(name)
        if m:
            self.padding = int(m.group(2) or 0) if m.group(1) or m.group(2) else 0
            prefix, suffix = name[:m.start()], name[m.end():]
        else:
            m = _HASH_RE.search(name)
            if not m:
                raise MediaError(f"not an image-sequence pattern (use name.%04d.ext or name.####.ext): {pattern}")
            self.padding = len(m.group(0))
            prefix, suffix = name[:m.start()], name[m.end():]
        if _PRINTF_RE.search(suffix) or "#" in suffix:
            raise MediaError(f"image-sequence pattern has more than one frame field: {pattern}")
        self.folder = p.parent
        self.prefix, self.suffix = prefix, suffix
        self.pattern = str(pattern)
        digits = r"\d+" if self.padding <= 1 else rf"\d{{{self.padding},}}"
        self._regex = re.compile(rf"^{re.escape(prefix)}(-?{digits}){re.escape(suffix)}$")

    def path(self, frame: int) -> Path:
        num = f"{abs(frame):0{self.padding}d}"
        return self.folder / f"{self.prefix}{'-' if frame < 0 else ''}{num}{self.suffix}"

    def scan(self) -> dict[int, Path]:
        """Frame number -> file, for every file in the folder that matches."""
        if not self.folder.is_dir():
            raise MediaError(f"image-sequence folder not found: {self.folder}")
        found: dict[int, Path] = {}
        for entry in os.scandir(self.folder):
            m = self._regex.match(entry.name)
            if not m:
                continue
            digits = m.group(1).lstrip("-")
            # With padding N, "0999" and "999" are different spellings: only the padded one
            # belongs to this pattern (a 5-digit number is fine, it cannot be padded to 4).
            if self.padding > 1 and len(digits) > self.padding and digits.startswith("0"):
                continue
            n = int(m.group(1))
            if n in found:
                raise MediaError(f"frame {n} appears twice in {self.pattern}: "
                                 f"{found[n].name} and {entry.name}")
            found[n] = Path(entry.path)
        return found


def sequence_path(pattern: str | os.PathLike, frame: int) -> Path:
    """The file of ``frame`` in ``pattern``: ``sequence_path('out/sh.####.exr', 1001)`` -> out/sh.1001.exr."""
    return SequencePattern(pattern).path(frame)


def format_ranges(numbers: Sequence[int], limit: int = 12) -> str:
    """``[1003, 1004, 1005, 1009]`` -> ``"1003-1005, 1009"`` (long lists are shortened)."""
    nums = sorted(numbers)
    runs: list[str] = []
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        runs.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    if len(runs) > limit:
        return ", ".join(runs[:limit]) + f", ... ({len(nums)} frames)"
    return ", ".join(runs)


class ImageSequenceSource:
    """Frames of an image sequence by frame number (EXR -> float32 RGB, others -> uint8 RGB)."""

    def __init__(self, pattern: str | os.PathLike) -> None:
        self.pattern = SequencePattern(pattern)
        ext = self.pattern.suffix.lower()
        ext = ext[ext.rfind("."):] if "." in ext else ext
        if ext not in _IMAGE_EXTS:
            raise MediaError(f"unsupported image-sequence type {ext or '(none)'!r} in {pattern} "
                             f"(supported: {', '.join(sorted(_IMAGE_EXTS))})")
        self.ext = ext
        files = self.pattern.scan()
        if not files:
            raise MediaError(f"no files match the image sequence {pattern}")
        numbers = sorted(files)
        missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
        if missing:
            raise MediaError(f"image sequence {pattern} has gaps: frames {format_ranges(missing)} "
                             f"missing between {numbers[0]} and {numbers[-1]}")
        self._files = files
        self.first, self.last = numbers[0], numbers[-1]
        first = self._load(self.first)
        self.frame_shape = first.shape
        self.dtype = first.dtype

    def __repr__(self) -> str:
        return f"ImageSequenceSource({self.pattern.pattern!r}, frames {self.first}-{self.last})"

    def __len__(self) -> int:
        return self.last - self.first + 1

    @property
    def frame_numbers(self) -> range:
        return range(self.first, self.last + 1)

    def path(self, frame: int) -> Path:
        return self._files[frame]

    def read(self, frame: int) -> np.ndarray:
        if frame not in self._files:
            raise MediaError(f"frame {frame} is outside the image sequence {self.pattern.pattern} "
                             f"(frames {self.first}-{self.last})")
        img = self._load(frame)
        if img.shape != self.frame_shape:
            raise MediaError(f"{self._files[frame]} is {img.shape[1]}x{img.shape[0]}, the sequence is "
                             f"{self.frame_shape[1]}x{self.frame_shape[0]}")
        return img

    def iter(self, first: int, last: int) -> Iterator[tuple[int, np.ndarray]]:
        if first > last or first < self.first or last > self.last:
            raise MediaError(f"frames {first}-{last} are outside the image sequence "
                             f"{self.pattern.pattern} (frames {self.first}-{self.last})")
        for n in range(first, last + 1):
            yield n, self.read(n)

    # -----------------------------------------------------------------------------------

    def _load(self, frame: int) -> np.ndarray:
        path = self._files[frame]
        if self.ext == ".exr":
            return _load_exr_rgb(path)
        return _load_raster_rgb8(path)


def _load_raster_rgb8(path: Path) -> np.ndarray:
    import cv2
    # imdecode from bytes, not imread: imread returns None for any failure (missing,
    # unreadable, corrupt) with no reason, and mis-handles some non-ASCII paths.
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise MediaError(f"cannot read {path}: {exc.strerror}") from exc
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise MediaError(f"cannot decode image {path} (corrupt or not an image)")
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise MediaError(f"{path}: unsupported pixel type {img.dtype} (expected 8 or 16 bit)")
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _load_exr_rgb(path: Path) -> np.ndarray:
    from engine.io.exr import read_exr
    channels, header = read_exr(path)
    names = ("R", "G", "B")
    if all(n in channels for n in names):
        planes = [channels[n] for n in names]
    elif "Y" in channels:
        planes = [channels["Y"]] * 3
    else:
        raise MediaError(f"{path} has no R,G,B (or Y) channels: {', '.join(sorted(channels))}")
    dw, disp = header["dataWindow"], header["displayWindow"]
    rgb = np.stack([p.astype(np.float32, copy=False) for p in planes], axis=-1)
    if dw != disp:
        # Plates are full frames: place the data window inside the display window (zeros
        # outside), which is what compositing apps show.
        rgb = _to_display_window(rgb, dw, disp)
    return rgb


def _to_display_window(data: np.ndarray, dw, disp) -> np.ndarray:
    (dx0, dy0), (dx1, dy1) = dw
    (vx0, vy0), (vx1, vy1) = disp
    out = np.zeros((vy1 - vy0 + 1, vx1 - vx0 + 1, data.shape[2]), dtype=data.dtype)
    x0, y0 = max(dx0, vx0), max(dy0, vy0)
    x1, y1 = min(dx1, vx1), min(dy1, vy1)
    if x0 <= x1 and y0 <= y1:
        out[y0 - vy0:y1 - vy0 + 1, x0 - vx0:x1 - vx0 + 1] = \
            data[y0 - dy0:y1 - dy0 + 1, x0 - dx0:x1 - dx0 + 1]
    return out
